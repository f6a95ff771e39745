"""CLI: the APGD family and Square run by name with their own default losses."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hardened.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-apgd") / "m.safetensors"
    result = runner.invoke(
        app, ["train", "--data", "digits", "--arch", "mlp", "--epochs", "2", "--out", str(path), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize(
    "attack, options, loss",
    [("apgd-ce", ["--steps", "5"], "ce"), ("apgd-dlr", ["--steps", "5"], "dlr"), ("apgd-t", ["--steps", "3"], "dlr"),
     ("square", [], "margin"), ("apgd", ["--steps", "5", "--loss", "dlr"], "dlr")],
)
def test_new_attacks_run_from_the_cli_with_their_own_loss(model_file, tmp_path, attack, options, loss):
    result = runner.invoke(
        app,
        ["attack", "--model", str(model_file), "--data", "digits", "--attack", attack, "--eps", "0.2",
         "--n", "10", "--out", str(tmp_path / "at"), *options],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "at" / "summary.json").read_text())
    assert summary["attack"] == ("apgd-ce" if attack == "apgd" else attack)
    assert summary["params"]["loss"] == loss and summary["params"]["seed"] == 0
