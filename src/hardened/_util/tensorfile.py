"""Byte-reproducible safetensors files and their tensor digests.

``safetensors`` writes its ``__metadata__`` from a hash map, so the key order (and with it the
file's bytes) can differ between two saves of the same tensors. ``save_tensors`` rewrites the
JSON header with sorted keys, so identical tensors and metadata always give identical files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import save
from torch import Tensor

from hardened._util.atomic import write_bytes
from hardened._util.digests import sha256_hex, tensor_digest

__all__ = ["save_tensors", "digest_matches", "safetensors_bytes"]

_ALIGN = 8


def safetensors_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors serialisation of ``tensors`` with a canonical header (sorted keys)."""
    plain = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    raw = save(plain, metadata=dict(metadata) if metadata else None)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % _ALIGN)
    return len(text).to_bytes(8, "little") + text + raw[8 + size :]


def save_tensors(
    tensors: Mapping[str, Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> str:
    """Write ``tensors`` to ``path`` atomically as a canonical safetensors file; return their
    ``tensor_digest`` (what sidecars and guard records store)."""
    write_bytes(path, safetensors_bytes(tensors, metadata))
    return tensor_digest(tensors)


def digest_matches(tensors: Mapping[str, Tensor], path: str | os.PathLike[str], expected: str) -> bool:
    """Whether ``expected`` is the ``tensor_digest`` of the loaded ``tensors``, or (files written
    before digests were taken over tensors) the sha256 of the file at ``path``."""
    if tensor_digest(tensors) == expected:
        return True
    return sha256_hex(Path(path)) == expected
