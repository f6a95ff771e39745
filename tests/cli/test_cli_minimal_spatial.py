"""CLI: the one-pixel, spatial and minimal-norm attacks run by name with their own budgets;
a budget option that does not apply is one line, exit 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hardened.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-minimal") / "m.safetensors"
    result = runner.invoke(
        app, ["train", "--data", "digits", "--arch", "mlp", "--epochs", "2", "--out", str(path), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize(
    ("attack", "options", "expected"),
    [
        ("onepixel", ["--pixels", "3"], {"max_pixels": 3}),
        ("spatial", ["--rotation", "30", "--translation", "3"], {"rotation": 30.0, "translation": 3.0}),
        ("spatial-pgd", ["--steps", "3"], {"steps": 3}),
        ("cw", ["--steps", "10"], {"norm": "l2", "steps": 10}),
        ("fmn", ["--norm", "linf", "--steps", "10"], {"norm": "linf"}),
        ("fmn", ["--eps", "0.5", "--steps", "10"], {"norm": "l2", "eps": 0.5}),
    ],
)
def test_the_new_attacks_run_from_the_cli(model_file, tmp_path, attack, options, expected):
    result = runner.invoke(
        app, ["attack", "--model", str(model_file), "--data", "digits", "--attack", attack, "--n", "6",
              "--out", str(tmp_path / "at"), *options],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "at" / "summary.json").read_text())
    assert summary["params"].items() >= expected.items()
    if attack in ("cw", "fmn") and "--eps" not in options:
        assert "eps" not in summary["params"] and "median minimal" in result.output


@pytest.mark.parametrize(
    ("attack", "options", "message"),
    [("onepixel", ["--eps", "0.1"], "--eps does not apply to the onepixel attack"),
     ("pgd", ["--pixels", "2"], "--pixels does not apply to the pgd attack"),
     ("cw", ["--rotation", "10"], "--rotation does not apply")],
)
def test_a_budget_option_that_does_not_apply_is_refused(model_file, tmp_path, attack, options, message):
    result = runner.invoke(
        app, ["attack", "--model", str(model_file), "--data", "digits", "--attack", attack, "--n", "4",
              "--out", str(tmp_path / "at"), *options],
    )
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
