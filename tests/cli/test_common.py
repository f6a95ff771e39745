"""The CLI options layer: shared options defined once, one set-up, writable-output checks."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from hardened._util.atomic import check_writable
from hardened.cli._common import SEED_MAX, SPECS, Common, Option, setup, shared_options
from hardened.cli.main import app
from hardened.errors import ConfigError


def _commands():
    from typer.main import get_command

    root = get_command(app)
    for name, command in root.commands.items():
        subcommands = getattr(command, "commands", None)
        if subcommands:
            yield from ((f"{name} {sub}", c) for sub, c in subcommands.items())
        else:
            yield name, command


@pytest.mark.parametrize("name, command", list(_commands()), ids=lambda v: v if isinstance(v, str) else "")
def test_shared_flags_are_declared_once_with_the_same_limits_everywhere(name, command):
    flags = [opt for p in command.params for opt in p.opts]
    assert len(flags) == len(set(flags)), name
    by_name = {p.name: p for p in command.params}
    for key, spec in SPECS.items():
        param = by_name.get(key)
        if param is None:
            continue
        assert param.opts == [spec.flag] and param.help, (name, key)
        assert (param.min, param.max) == (spec.limits.get("min"), spec.limits.get("max")), (name, key)
    # every command that draws randomness; the predict commands (local guard, remote service) draw none
    assert "seed" in by_name or name in ("guard predict", "predict"), name


def test_shared_options_pass_one_common_value():
    seen: list[tuple[Common, int]] = []

    @shared_options("data", "seed", "out", out=Path("here"), seed=Option(7, "the seed"))
    def command(common: Common, k: int = 1) -> None:
        seen.append((common, k))

    signature = inspect.signature(command)
    assert list(signature.parameters) == ["k", "data", "seed", "out"]
    assert signature.parameters["seed"].default == 7
    command(k=3, data="digits", seed=5, out=Path("x"))
    common, k = seen[0]
    assert (common.data, common.seed, common.out, k) == ("digits", 5, Path("x"), 3)
    assert common.model is None and common.device == "auto"


def test_shared_options_refuse_unknown_names():
    with pytest.raises(ValueError):
        shared_options("data", "nope")
    with pytest.raises(ValueError):
        shared_options("data", seed=3)


def test_setup_loads_checks_and_seeds(tmp_path):
    from hardened.data import load_splits
    from hardened.models import arch_kwargs_for, build_model, save_model

    train = load_splits("digits").train
    kwargs = arch_kwargs_for(train)
    model = save_model(build_model("mlp", **kwargs), tmp_path / "m.safetensors", arch="mlp",
                       arch_kwargs=kwargs, input_shape=train.input_shape, classes=train.classes)
    session = setup(Common(model=str(model), models=(str(model),), data="digits", device="cpu", seed=11),
                    writes=[(tmp_path / "out", True)])
    assert len(session.models) == 2 and session.device == torch.device("cpu")
    assert session.splits.test.input_shape == (1, 8, 8)
    assert not (tmp_path / "out").exists()


def test_setup_seeds_the_global_generators():
    setup(Common(data="digits", device="cpu", seed=11), load=False)
    first = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(first, torch.rand(3))


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 2**70])
def test_seed_range(seed):
    with pytest.raises(ConfigError, match="--seed"):
        setup(Common(data="digits", seed=seed, device="cpu"), load=False)


def test_check_writable_creates_nothing(tmp_path):
    before = set(tmp_path.rglob("*"))
    assert check_writable(tmp_path / "a" / "b" / "c", folder=True) == tmp_path / "a" / "b" / "c"
    assert check_writable(tmp_path / "a" / "m.safetensors", folder=False)
    assert set(tmp_path.rglob("*")) == before


def test_check_writable_refusals(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file, so nothing"):
        check_writable(afile / "sub" / "m.safetensors", folder=False)
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_writable(afile, folder=True)
    with pytest.raises(ConfigError, match="is a folder"):
        check_writable(tmp_path, folder=False)
    with pytest.raises(ConfigError, match="cannot write"):
        check_writable(Path("/proc/hardened-probe/x"), folder=True)
