"""ONNX models: converted to a torch module (white-box) or run by onnxruntime (outputs only).

An ONNX file is data (a protobuf graph and its weights), never code: reading one runs nothing
of the file's author. Two backends:

- ``"torch"`` (default): ``onnx2torch`` rebuilds the graph as an ``nn.Module`` (an
  ``torch.fx.GraphModule``), so gradient attacks and gradient explanations work on it;
- ``"onnxruntime"``: :class:`OnnxRuntimeModel`, a plain callable ``x -> logits`` (no
  gradients) for the score-based and other gradient-free attacks, when conversion is not
  possible or not wanted.

Both need the optional extra ``hardened[onnx]``; a missing one is a ``ModelLoadError`` that
names it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from torch import Tensor, nn

from hardened.errors import InputError, ModelLoadError
from hardened.models.blackbox import OnnxTarget

__all__ = ["BACKENDS", "OnnxRuntimeModel", "load_onnx"]

Backend = Literal["torch", "onnxruntime"]
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")
EXTRA_HINT = 'install the ONNX extra: pip install "hardened[onnx]"'


def _require(module: str, why: str) -> ModuleType:
    """Import an optional dependency, or say which extra provides it."""
    try:
        return importlib.import_module(module)
    except Exception as error:  # ImportError, or a broken dependency raising at import
        raise ModelLoadError(
            f"{why} needs the package {module!r}, which cannot be imported "
            f"({type(error).__name__}: {error}); {EXTRA_HINT}"
        ) from error


class OnnxRuntimeModel(OnnxTarget):
    """An ONNX model run by onnxruntime on the CPU: ``model(x)`` maps float32 images
    N×C×H×W to logits N×K (a tensor on ``x``'s device, without gradients).

    The black-box ``OnnxTarget`` (query counts, answer checks) with load errors as
    ``ModelLoadError`` and run errors as ``InputError``. Not an ``nn.Module``: attacks that need
    gradients refuse it with a message, gradient-free ones (Square, HSJA, NES) accept it.
    """

    def __init__(self, path: str | Path) -> None:
        ort = _require("onnxruntime", "--backend onnxruntime")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail / InvalidGraph types
            raise ModelLoadError(f"onnxruntime cannot read {path}: {_first_line(error)}") from error
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(
                f"{path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                "an image classifier takes one input, the images N×C×H×W"
            )
        super().__init__(session)
        self.source = str(path)

    def _answer(self, x: Tensor) -> Any:
        try:
            return super()._answer(x)
        except Exception as error:  # onnxruntime's own error types (shape, type mismatch)
            raise InputError(f"onnxruntime could not run {self.source} on images of shape "
                             f"{tuple(x.shape)}: {_first_line(error)}") from error

    def __repr__(self) -> str:
        return f"OnnxRuntimeModel({self.source!r})"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _convert(path: Path) -> nn.Module:
    onnx = _require("onnx", "reading an ONNX model")
    onnx2torch = _require("onnx2torch", "converting an ONNX model to torch (--backend torch)")
    try:
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
    except Exception as error:  # protobuf DecodeError, onnx ValidationError
        raise ModelLoadError(f"{path} is not a valid ONNX model: {_first_line(error)}") from error
    try:
        module: nn.Module = onnx2torch.convert(graph)
    except Exception as error:  # an operator onnx2torch has no converter for, among others
        raise ModelLoadError(
            f"onnx2torch cannot convert {path}: {_first_line(error)}; run it outputs-only with "
            "--backend onnxruntime (score-based attacks) instead"
        ) from error
    return module.eval()


def load_onnx(path: str | Path, backend: str = "torch") -> nn.Module | OnnxRuntimeModel:
    """Load the ONNX file ``path`` with ``backend`` (``"torch"`` or ``"onnxruntime"``)."""
    target = Path(path)
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown ONNX backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if not target.is_file():
        raise ModelLoadError(f"model file {target} does not exist")
    if backend == "onnxruntime":
        return OnnxRuntimeModel(target)
    return _convert(target)
