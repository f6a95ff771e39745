"""CLI: ``hardened attack --target-url`` attacks a real local endpoint (the serve API) with the
black-box attacks, keeps the hard query budget, writes partial results, and refuses bad mixes."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from hardened.cli.main import app
from hardened.data import load_splits
from hardened.train import TrainConfig, train
from http_toys import serve_model, server

runner = CliRunner()


@pytest.fixture(scope="module")
def digits_model():
    splits = load_splits("digits")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    train(model, splits.train, config=TrainConfig(epochs=5, batch_size=32, lr=3e-3, seed=0), progress=False)
    return model.eval()


@pytest.mark.parametrize("attack, norm, eps", [("square", "linf", 0.2), ("nes", "linf", 0.2), ("hsja", "l2", 1.5)])
def test_black_box_attacks_run_against_an_endpoint(digits_model, tmp_path, attack, norm, eps):
    with server(serve_model(digits_model)) as httpd:
        result = runner.invoke(app, [
            "attack", "--target-url", f"{httpd.url}/v1/predict", "--data", "digits", "--attack", attack,
            "--norm", norm, "--eps", str(eps), "--n", "6", "--queries", "100", "--out", str(tmp_path / "bb")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "bb" / "summary.json").read_text())
    assert summary["attack"] == attack and summary["model"].startswith("http://127.0.0.1")
    assert summary["queries"] <= 6 * 100 and (tmp_path / "bb" / "grid.png").is_file()
    assert "images sent to" in result.output


def test_a_spent_budget_writes_the_finished_batches_and_exits_2(digits_model, tmp_path):
    with server(serve_model(digits_model)) as httpd:
        result = runner.invoke(app, [
            "attack", "--target-url", httpd.url, "--data", "digits", "--attack", "square", "--eps", "0.01",
            "--n", "6", "--batch-size", "2", "--queries", "20", "--query-budget", "50", "--out", str(tmp_path / "p")])
        assert httpd.requests <= 50
    assert result.exit_code == 2 and "query budget of 50" in result.output
    assert "Traceback" not in result.output
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["partial"] is True and summary["n"] == 2


@pytest.mark.parametrize(
    "args, message",
    [([], "exactly one"), (["--target-url", "http://127.0.0.1:9", "--attack", "pgd"], "needs gradients"),
     (["--target-url", "http://127.0.0.1:9", "--model", "m.safetensors"], "exactly one")],
)
def test_bad_mixes_are_one_line_errors(tmp_path, args, message):
    result = runner.invoke(app, ["attack", "--data", "digits", "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
