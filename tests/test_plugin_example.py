"""The README's "Extending hardened" example: examples/plugin registers a toy attack and a toy
guard score through entry points; made discoverable here without pip (a ``*.dist-info`` with
its ``entry_points.txt`` on ``sys.path``), they appear in the registries, run from the CLI and
pass the same contract checks as the built-in components."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from contract_checks import check_attack, check_score, tiny_batch
from hardened.attacks import ATTACKS
from hardened.cli.main import app
from hardened.guard import SCORES, make_score
from hardened.models import build_model, save_model
from helpers import tiny_cnn

tomllib = pytest.importorskip("tomllib")

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin"


@pytest.fixture
def toy_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install the example as pip would, minus pip: metadata from its pyproject, code on the path."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    info = tmp_path / "site" / f"hardened_toy-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = []
    for group, points in project["entry-points"].items():
        lines += [f"[{group}]", *(f"{name} = {value}" for name, value in points.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(PLUGIN / "src"))
    for registry in (ATTACKS, SCORES):  # the registrations are undone after the test
        for attribute in ("_classes", "_aliases", "_broken", "_seen"):
            monkeypatch.setattr(registry, attribute, type(getattr(registry, attribute))(getattr(registry, attribute)))
        registry.load_plugins()
    yield project
    for module in [m for m in sys.modules if m == "hardened_toy" or m.startswith("hardened_toy.")]:
        del sys.modules[module]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    arch = {"input_shape": [1, 8, 8], "num_classes": 10, "hidden": [16]}
    torch.manual_seed(0)  # the test fixes the untrained model's weights
    model = build_model("mlp", **arch)
    return save_model(model, tmp_path / "mlp.safetensors", arch="mlp", arch_kwargs=arch,
                      input_shape=(1, 8, 8), classes=tuple(str(k) for k in range(10)))


def test_the_plugin_appears_in_the_registries(toy_plugin) -> None:
    assert "toy-search" in ATTACKS.names() and "toy-brightness" in SCORES.names()
    assert "toy-search" in ATTACKS.select(scores_only=True, norms="l2")
    assert "toy-search" not in ATTACKS.select(needs_gradients=True)
    assert "toy-brightness" in SCORES.select(needs_model=False, differentiable=True)
    assert make_score("TOY_BRIGHTNESS").name == "toy-brightness"


def test_the_plugin_is_not_there_without_its_metadata() -> None:
    assert "toy-search" not in ATTACKS and "toy-brightness" not in SCORES


def test_the_plugin_passes_the_contract_checks(toy_plugin) -> None:
    x, y = tiny_batch()
    for norm in ATTACKS.get("toy-search").norms:
        check_attack("toy-search", norm, tiny_cnn(), x, y)
    model = tiny_cnn()
    check_score(lambda: make_score("toy-brightness", model), model)


def test_hardened_attack_runs_the_plugin_attack(toy_plugin, model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "attack"
    result = CliRunner().invoke(app, [
        "attack", "--model", str(model_file), "--data", "digits", "--attack", "toy-search",
        "--eps", "0.3", "--n", "12", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["attack"] == "toy-search" and summary["n"] == 12
    assert summary["params"]["seed"] == 0 and summary["gradient_count"] == 0


def test_hardened_guard_fit_uses_the_plugin_score(toy_plugin, model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "guard"
    result = CliRunner().invoke(app, [
        "guard", "fit", "--model", str(model_file), "--data", "digits", "--score", "toy-brightness",
        "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "toy-brightness" in json.dumps(json.loads((out / "guard.json").read_text()))
