"""The library's digests: one sha256 helper, one digest over named tensors, one model digest.

Digests of weights are taken over the tensors (name, dtype, shape, raw bytes, in sorted name
order), never over a file's bytes, so that two files holding the same tensors have the same
digest whatever their container's metadata or layout.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["sha256_hex", "tensor_digest", "model_digest"]

_CHUNK = 1 << 20


def sha256_hex(source: bytes | str | os.PathLike[str]) -> str:
    """Hex sha256 of ``bytes``, or of a file's contents (read in 1 MiB chunks) given its path."""
    digest = hashlib.sha256()
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest.update(source)
        return digest.hexdigest()
    with open(Path(source), "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    """Hex sha256 over named tensors: for each name in sorted order, ``name:shape:dtype;`` then
    the tensor's bytes (C order, on the CPU). Independent of device and memory layout."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_digest(model: nn.Module) -> str:
    """``tensor_digest`` of the model's state dict: parameter and buffer names, dtypes, shapes
    and values. Equal to the digest of the safetensors file ``save_model`` writes for it."""
    return tensor_digest(model.state_dict())
