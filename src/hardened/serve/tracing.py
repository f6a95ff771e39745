"""A served batch function traced into one TorchScript graph, when that gives the same answers.

Why: the service runs the model on a worker thread while the event loop parses requests on
another, and every eager PyTorch operation gives up and retakes the interpreter lock. In one
process, beside a thread that runs Python in bursts (as the event loop does), a 32-image LeNet
batch took 2.87 ms traced against 3.21 ms eager, 2.93 / 3.60 ms with the energy guard and 2.94 /
3.72 ms with the all-layer Mahalanobis guard. But in the service under load on 2 CPU cores (8
clients, 32-image requests) the traced service was slower, 0.43× the bare forward against
0.76× eager, using 1.7× the CPU; so ``hardened serve`` traces only with ``--trace``.

``trace_batch`` traces ``function`` on an example batch and accepts the graph only if it gives
the eager function's outputs (within ``rtol``/``atol``) on fresh random batches of every size
checked, else it returns ``None`` with the reason, and the caller stays eager: a function with
data-dependent Python control flow, randomness or an untraceable operation is never served
traced.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["TracedBatch", "trace_batch"]

Outputs = tuple[Tensor, ...]


class _Wrapper(nn.Module):
    """``function`` as a module, with ``modules`` registered so that their weights are the graph's
    parameters rather than constants (``torch.jit.trace`` refuses constants that need grad)."""

    def __init__(self, function: Callable[[Tensor], Outputs], modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.function = function
        self.held = nn.ModuleList(modules)

    def forward(self, x: Tensor) -> Outputs:
        return tuple(self.function(x))


@dataclass(frozen=True)
class TracedBatch:
    """A traced batch function valid for 1 to ``max_batch`` images; ``None`` fields mean eager."""

    graph: torch.jit.ScriptModule | None
    max_batch: int
    reason: str

    def covers(self, n: int) -> bool:
        """Whether a batch of ``n`` images runs traced (there is a graph and 1 <= n <= max_batch)."""
        return self.graph is not None and 1 <= n <= self.max_batch

    def __call__(self, x: Tensor) -> Outputs | None:
        """The traced outputs for ``x``, or ``None`` when it must run eager (no graph, or too large)."""
        if self.graph is None or not self.covers(x.shape[0]):  # the first test narrows the type
            return None
        with torch.no_grad():
            return tuple(self.graph(x))


def trace_batch(
    function: Callable[[Tensor], Outputs], modules: Sequence[nn.Module], input_shape: tuple[int, ...],
    max_batch: int, *, sizes: Sequence[int] | None = None, rtol: float = 1e-4, atol: float = 1e-5,
    device: torch.device | str = "cpu", seed: int = 0,
) -> TracedBatch:
    """Trace ``function`` (images N×C×H×W in [0, 1] -> a tuple of tensors) for batches of 1 to
    ``max_batch``; checked against eager on random batches of ``sizes`` (default 1, 2 and
    ``max_batch``). Returns a ``TracedBatch`` whose ``graph`` is ``None`` when tracing failed or
    disagreed (``reason`` says which)."""
    generator = torch.Generator().manual_seed(seed)

    def batch(n: int) -> Tensor:
        return torch.rand((n, *input_shape), generator=generator).to(device)

    if any(isinstance(m, torch.jit.ScriptModule) for m in modules):
        return TracedBatch(None, max_batch, "the model is TorchScript already: served as it is")
    wrapper = _Wrapper(function, modules)
    checked = list(sizes or sorted({1, min(2, max_batch), max_batch}))
    held = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    try:
        for p, _ in held:
            p.requires_grad_(False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.jit.trace(wrapper, (batch(max_batch),), check_trace=False)
            for n in checked:
                x = batch(n)
                eager, traced = tuple(function(x)), tuple(graph(x))
                if len(eager) != len(traced) or not all(
                        e.shape == t.shape and torch.allclose(e.float(), t.float(), rtol=rtol, atol=atol, equal_nan=True)
                        for e, t in zip(eager, traced, strict=True)):
                    return TracedBatch(None, max_batch, f"the traced graph disagreed with eager at batch {n}: served eager")
    except Exception as error:  # any tracing failure means: stay eager
        return TracedBatch(None, max_batch, f"not traceable ({type(error).__name__}: {str(error)[:120]}): served eager")
    finally:
        for p, requires_grad in held:
            p.requires_grad_(requires_grad)
    return TracedBatch(graph, max_batch, f"traced (the same outputs as eager at batches {checked})")
