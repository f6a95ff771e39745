"""Save and load models without unpickling untrusted files.

Reference architectures are saved as ``NAME.safetensors`` (weights) plus ``NAME.json`` (sidecar:
format version, architecture and its arguments, input shape, classes, training record, and the
weights' sha256, taken over the tensors, so a corrupt file is detected and identical weights
give byte-identical files). Users' own models load from TorchScript files
(``.pt``/``.ts``/``.torchscript``) or a ``package.module:factory`` string plus a weights file
(safetensors, or a state dict read with ``torch.load(weights_only=True)``), ONNX files
(``.onnx``: data, see :mod:`hardened.models.onnx`), and ``torch.export`` programs (``.pt2``).

Trust: ``torch.export.load`` unpickles the program's weights (``weights_only=False``), which can
run code from the file, so a ``.pt2`` file is refused unless the caller passes
``trust_pickle=True`` (CLI ``--trust-pickle``) for a file of their own.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from hardened._util.atomic import write_json
from hardened._util.digests import tensor_digest
from hardened._util.records import read_json_object
from hardened._util.tensorfile import digest_matches, save_tensors
from hardened.errors import InputError, ModelLoadError
from hardened.models.onnx import BACKENDS, OnnxRuntimeModel, load_onnx
from hardened.models.schema import check_sidecar
from hardened.models.zoo import ARCHITECTURES, build_model

__all__ = ["ModelInfo", "LoadedModel", "save_model", "load_model", "sidecar_path"]

FORMAT_VERSION = 1
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".torchscript", ".jit")
ONNX_SUFFIX = ".onnx"
EXPORT_SUFFIX = ".pt2"


@dataclass(frozen=True)
class ModelInfo:
    """What the sidecar records about a model."""

    arch: str | None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, int, int] | None = None
    classes: tuple[str, ...] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_shape"] = list(self.input_shape) if self.input_shape else None
        out["classes"] = list(self.classes) if self.classes else None
        return out


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model (in eval mode, on the CPU) and its recorded information. ``model`` is an
    ``nn.Module``, or for ``backend="onnxruntime"`` an outputs-only :class:`OnnxRuntimeModel`."""

    model: nn.Module | OnnxRuntimeModel
    info: ModelInfo


def sidecar_path(weights: str | os.PathLike[str]) -> Path:
    """``model.safetensors`` -> ``model.json``."""
    return Path(weights).with_suffix(".json")


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str,
    arch_kwargs: dict[str, Any] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    classes: tuple[str, ...] | list[str] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``path`` (safetensors weights) and its JSON sidecar atomically, the sidecar first;
    return ``path``."""
    target = Path(path)
    if target.suffix != ".safetensors":
        target = target.with_suffix(".safetensors")
    state = model.state_dict()
    sidecar = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": arch_kwargs or {},
        "input_shape": list(input_shape) if input_shape else None,
        "classes": list(classes) if classes is not None else None,
        "training": training or {},
        "weights_sha256": tensor_digest(state),
    }
    # The sidecar lands before the weights: a kill in between leaves a sidecar whose digest
    # does not match (reported, with the way out), never weights without a sidecar.
    write_json(sidecar_path(target), sidecar)
    save_tensors(state, target, metadata={"format": "hardened", "arch": arch})
    return target


def _read_state(weights: Path) -> dict[str, torch.Tensor]:
    if not weights.is_file():
        raise ModelLoadError(f"weights file {weights} does not exist")
    try:
        if weights.suffix == ".safetensors":
            return load_file(str(weights))
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, ValueError, EOFError) as error:
        raise ModelLoadError(f"cannot read weights {weights}: {error}") from error
    except Exception as error:  # weights_only refuses pickled objects with UnpicklingError
        raise ModelLoadError(
            f"{weights} is not a plain state dict (refused to unpickle it: {error}); "
            "save weights with safetensors or torch.save(model.state_dict())"
        ) from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{weights} does not hold a state dict")
    return state


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ModelLoadError(
            f"weights in {where} do not fit the model: {state_mismatch(model.state_dict(), state)}; "
            "check that --model names the architecture (and its options) the weights were saved from"
        ) from error


def state_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], show: int = 5) -> str:
    """One-line summary of how a state dict ``given`` differs from a model's ``expected`` one:
    missing keys, unexpected keys and shape mismatches, each counted with its first ``show`` names."""

    def listed(what: str, names: list[str]) -> str:
        more = f" and {len(names) - show} more" if len(names) > show else ""
        return f"{len(names)} {what} ({', '.join(names[:show])}{more})"

    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [
        f"{k} {'×'.join(map(str, given[k].shape))} in the file vs {'×'.join(map(str, expected[k].shape))}"
        for k in sorted(set(expected) & set(given))
        if isinstance(given[k], torch.Tensor) and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    parts = [listed(what, names) for what, names in (
        ("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if names]
    return "; ".join(parts) if parts else "the tensors do not load"


INTERRUPTED_HINT = (
    "if a save was interrupted, run it again (hardened train continues from its last checkpoint "
    "with --resume)"
)


def _load_sidecar_model(path: Path) -> LoadedModel:
    meta_path = sidecar_path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    if not meta_path.is_file():
        raise ModelLoadError(
            f"{path} has no sidecar {meta_path.name}; {INTERRUPTED_HINT}; for weights of your own "
            "architecture use --model package.module:factory --weights FILE"
        )
    meta = check_sidecar(read_json_object(meta_path, ModelLoadError), str(meta_path), FORMAT_VERSION)
    arch = meta["arch"]
    state = _read_state(path)
    expected = meta["weights_sha256"]
    if expected and not digest_matches(state, path, expected):
        raise ModelLoadError(
            f"{path} does not match the sha256 recorded in {meta_path.name}: the file is corrupt, "
            f"or {INTERRUPTED_HINT}"
        )
    kwargs = meta["arch_kwargs"]
    model = build_model(arch, **kwargs)
    _load_state(model, state, str(path))
    info = ModelInfo(
        arch=arch,
        arch_kwargs=kwargs,
        input_shape=meta["input_shape"],
        classes=meta["classes"],
        training=meta["training"],
        source=str(path),
    )
    return LoadedModel(model.eval(), info)


_FACTORY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def resolve_factory(spec: str) -> Callable[[], Any]:
    """The callable that ``package.module:factory`` names. Importing the module RUNS ITS CODE:
    only call this with a string the user typed. Whatever can be checked before calling is
    checked (a module attribute path, a callable that takes no arguments, a class deriving from
    ``nn.Module``, not a built-in function); every failure is a ``ModelLoadError``."""
    if not _FACTORY.fullmatch(spec):
        raise ModelLoadError(f"{spec!r} is not a factory reference: use package.module:function")
    module_name, _, attr = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except Exception as error:  # importing runs the module's code, which may raise anything
        raise ModelLoadError(f"cannot import factory {spec!r}: {type(error).__name__}: {error}") from error
    if isinstance(target, type):
        if not issubclass(target, nn.Module):
            raise ModelLoadError(f"factory {spec!r} is the class {target.__name__}, not an nn.Module subclass")
    elif not callable(target) or inspect.ismodule(target):
        raise ModelLoadError(f"factory {spec!r} is a {type(target).__name__}, not a function returning an nn.Module")
    elif inspect.isbuiltin(target):
        raise ModelLoadError(f"factory {spec!r} is a built-in function, not one that builds an nn.Module")
    try:
        inspect.signature(target).bind()
    except TypeError as error:
        raise ModelLoadError(f"factory {spec!r} cannot be called without arguments: {error}") from error
    except ValueError:  # no signature available: nothing more to check before calling it
        pass
    return target  # type: ignore[no-any-return]


def _load_factory(spec: str, weights: str | os.PathLike[str] | None) -> LoadedModel:
    factory = resolve_factory(spec)
    try:
        model = factory()
    except Exception as error:  # the user's code may raise anything
        raise ModelLoadError(f"factory {spec!r} failed: {type(error).__name__}: {error}") from error
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"factory {spec!r} returned {type(model).__name__}, not an nn.Module")
    if weights is not None:
        _load_state(model, _read_state(Path(weights)), str(weights))
    return LoadedModel(model.eval(), ModelInfo(arch=None, source=spec))


def _load_zoo(name: str, weights: str | os.PathLike[str] | None) -> LoadedModel:
    """A zoo architecture at its defaults (``wrn-28-10``: 3×32×32, 10 classes) with a user's
    weights, e.g. a RobustBench WideResNet checkpoint saved as safetensors."""
    if weights is None:
        raise ModelLoadError(
            f"{name!r} names a zoo architecture, which needs weights: pass --weights FILE (safetensors or a "
            "state dict), or give a model file"
        )
    key = name.lower().replace("-", "_")
    model = build_model(key)
    _load_state(model, _read_state(Path(weights)), str(weights))
    return LoadedModel(model.eval(), ModelInfo(arch=key, source=f"{name} + {weights}"))


def _load_torchscript(path: Path) -> nn.Module:
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise ModelLoadError(f"{path} is not a TorchScript file: {str(error).splitlines()[0]}") from error
    return model.eval()


class ExportedModule(nn.Module):
    """A ``torch.export`` program's module. Its graph was fixed in one mode at export time and
    refuses ``train()``/``eval()``, so this wrapper records the mode without passing it on (the
    library's ``eval_mode`` contexts then work on it). A program exported with a fixed batch
    size fails on other sizes with a message that says how to export it."""

    def __init__(self, program: nn.Module, source: str) -> None:
        super().__init__()
        self.program = program
        self.source = source

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.program(x)  # type: ignore[no-any-return]
        except (RuntimeError, AssertionError) as error:  # export's shape guards assert
            if "Guard failed" not in str(error) and "Expected input" not in str(error):
                raise
            raise InputError(
                f"the torch.export program {self.source} does not take input of shape "
                f"{tuple(x.shape)} ({str(error).splitlines()[0]}); export it with a dynamic batch "
                "dimension: torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))"
            ) from error


def _load_exported(path: Path, trust_pickle: bool) -> nn.Module:
    """A ``torch.export`` program as a module; refused unless ``trust_pickle`` (it unpickles)."""
    if not trust_pickle:
        raise ModelLoadError(
            f"{path} is a torch.export program, and torch.export.load unpickles its weights, which "
            "can run code from the file: load it only if you made it or trust its author "
            "(--trust-pickle, or trust_pickle=True), or export the model to ONNX or safetensors instead"
        )
    try:
        program = torch.export.load(str(path))
        module = program.module()
    except Exception as error:  # a bad zip, a newer serialisation version, a failing unpickle
        raise ModelLoadError(
            f"{path} is not a torch.export program this torch ({torch.__version__}) can read: "
            f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        ) from error
    return ExportedModule(module, str(path))


def load_model(
    spec: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    *,
    backend: str = "torch",
    trust_pickle: bool = False,
) -> LoadedModel:
    """Load a model from a ``.safetensors`` + sidecar, a TorchScript file, an ONNX file, a
    ``torch.export`` program (``.pt2``, only with ``trust_pickle``), ``pkg.mod:factory``, or a
    zoo architecture's name (``wrn-28-10``) with ``weights``.

    ``backend`` is ``"torch"`` (every format) or ``"onnxruntime"`` (ONNX files only: an
    outputs-only model for gradient-free attacks).
    """
    text = str(spec)
    path = Path(text)
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend != "torch" and path.suffix != ONNX_SUFFIX:
        raise ModelLoadError(f"--backend {backend} runs ONNX files only; {text} is not a {ONNX_SUFFIX} file")
    if path.suffix == ".safetensors" or (path.suffix == ".json" and path.is_file()):
        return _load_sidecar_model(path.with_suffix(".safetensors"))
    loaders: dict[str, Callable[[], nn.Module | OnnxRuntimeModel]] = {
        **{suffix: lambda: _load_torchscript(path) for suffix in TORCHSCRIPT_SUFFIXES},
        ONNX_SUFFIX: lambda: load_onnx(path, backend),
        EXPORT_SUFFIX: lambda: _load_exported(path, trust_pickle),
    }
    if path.suffix in loaders:
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        return LoadedModel(loaders[path.suffix](), ModelInfo(arch=None, source=str(path)))
    if ":" in text and not path.exists():
        return _load_factory(text, weights)
    if text.lower().replace("-", "_") in ARCHITECTURES and not path.exists():
        return _load_zoo(text, weights)
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist")
    raise ModelLoadError(
        f"unknown model file type {path.suffix!r} for {path}: use .safetensors (with its .json "
        f"sidecar), TorchScript ({', '.join(TORCHSCRIPT_SUFFIXES)}), ONNX ({ONNX_SUFFIX}), "
        f"a torch.export program ({EXPORT_SUFFIX}), or package.module:factory"
    )
