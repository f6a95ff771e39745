"""The CLI's one options layer: the shared options, defined once, and the one set-up function.

A command names the shared options it takes with ``@shared_options("model", "data", ...)``;
they reach it as one ``Common`` value (the first parameter, ``common``), and
``setup(common, writes=...)`` does what every command used to repeat: check the seed, pick the
device, check that every output location is writable, load the data and load and check the
models, in that order, so that a bad input fails in a second rather than after the work.
"""

from __future__ import annotations

import functools
import inspect
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import numpy as np
import torch
import typer
from rich.console import Console

from hardened._util.atomic import check_writable
from hardened._util.checks import check_model_output
from hardened._util.validate import SEED_MAX, check_seed
from hardened.data import Dataset, Splits, load_splits
from hardened.errors import ConfigError, InputError
from hardened.models import LoadedModel, load_model

__all__ = [
    "SIZED_BATCH", "Common", "Option", "Session", "shared_options", "setup", "console", "out", "resolve_device",
    "seed_everything", "check_fit", "load_checked_model", "parse_floats", "parse_ints",
    "parse_key_values", "SEED_MAX",
]

console = Console(stderr=True)
out = Console()

_NO_DEFAULT = inspect.Parameter.empty


@dataclass(frozen=True)
class _Spec:
    """One shared option: its Python type, flag, help text, default and typer limits."""

    type: Any
    flag: str
    help: str
    default: Any = _NO_DEFAULT
    limits: dict[str, Any] = field(default_factory=dict)


_DATA_HELP = "mnist-5k, digits, mnist, fashion-mnist, cifar10, cifar100, svhn, a folder or .npz"
SPECS: dict[str, _Spec] = {
    "model": _Spec(str, "--model", "model.safetensors, TorchScript, .onnx, .pt2, or pkg.module:factory"),
    "models": _Spec(list[str], "--model", "model file or pkg.module:factory; repeat to compare several models"),
    "weights": _Spec(Path | None, "--weights", "weights for a pkg.module:factory model", None),
    "backend": _Spec(str, "--backend", "torch, or onnxruntime: an .onnx model run outputs-only "
                     "(score-based attacks)", "torch"),
    "trust_pickle": _Spec(bool, "--trust-pickle", "load a torch.export .pt2 file, which unpickles "
                          "(can run code): only for files you trust", False),
    "data": _Spec(str, "--data", _DATA_HELP, "mnist-5k"),
    "data_dir": _Spec(Path | None, "--data-dir",
                      "folder with IDX files (default $HARDENED_DATA_DIR or the user cache)", None),
    "download": _Spec(bool, "--download", "download missing MNIST/Fashion-MNIST/CIFAR/SVHN files (sha256-checked)", False),
    "device": _Spec(str, "--device", "auto, cpu, cuda or cuda:N", "auto"),
    "seed": _Spec(int, "--seed", "seed for every random choice", 0, {"min": 0, "max": SEED_MAX}),
    "batch_size": _Spec(int, "--batch-size", "images per batch", 128, {"min": 1}),
    "out": _Spec(Path, "--out", "output folder"),
}


@dataclass(frozen=True)
class Option:
    """A command's own default and help text for a shared option (``optional``: may be None)."""

    default: Any = _NO_DEFAULT
    help: str | None = None
    optional: bool = False


#: ``--batch-size`` for commands whose batches are sized from memory unless it is given
SIZED_BATCH = Option(None, "images per batch (default: sized to the memory available)", optional=True)


@dataclass(frozen=True)
class Common:
    """The shared options of one invocation, as parsed (options a command does not take stay at
    these defaults; ``model`` is ``None`` only where a command makes it optional)."""

    model: str | None = None
    models: tuple[str, ...] = ()
    weights: Path | None = None
    backend: str = "torch"
    trust_pickle: bool = False
    data: str = "mnist-5k"
    data_dir: Path | None = None
    download: bool = False
    device: str = "auto"
    seed: int = 0
    batch_size: int | None = 128
    out: Path = Path(".")


def _parameter(name: str, override: Option | Any) -> inspect.Parameter:
    spec = SPECS[name]
    option = override if isinstance(override, Option) else Option(default=override)
    default = spec.default if option.default is _NO_DEFAULT else option.default
    kind = spec.type | None if option.optional else spec.type
    info = typer.Option(spec.flag, help=option.help or spec.help, **spec.limits)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[kind, info])


def shared_options(*names: str, **overrides: Option | Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the shared options ``names`` to a typer command ``f(common: Common, ...)``.

    ``overrides`` give a command its own default (``out=Path("x")``) or an ``Option`` with a
    default, help text or ``optional=True``. The command's own parameters come first in --help.
    """
    unknown = [n for n in (*names, *overrides) if n not in SPECS]
    if unknown or any(n not in names for n in overrides):
        raise ValueError(f"unknown or unlisted shared options {unknown or list(overrides)}")

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        hints = get_type_hints(command, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(command).parameters.values() if p.name != "common"]
        parameters = own + [_parameter(n, overrides.get(n, Option())) for n in names]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in names}
            if "models" in values:
                values["models"] = tuple(values["models"] or ())
            return command(common=Common(**values), **kwargs)

        wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


@dataclass(frozen=True)
class Session:
    """What ``setup`` prepared: the device, the data and the loaded, checked models."""

    device: torch.device
    splits: Splits
    models: tuple[LoadedModel, ...] = ()

    @property
    def model(self) -> LoadedModel:
        return self.models[0]


def setup(common: Common, *, writes: Sequence[tuple[Path, bool]] = (), load: bool = True) -> Session:
    """Seed, device, writable outputs (``(path, is_folder)`` pairs), data, then every model named
    by ``--model`` loaded and checked against the test part (``load=False``: none)."""
    seed_everything(common.seed)
    device = resolve_device(common.device)
    for path, folder in writes:
        check_writable(path, folder=folder, what="--out")
    splits = load_splits(common.data, data_dir=common.data_dir, download=common.download, seed=common.seed)
    specs = (*((common.model,) if common.model else ()), *common.models) if load else ()
    models = tuple(load_checked_model(spec, common.weights, splits.test, device, backend=common.backend,
                                      trust_pickle=common.trust_pickle) for spec in specs)
    return Session(device, splits, models)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    """The CLI (never the library) seeds the global generators."""
    check_seed(seed, "--seed")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_fit(loaded: LoadedModel, data: Dataset, device: torch.device) -> None:
    """Fail early, with a clear message, when the model cannot take or label this data."""
    info = loaded.info
    if info.input_shape is not None and tuple(info.input_shape) != data.input_shape:
        raise InputError(
            f"the model expects images of shape {'×'.join(map(str, info.input_shape))} (C×H×W) "
            f"but {data.name} has {'×'.join(map(str, data.input_shape))}; use data the model was trained on"
        )
    logits = check_model_output(loaded.model, data.x[:2].to(device))
    if logits.shape[1] < data.num_classes:
        raise InputError(
            f"{data.name} has {data.num_classes} classes but the model outputs only "
            f"{logits.shape[1]} logits"
        )
    if info.classes is not None and len(data.y) and int(data.y.max()) >= len(info.classes):
        raise InputError(f"{data.name} has labels the model does not know ({len(info.classes)} classes)")


def load_checked_model(spec: str, weights: Path | None, data: Dataset, device: torch.device, *,
                       backend: str = "torch", trust_pickle: bool = False) -> LoadedModel:
    """Load ``spec``, move it to ``device`` (an outputs-only model stays where it runs) and
    ``check_fit`` it against ``data``."""
    loaded = load_model(spec, weights, backend=backend, trust_pickle=trust_pickle)
    if isinstance(loaded.model, torch.nn.Module):
        loaded.model.to(device)
    check_fit(loaded, data, device)
    return loaded


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError as error:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from error


def parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as error:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from error


def parse_key_values(items: Sequence[str], what: str) -> dict[str, Any]:
    """``key=value`` strings to a dict; values are JSON where they parse (numbers, booleans)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} takes key=value, got {item!r}")
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = value
    return options
