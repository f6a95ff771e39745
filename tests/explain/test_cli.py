"""``hardened explain`` and ``hardened benchmark-attacks`` through typer's test runner."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from hardened._util.lock import LOCK_NAME
from hardened.cli.main import app
from hardened.models import build_model, save_model

runner = CliRunner()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small untrained mlp for the 8×8 digits (the commands only need a working model)."""
    path = tmp_path_factory.mktemp("explain-cli") / "m.safetensors"
    torch.manual_seed(0)
    kwargs = {"input_shape": [1, 8, 8], "num_classes": 10, "hidden": [16]}
    model = build_model("mlp", **kwargs)
    save_model(model, path, arch="mlp", arch_kwargs=kwargs, input_shape=(1, 8, 8),
               classes=tuple(str(k) for k in range(10)))
    return path


def test_explain_writes_heatmaps_grid_json(model_file, tmp_path) -> None:
    out = tmp_path / "ex"
    result = runner.invoke(
        app,
        ["explain", "--model", str(model_file), "--data", "digits", "--index", "3", "--method", "lrp",
         "--compare", "gradient", "--quality", "3", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)  # the (released) output-folder lock stays
    assert names == ["deletion.png", "explain.json", "grid.png", "heatmap_3.png", "relevance.npz"]
    summary = json.loads((out / "explain.json").read_text())
    assert set(summary["methods"]) == {"lrp", "gradient"}
    assert len(summary["pixel_flipping"]) == 7


def test_explain_bad_index_is_one_line(model_file, tmp_path) -> None:
    result = runner.invoke(app, ["explain", "--model", str(model_file), "--data", "digits", "--index", "99999",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "out of range" in result.output and "Traceback" not in result.output


def test_benchmark_attacks_outputs(model_file, tmp_path) -> None:
    out = tmp_path / "bench"
    result = runner.invoke(
        app,
        ["benchmark-attacks", "--model", str(model_file), "--data", "digits", "--n", "12", "--steps", "4",
         "--step-size", "0.1", "--max-pixels", "8", "--pixels-per-step", "4",
         "--attacks", "I-FGSM,LRP-grad,random-flip,LRP-mean", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["asr_l0.png", "asr_l2.png", "asr_linf.png", "comparison.json", "lrp_grad.gif"]
    data = json.loads((out / "comparison.json").read_text())
    assert [s["label"] for s in data["summary"]] == ["I-FGSM", "LRP-grad", "random-flip", "LRP-mean"]
    assert set(data["asr_at_budget"]["I-FGSM"]) == {"l0", "l2", "linf"}
    bad = runner.invoke(app, ["benchmark-attacks", "--model", str(model_file), "--data", "digits",
                              "--attacks", "nope", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown attack label" in bad.output
