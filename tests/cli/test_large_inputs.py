"""A tiny 224×224 RGB model through every command, on a tiny folder of 224×224 images, with the
batch sizes left to memory: train, attack, evaluate, explain, certify (smoothing and IBP),
guard fit and evaluate, and ``audit --budget quick`` (its budget scaled, and the report says so)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hardened._util import memory
from hardened.cli.main import app
from hardened.data import load_splits
from hardened.models import build_model, save_model

runner = CliRunner()
SIDE = 224
PER_CLASS = 35  # 105 images: 84 to train on (a fifth held out), enough for the guard's held-out part


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three classes of 224×224 RGB PNGs: dark, middle and bright noise (three, as the cascade's
    DLR loss needs)."""
    root = tmp_path_factory.mktemp("large") / "images"
    rng = np.random.default_rng(0)
    for label, (low, high) in enumerate(((0, 70), (90, 160), (180, 255))):
        (root / f"c{label}").mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = rng.integers(low, high, size=(SIDE, SIDE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{label}" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def tiny_model(folder, tmp_path_factory):
    """An MLP with 4 hidden units on 3×224×224 inputs (0.6M parameters: the cost of a 224×224
    image without the cost of a large network), trained for a few full-batch steps so that the
    test images are classified correctly and every attack has work to do."""
    splits = load_splits(str(folder), seed=0)
    kwargs = {"input_shape": [3, SIDE, SIDE], "num_classes": 3, "hidden": [4], "mean": [0.5] * 3, "std": [0.3] * 3}
    torch.manual_seed(0)
    model = build_model("mlp", **kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(splits.train.x), splits.train.y).backward()
        optimizer.step()
    model.eval()
    path = tmp_path_factory.mktemp("large-model") / "tiny.safetensors"
    return save_model(model, path, arch="mlp", arch_kwargs=kwargs, input_shape=(3, SIDE, SIDE),
                      classes=list(splits.train.classes))


@pytest.fixture
def sized(monkeypatch):
    """Records each batch size ``fit_batch_size`` picks, so a test sees the memory sizing run."""
    picked: list[int] = []
    original = memory.fit_batch_size

    def spy(*args, **kwargs):
        picked.append(original(*args, **kwargs))
        return picked[-1]

    monkeypatch.setattr(memory, "fit_batch_size", spy)
    return picked


def _run(*args: str, device: bool = True) -> str:
    result = runner.invoke(app, [*args, *(("--device", "cpu") if device else ())])
    assert result.exit_code == 0, result.output
    return result.output


def test_train_one_epoch(folder, tmp_path):
    out = tmp_path / "trained.safetensors"
    _run("train", "--data", str(folder), "--arch", "lenet", "--epochs", "1", "--batch-size", "16",
         "--n-train", "16", "--eval-n", "8", "--out", str(out))
    assert json.loads(out.with_suffix(".json").read_text())["input_shape"] == [3, SIDE, SIDE]


def test_attack_and_evaluate(folder, tiny_model, tmp_path, sized):
    _run("attack", "--model", str(tiny_model), "--data", str(folder), "--attack", "pgd", "--eps", "0.03",
         "--steps", "3", "--n", "6", "--out", str(tmp_path / "attack"))
    summary = json.loads((tmp_path / "attack" / "summary.json").read_text())
    assert summary["clean_accuracy"] > 0.5 and 0.0 <= summary["robust_accuracy"] <= 1.0
    _run("evaluate", "--model", str(tiny_model), "--data", str(folder), "--attack", "pgd", "--eps", "0,0.03",
         "--steps", "3", "--n", "6", "--out", str(tmp_path / "evaluate"))
    assert (tmp_path / "evaluate" / "sweep.json").is_file()
    assert len(sized) == 2 and all(size >= 1 for size in sized)


def test_explain(folder, tiny_model, tmp_path, sized):
    _run("explain", "--model", str(tiny_model), "--data", str(folder), "--index", "0,1",
         "--out", str(tmp_path / "explain"))
    assert list((tmp_path / "explain").glob("*.png")) and sized


def test_certify_smoothing_and_ibp(folder, tiny_model, tmp_path, sized):
    _run("certify", "--model", str(tiny_model), "--data", str(folder), "--images", "1", "--n0", "10", "--n", "100",
         "--out", str(tmp_path / "smoothing"))
    _run("certify", "--model", str(tiny_model), "--data", str(folder), "--method", "ibp", "--eps", "0.001",
         "--out", str(tmp_path / "ibp"))
    assert (tmp_path / "ibp" / "ibp.json").is_file() and sized  # IBP's batches (smoothing sizes its own)


def test_guard_fit_and_evaluate(folder, tiny_model, tmp_path, sized):
    guard = tmp_path / "guard"
    _run("guard", "fit", "--model", str(tiny_model), "--data", str(folder), "--score", "energy", "--fpr", "0.1",
         "--out", str(guard))
    assert sized
    _run("guard", "evaluate", "--guard", str(guard), "--ood", "noise,inverted", "--n", "10",
         "--out", str(tmp_path / "guard-eval"), device=False)


@pytest.mark.slow
def test_audit_quick_runs_every_section_on_a_scaled_budget(folder, tiny_model, tmp_path, sized):
    out = tmp_path / "report"
    result = runner.invoke(app, ["audit", "--model", str(tiny_model), "--data", str(folder), "--budget", "quick",
                                 "--out", str(out), "--device", "cpu"])
    report = json.loads((out / "audit.json").read_text())
    statuses = {s["name"]: (s["status"], s.get("message")) for s in report["stages"]}
    assert result.exit_code == 0, (result.output, statuses)
    assert all(status == "ok" for status, _ in statuses.values()), statuses
    assert report["budget"].startswith("quick, scaled by 0.14 for 3×224×224 inputs")
    assert "scaled by 0.14" in (out / "index.html").read_text()
    assert len(sized) == 1  # sized once for the whole audit
