"""``hardened evaluate``: the cascade by default, a single attack by name, masking reported."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from hardened.attacks import ATTACKS
from hardened.cli.main import app
from hardened.models import load_model
from masking_toys import Quantise

runner = CliRunner()
NEEDS_APGD = pytest.mark.skipif(
    not {"apgd-ce", "apgd-t"} <= set(ATTACKS.names()), reason="APGD not registered yet"
)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cascade-cli") / "m.safetensors"
    result = runner.invoke(
        app, ["train", "--data", "digits", "--arch", "mlp", "--epochs", "2", "--out", str(path), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def quantised_file(model_file):
    """The digits MLP behind round(4x)/4, saved as traced TorchScript (as a user would ship it)."""
    net = load_model(model_file).model.eval()
    path = model_file.with_name("quantised.pt")
    torch.jit.save(torch.jit.trace(nn.Sequential(Quantise(), net), torch.rand(2, 1, 8, 8)), str(path))
    return path


def _evaluate(*args: str):
    return runner.invoke(app, ["evaluate", "--data", "digits", "--n", "40", "--device", "cpu", *args])


@NEEDS_APGD
def test_the_cascade_is_the_default_and_reports_contributions(model_file, tmp_path):
    result = _evaluate("--model", str(model_file), "--preset", "quick", "--eps", "0,0.1", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "Points broken by each attack" in result.output and "Gradient-masking checks" in result.output
    cascade = json.loads((tmp_path / "cascade.json").read_text())
    [at_01] = cascade["cascades"]
    assert [c["attack"] for c in at_01["contributions"]] == ["apgd-ce", "apgd-ce", "apgd-t"]
    assert cascade["sweep"]["attack"] == "cascade:quick" and cascade["sweep"]["eps"] == [0.0, 0.1]
    assert at_01["robust_accuracy"] == cascade["sweep"]["robust_accuracy"][1]
    rerun = _evaluate("--model", str(model_file), "--preset", "quick", "--eps", "0,0.1", "--out", str(tmp_path))
    assert rerun.exit_code == 0 and json.loads((tmp_path / "cascade.json").read_text())["cascades"][0]["resumed"] > 0
    clash = _evaluate("--model", str(model_file), "--preset", "quick", "--steps", "3", "--eps", "0.1", "--out", str(tmp_path))
    assert clash.exit_code == 2 and "other settings" in clash.output and "Traceback" not in clash.output


@NEEDS_APGD
def test_the_quantised_torchscript_model_is_broken_and_the_check_named(model_file, quantised_file, tmp_path):
    plain = _evaluate("--model", str(model_file), "--preset", "quick", "--eps", "0.3", "--out", str(tmp_path / "p"))
    masked = _evaluate("--model", str(quantised_file), "--preset", "quick", "--eps", "0.3", "--out", str(tmp_path / "q"))
    assert plain.exit_code == 0 and masked.exit_code == 0, masked.output
    [p] = json.loads((tmp_path / "p" / "cascade.json").read_text())["cascades"]
    [q] = json.loads((tmp_path / "q" / "cascade.json").read_text())["cascades"]
    assert "zero-gradients" in [f["name"] for f in q["findings"] if f["fired"]]
    assert any("BPDA" in c for c in q["countermeasures"]) and "BPDA" in masked.output
    assert q["robust_accuracy"] <= p["robust_accuracy"] + 0.1


def test_a_single_attack_stays_available_by_name(model_file, tmp_path):
    result = _evaluate("--model", str(model_file), "--attack", "pgd", "--steps", "3", "--eps", "0,0.1", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "sweep.json").read_text())["attack"] == "pgd"
    assert not (tmp_path / "cascade.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--preset", "fast"], "unknown cascade preset"), (["--masking", "maybe"], "masking mode"),
     (["--attack", "nope"], "nope")],
)
def test_bad_cascade_options_are_one_line_errors(model_file, tmp_path, args, message):
    result = _evaluate("--model", str(model_file), "--eps", "0.1", "--out", str(tmp_path), *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
