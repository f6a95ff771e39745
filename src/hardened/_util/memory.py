"""Batch sizes sized from memory, so 224×224 models run in every command without running out.

``fit_batch_size(model, x)`` measures what one image costs and divides a share of the available
memory by it. The cost is measured, not guessed: two probe forwards (1 and 2 copies of
``x[0]``) with ``torch.autograd.graph.saved_tensors_hooks`` count the bytes autograd keeps for
the backward pass (distinct storages, parameters and buffers excluded); their difference is
the per-image part, free of the fixed costs. That works for any autograd-run module
(eager, traced or scripted TorchScript, onnx2torch). A backward pass roughly doubles it (the
activation gradients, ``GRAD_FACTOR``); a forward under ``no_grad`` keeps far less, so the
same count is a safe upper bound for it. Outputs-only models (no autograd: a plain function, or
a module whose forward leaves autograd, e.g. onnxruntime) get a fixed multiple of the input size
(``OPAQUE_FACTOR``).

Available memory: free CUDA memory on a GPU; on the CPU ``psutil.virtual_memory().available``
when psutil is installed, else ``MemAvailable`` from ``/proc/meminfo``, else ``FALLBACK_BYTES``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from hardened._util.batching import eval_mode
from hardened.errors import ConfigError

__all__ = [
    "DEFAULT_FRACTION", "MAX_BATCH", "available_memory", "fit_batch_size", "per_image_bytes", "resolve_batch_size",
]

DEFAULT_FRACTION = 0.25  # of the available memory: other processes and temporaries need the rest
MAX_BATCH = 1024  # beyond this a larger batch gains nothing on a CPU
GRAD_FACTOR = 2  # a backward pass holds the activations and their gradients
OPAQUE_FACTOR = 64  # bytes per input byte assumed for a model autograd cannot see into
FALLBACK_BYTES = 2 * 2**30
_MEMINFO = Path("/proc/meminfo")


def available_memory(device: torch.device | str = "cpu", meminfo: Path = _MEMINFO) -> int:
    """Bytes that can still be allocated on ``device`` (see the module docstring for the sources)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return FALLBACK_BYTES


def _saved_bytes(model: Callable[[Tensor], Tensor], x: Tensor, exclude: set[int]) -> int:
    """Bytes of the distinct storages autograd saves for the backward of ``model(x)``."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    leaf = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(leaf)
    if not isinstance(out, Tensor) or not out.requires_grad:
        raise TypeError("the output is outside autograd")  # nothing here is measurable
    return sum(seen.values()) + out.numel() * out.element_size()


def per_image_bytes(model: nn.Module | Callable[[Tensor], Tensor], x: Tensor) -> int:
    """Bytes one image of ``x``'s shape costs in a forward that keeps its graph for a backward
    (measured: see the module docstring); at least the image's own size."""
    image = x[:1]
    if image.shape[0] == 0:
        raise ConfigError("cannot size a batch from an empty input: give at least one image")
    own = image.numel() * image.element_size()
    if not isinstance(model, nn.Module):
        return own * OPAQUE_FACTOR
    exclude = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    try:
        with eval_mode(model):
            one = _saved_bytes(model, image, exclude)
            two = _saved_bytes(model, image.expand(2, *image.shape[1:]), exclude)
    except (RuntimeError, TypeError, ValueError):  # a module that runs outside autograd (onnxruntime)
        return own * OPAQUE_FACTOR
    return max(two - one, own) + own


def fit_batch_size(
    model: nn.Module | Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    grad: bool = True,
    fraction: float = DEFAULT_FRACTION,
    limit: int | None = None,
    memory_bytes: int | None = None,
    cap: int = MAX_BATCH,
) -> int:
    """Images per batch that fit in ``fraction`` of ``memory_bytes`` (default: the memory
    available on ``x``'s device): that budget over ``per_image_bytes``, times ``GRAD_FACTOR``
    when ``grad`` (attacks, LRP, gradients), rounded down to a power of two (so that small
    changes in free memory do not change the batches, nor with them a seeded run's random
    draws). At least 1, at most ``limit`` and ``cap``."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    budget = available_memory(x.device) if memory_bytes is None else int(memory_bytes)
    cost = per_image_bytes(model, x) * (GRAD_FACTOR if grad else 1)
    fits = max(1, min(int(budget * fraction) // max(cost, 1), cap))
    size = 1 << (fits.bit_length() - 1)
    return size if limit is None else max(1, min(size, int(limit)))


def resolve_batch_size(
    batch_size: int | None,
    model: nn.Module | Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    grad: bool = True,
    remember: Path | None = None,
    store: bool = True,
) -> int:
    """``batch_size`` when given (``--batch-size``), else ``fit_batch_size(model, x)``.

    ``remember``: a JSON file in a resumable run's folder whose top-level ``batch_size`` is
    reused when the run resumes, so that it cuts the same batches as the first time (its saved
    state is keyed by them) whatever memory is free by then. With ``store`` the size chosen is
    written there; without, the file is the run's own record (a cascade's ``settings.json``).
    """
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1 or None (sized to memory), got {batch_size!r}")
        return batch_size
    stored = _remembered(remember)
    if stored is not None:
        return stored
    size = fit_batch_size(model, x, grad=grad) if x.shape[0] else 1
    if remember is not None and store:
        from hardened._util.atomic import write_json

        write_json(remember, {"batch_size": size, "sized_from": "memory"})
    return size


def _remembered(path: Path | None) -> int | None:
    """The batch size stored in ``path`` (``None``: no file, or not a valid record)."""
    if path is None or not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("batch_size")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None
