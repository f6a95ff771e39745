"""``hardened certify`` through typer's test runner: smoothing (resume, comparison) and IBP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

from hardened.cli.main import app
from hardened.models import mlp, save_model
from helpers import blob_data

runner = CliRunner()


def make_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    data = blob_data(n=60, size=8, classes=3)
    npz = tmp_path / "blobs.npz"
    np.savez(npz, x=data.x.numpy(), y=data.y.numpy())
    paths = []
    for seed in (0, 1):
        kwargs = {"input_shape": [1, 8, 8], "num_classes": 3, "hidden": [16]}
        torch.manual_seed(seed)
        model = mlp(input_shape=(1, 8, 8), num_classes=3, hidden=(16,))
        paths.append(save_model(model, tmp_path / f"m{seed}.safetensors", arch="mlp",
                                arch_kwargs=kwargs, input_shape=(1, 8, 8), classes=["0", "1", "2"]))
    return npz, paths[0], paths[1]


def test_certify_smoothing_resumes_and_compares(tmp_path: Path) -> None:
    npz, first, second = make_inputs(tmp_path)
    out = tmp_path / "out"
    args = ["certify", "--model", str(first), "--data", str(npz), "--sigma", "0.25", "--n", "200",
            "--n0", "10", "--alpha", "0.01", "--images", "4", "--batch-size", "100", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("samples.jsonl", "samples.settings.json", "summary.json", "summary.md", "curve.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_samples"] == 4 and summary["table"][0]["radius"] == 0.0
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "resumed after 4" in again.output
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4
    assert json.loads((out / "summary.json").read_text())["table"] == summary["table"]

    both = runner.invoke(app, [*args[:3], "--model", str(second), *args[3:-1], str(tmp_path / "cmp")])
    assert both.exit_code == 0, both.output
    table = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [row["name"] for row in table["models"]] == ["m0", "m1"]
    markdown = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| m0 | 4 |" in markdown and "| m1 | 4 |" in markdown
    assert (tmp_path / "cmp" / "comparison.png").is_file()
    assert (tmp_path / "cmp" / "m1" / "samples.jsonl").is_file()


def test_certify_ibp_and_errors(tmp_path: Path) -> None:
    npz, first, _ = make_inputs(tmp_path)
    out = tmp_path / "ibp"
    result = runner.invoke(app, ["certify", "--model", str(first), "--data", str(npz), "--method", "ibp",
                                 "--eps", "0,0.01", "--images", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "ibp.json").read_text())
    assert [r["eps"] for r in report["models"][0]["results"]] == [0.0, 0.01]
    bad = runner.invoke(app, ["certify", "--model", str(first), "--data", str(npz), "--sigma", "-1",
                              "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "sigma" in bad.output
    small = runner.invoke(app, ["certify", "--model", str(first), "--data", str(npz), "--n", "5",
                                "--out", str(tmp_path / "bad")])
    assert small.exit_code == 2 and "n >= 10" in small.output
