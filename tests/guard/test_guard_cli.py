"""``hardened guard fit / evaluate / predict`` through typer's test runner."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from hardened.cli.main import app
from hardened.models import save_model


def test_fit_evaluate_predict(digits_model, digits, digits_arch, tmp_path):
    model_path = save_model(digits_model, tmp_path / "lenet.safetensors", arch="lenet",
                            arch_kwargs=digits_arch, input_shape=(1, 8, 8), classes=digits.train.classes)
    runner = CliRunner()
    guard_dir = tmp_path / "guard"
    fit = runner.invoke(app, ["guard", "fit", "--model", str(model_path), "--data", "digits",
                              "--score", "energy", "--fpr", "0.05", "--out", str(guard_dir)])
    assert fit.exit_code == 0, fit.output
    assert "median" in fit.output and "threshold" in fit.output
    assert (guard_dir / "guard.json").is_file()

    evaluation = tmp_path / "evaluation"
    result = runner.invoke(app, ["guard", "evaluate", "--guard", str(guard_dir), "--ood",
                                 "noise,inverted,natural", "--n", "100", "--out", str(evaluation)])
    assert result.exit_code == 0, result.output
    report = json.loads((evaluation / "evaluation.json").read_text())
    assert [r["name"] for r in report["ood"]] == ["noise", "inverted", "natural"]
    assert (evaluation / "scores.png").is_file()

    folder = tmp_path / "my-ood"  # a user's OOD folder: 20 images of mixed sizes, flat and nested
    (folder / "more").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(20):
        pixels = rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / ("more" if i % 2 else ".") / f"{i}.png")
    whole = runner.invoke(app, ["guard", "evaluate", "--guard", str(guard_dir), "--ood", str(folder),
                                "--n", "100", "--out", str(tmp_path / "folder-eval")])
    assert whole.exit_code == 0, whole.output
    assert json.loads((tmp_path / "folder-eval" / "evaluation.json").read_text())["ood"][0]["n"] == 20

    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=np.concatenate([digits.test.x[:2].numpy(), np.random.default_rng(0).random((2, 1, 8, 8))]).astype(np.float32))
    answers = tmp_path / "answers.json"
    predicted = runner.invoke(app, ["guard", "predict", str(inputs), "--guard", str(guard_dir), "--json", str(answers)])
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(answers.read_text())["answers"]
    assert len(rows) == 4 and "refused" in predicted.output


def test_fit_too_few_samples_is_a_clean_error(digits_model, digits, digits_arch, tmp_path):
    model_path = save_model(digits_model, tmp_path / "lenet.safetensors", arch="lenet",
                            arch_kwargs=digits_arch, input_shape=(1, 8, 8), classes=digits.train.classes)
    result = CliRunner().invoke(app, ["guard", "fit", "--model", str(model_path), "--data", "digits",
                                      "--score", "softmax", "--fpr", "0.01", "--calibration-n", "50",
                                      "--out", str(tmp_path / "g")])
    assert result.exit_code == 2
    assert "need at least 100" in result.output
