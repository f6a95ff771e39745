"""Schemas for architecture arguments and model sidecars, checked before anything is allocated.

A sidecar is a data file from an unknown source: its architecture must come from the zoo, its
arguments must have the zoo's types and ranges, and the network they describe must have at most
``MAX_PARAMETERS`` parameters, counted on PyTorch's ``meta`` device (shapes only, no memory).
So ``"hidden": [10**7, 10**7]`` or ``"hidden": 2**31`` is refused in microseconds instead of
trying to allocate gigabytes.
"""

from __future__ import annotations

from typing import Any

import torch

from hardened._util.records import MAX_CLASSES, RecordReader
from hardened.errors import ConfigError, HardenedError, ModelLoadError

__all__ = ["MAX_PARAMETERS", "MAX_WIDTH", "check_arch_kwargs", "count_parameters", "check_sidecar"]

MAX_PARAMETERS = 2**28  # 1 GiB of float32 weights
MAX_WIDTH = 65_536  # widest layer (units or channels)
MAX_DEPTH = 64  # hidden layers of an mlp, blocks per resnet stage

_COMMON = ("input_shape", "num_classes", "mean", "std")
_ALLOWED = {
    "mlp": _COMMON + ("hidden",),
    "lenet": _COMMON + ("channels", "hidden"),
    "strided_cnn": _COMMON + ("channels", "hidden"),
    "resnet_small": _COMMON + ("width", "blocks"),
    "resnet18": _COMMON + ("width", "stem"),
    "wrn": _COMMON + ("depth", "width"),
    "wrn_28_10": _COMMON,
    "wrn_16_2": _COMMON,
}
_RGB_DEFAULT = ("resnet", "wrn")  # architectures whose default input has 3 channels


def check_arch_kwargs(
    arch: str, kwargs: Any, *, where: str = "architecture arguments", error: type[HardenedError] = ConfigError
) -> dict[str, Any]:
    """The zoo arguments ``kwargs`` of ``arch``, type- and range-checked (lists for sequences);
    ``error`` for anything else, including a network over ``MAX_PARAMETERS`` parameters."""
    if arch not in _ALLOWED:
        raise error(f"{where}: unknown architecture {arch!r}: use one of {', '.join(_ALLOWED)}")
    if not isinstance(kwargs, dict):
        raise error(f"{where}: the arguments of {arch} must be a JSON object, got {type(kwargs).__name__}")
    unknown = sorted(str(k) for k in kwargs if k not in _ALLOWED[arch])
    if unknown:
        raise error(f"{where}: {arch} takes no argument(s) {', '.join(unknown)}; it takes {', '.join(_ALLOWED[arch])}")
    read = RecordReader(kwargs, where, error)
    out: dict[str, Any] = {}
    if "input_shape" in kwargs:
        out["input_shape"] = read.shape("input_shape")
    channels = (out.get("input_shape") or ((3,) if arch.startswith(_RGB_DEFAULT) else (1,)))[0]
    if "num_classes" in kwargs:
        out["num_classes"] = read.integer("num_classes", 1, MAX_CLASSES)
    for key in ("mean", "std"):
        if kwargs.get(key) is not None:
            out[key] = list(read.float_list(key, channels))
    if "std" in out and min(out["std"]) <= 0:
        raise read.fail("std", "positive numbers", out["std"])
    if arch == "mlp" and "hidden" in kwargs:
        out["hidden"] = list(read.int_list("hidden", 1, MAX_WIDTH, max_length=MAX_DEPTH))
    if arch in ("lenet", "strided_cnn"):
        if "channels" in kwargs:
            out["channels"] = list(read.int_list("channels", 1, MAX_WIDTH, length=2))
        if "hidden" in kwargs:
            out["hidden"] = read.integer("hidden", 1, MAX_WIDTH)
    if arch.startswith(_RGB_DEFAULT):
        if "width" in kwargs:
            out["width"] = read.integer("width", 1, MAX_WIDTH)
        if "blocks" in kwargs:
            out["blocks"] = read.integer("blocks", 1, MAX_DEPTH)
        if "depth" in kwargs:
            out["depth"] = read.integer("depth", 10, 6 * MAX_DEPTH + 4)
            if (out["depth"] - 4) % 6:
                raise read.fail("depth", "6n + 4 (16, 22, 28, 34...)", out["depth"])
        if "stem" in kwargs:
            from hardened.models.zoo import STEMS

            stem = read.text("stem", max_length=16)
            if stem not in STEMS:
                raise read.fail("stem", f"one of {', '.join(STEMS)}", stem)
            out["stem"] = stem
    count = count_parameters(arch, out, where=where, error=error)
    if count > MAX_PARAMETERS:
        raise error(
            f"{where}: {arch} with these arguments has {count:,} parameters, over the limit of "
            f"{MAX_PARAMETERS:,}; check the layer sizes"
        )
    return out


def count_parameters(
    arch: str, kwargs: dict[str, Any], *, where: str = "architecture arguments",
    error: type[HardenedError] = ConfigError,
) -> int:
    """Parameters of ``arch(**kwargs)``, built on the ``meta`` device (no memory, no RNG use)."""
    from hardened.models.zoo import ARCHITECTURES

    shapes_only = {k: v for k, v in kwargs.items() if k not in ("mean", "std")}
    try:
        with torch.device("meta"):
            model = ARCHITECTURES[arch](**shapes_only)
    except (RuntimeError, ValueError, TypeError) as problem:
        first = str(problem).splitlines()[0] if str(problem) else type(problem).__name__
        raise error(f"{where}: {arch} cannot be built with these arguments: {first}") from problem
    return sum(p.numel() for p in model.parameters())


def check_sidecar(meta: dict[str, Any], where: str, format_version: int) -> dict[str, Any]:
    """A sidecar record, every field checked (``ModelLoadError`` naming the field otherwise).

    Returns ``arch``, ``arch_kwargs``, ``input_shape``, ``classes``, ``training`` and
    ``weights_sha256``.
    """
    read = RecordReader(meta, where, ModelLoadError)
    read.integer("format_version", 0, format_version, optional=True)
    arch = read.text("arch", max_length=64)
    kwargs = check_arch_kwargs(str(arch), read.mapping("arch_kwargs"), where=where, error=ModelLoadError)
    shape = read.shape("input_shape", optional=True)
    classes = read.str_list("classes")
    if classes is not None and "num_classes" in kwargs and len(classes) != kwargs["num_classes"]:
        raise ModelLoadError(
            f"{where}: {len(classes)} class names for a model with {kwargs['num_classes']} outputs"
        )
    digest = read.text("weights_sha256", optional=True, max_length=64)
    return {
        "arch": arch,
        "arch_kwargs": kwargs,
        "input_shape": shape,
        "classes": classes,
        "training": read.mapping("training"),
        "weights_sha256": digest,
    }
