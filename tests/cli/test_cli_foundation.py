"""CLI: train, evaluate and attack through typer's test runner; bad input gives one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from hardened.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "m.safetensors"
    result = runner.invoke(
        app, ["train", "--data", "digits", "--arch", "mlp", "--epochs", "2", "--out", str(path), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    return path


def test_train_writes_weights_sidecar_and_log(model_file):
    sidecar = json.loads(model_file.with_suffix(".json").read_text())
    assert sidecar["arch"] == "mlp" and sidecar["input_shape"] == [1, 8, 8]
    assert sidecar["training"]["history"][-1]["test_accuracy"] > 0.8
    assert model_file.with_suffix(".log.jsonl").read_text().count("\n") == 2


def test_evaluate_prints_and_saves_the_curve(model_file, tmp_path):
    result = runner.invoke(
        app,
        ["evaluate", "--model", str(model_file), "--data", "digits", "--eps", "0,0.1,0.3",
         "--n", "60", "--steps", "5", "--out", str(tmp_path / "ev")],
    )
    assert result.exit_code == 0, result.output
    sweep = json.loads((tmp_path / "ev" / "sweep.json").read_text())
    assert sweep["eps"] == [0.0, 0.1, 0.3] and len(sweep["robust_accuracy"]) == 3
    assert sweep["robust_accuracy"][2] <= sweep["robust_accuracy"][0]
    assert "0.3" in result.output and (tmp_path / "ev" / "sweep.png").exists()


def test_attack_writes_npz_json_and_grid(model_file, tmp_path):
    result = runner.invoke(
        app,
        ["attack", "--model", str(model_file), "--data", "digits", "--attack", "pgd", "--eps", "0.2",
         "--steps", "5", "--n", "20", "--out", str(tmp_path / "at")],
    )
    assert result.exit_code == 0, result.output
    arrays = np.load(tmp_path / "at" / "adversarial.npz")
    assert arrays["x_adv"].shape == (20, 1, 8, 8)
    assert float(np.abs(arrays["x_adv"] - arrays["x"]).max()) <= 0.2 + 1e-6
    summary = json.loads((tmp_path / "at" / "summary.json").read_text())
    assert summary["n"] == 20 and 0.0 <= summary["success_rate"] <= 1.0
    assert (tmp_path / "at" / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_attack_start_option_reaches_the_attack(model_file, tmp_path):
    result = runner.invoke(
        app,
        ["attack", "--model", str(model_file), "--data", "digits", "--norm", "l2", "--eps", "1.0",
         "--steps", "3", "--n", "10", "--start", "radial", "--out", str(tmp_path / "at")],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "at" / "summary.json").read_text())
    assert summary["params"]["random_start"] == "radial"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["evaluate", "--model", "missing.safetensors"], "does not exist"),
        (["evaluate", "--model", "{model}", "--data", "mnist-5k"], "expects images of shape"),
        (["evaluate", "--model", "{model}", "--data", "digits", "--eps", "-1"], "eps values"),
        (["evaluate", "--model", "{model}", "--data", "digits", "--eps", "a,b"], "comma-separated"),
        (["attack", "--model", "{model}", "--data", "digits", "--attack", "nope"], "unknown attack"),
        (["attack", "--model", "{model}", "--data", "digits", "--norm", "l9"], "unknown norm"),
        (["attack", "--model", "{model}", "--data", "digits", "--start", "gauss"], "unknown --start"),
        (["train", "--data", "no-such-data", "--out", "{tmp}/x.safetensors"], "unknown data"),
        (["train", "--data", "digits", "--arch", "vgg", "--out", "{tmp}/x.safetensors"], "unknown architecture"),
        (["evaluate", "--model", "{model}", "--data", "digits", "--device", "cuda:7"], "cuda"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(model_file, tmp_path, args, fragment):
    args = [a.format(model=model_file, tmp=tmp_path) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert fragment.lower() in lines[0].lower()
    assert "Traceback" not in result.output


def test_library_warnings_print_as_one_line(tmp_path):
    """A HardenedWarning (here: Linf eps 5 in a [0, 1] box) is one ``warning:`` line, no Python
    warning block, and the command still runs."""
    from typer.testing import CliRunner

    from hardened.cli.main import app

    runner = CliRunner()
    model = tmp_path / "m.safetensors"
    assert runner.invoke(app, ["train", "--data", "digits", "--arch", "mlp", "--epochs", "1",
                               "--out", str(model)]).exit_code == 0
    result = runner.invoke(app, ["attack", "--model", str(model), "--data", "digits", "--attack", "fgsm",
                                 "--eps", "5", "--n", "8", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("warning: linf eps 5"), result.output
    assert "warnings.warn" not in result.output
    assert "UserWarning" not in result.output and "BudgetWarning" not in result.output
