"""submodules walks like nn.Module.modules(); model_device finds the first parameter, else buffer."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hardened._util.device import model_device, submodules


@st.composite
def _trees(draw: st.DrawFn) -> nn.Module:
    """Random nested Sequentials of small layers, some modules shared, some slots None."""
    pool: list[nn.Module] = []

    def build(depth: int) -> nn.Module:
        if depth == 0 or draw(st.booleans()):
            if pool and draw(st.booleans()):
                return draw(st.sampled_from(pool))  # a module registered twice
            leaf = draw(st.sampled_from([lambda: nn.Linear(2, 2), nn.ReLU, nn.Identity, lambda: nn.BatchNorm1d(2)]))()
            pool.append(leaf)
            return leaf
        children = [build(depth - 1) for _ in range(draw(st.integers(1, 3)))]
        module = nn.Sequential(*children)
        if draw(st.booleans()):
            module.register_module("empty", None)
        pool.append(module)
        return module

    return build(draw(st.integers(1, 4)))


@settings(max_examples=60, deadline=None)
@given(_trees())
def test_submodules_is_modules_order(model: nn.Module) -> None:
    assert [id(m) for m in submodules(model)] == [id(m) for m in model.modules()]
    first = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    assert model_device(model) == (first.device if first is not None else torch.device("cpu"))


def test_model_device_reads_buffers_when_there_are_no_parameters() -> None:
    class Shift(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("offset", torch.zeros(1, device="meta"))

    assert model_device(nn.Sequential(nn.ReLU(), Shift())) == torch.device("meta")
    assert model_device(nn.ReLU(), default="meta") == torch.device("meta")
