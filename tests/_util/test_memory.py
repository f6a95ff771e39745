"""Batch sizing from memory: the measured bytes per image against a closed form, the budget
arithmetic, the memory sources, and models autograd cannot see into."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hardened._util.memory import (
    FALLBACK_BYTES,
    GRAD_FACTOR,
    MAX_BATCH,
    OPAQUE_FACTOR,
    available_memory,
    fit_batch_size,
    per_image_bytes,
    resolve_batch_size,
)
from hardened.errors import ConfigError


@pytest.mark.parametrize(("d", "h", "k"), [(12, 7, 3), (100, 50, 10), (3, 300, 2)])
def test_per_image_bytes_of_an_mlp_is_its_saved_activations(d, h, k):
    # autograd keeps the input of each Linear (x: d floats; the ReLU's output, h floats, which
    # is also the ReLU's own saved result) and the output has k: 4(d + h + k) bytes, plus the
    # image itself (d floats); the weights are shared by the batch and excluded
    model = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, k))
    assert per_image_bytes(model, torch.rand(5, d)) == 4 * (d + h + k) + 4 * d


def test_per_image_bytes_grows_with_the_image_area():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    small = per_image_bytes(model, torch.rand(1, 3, 32, 32))
    large = per_image_bytes(model, torch.rand(1, 3, 224, 224))
    assert 0.95 * 49 < large / small < 1.05 * 49  # 7× the side: 49× the activations


def test_a_traced_model_costs_what_the_eager_one_does():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.rand(2, 1, 8, 8)
    assert per_image_bytes(torch.jit.trace(model, x), x) == per_image_bytes(model, x)


def test_an_outputs_only_model_gets_a_multiple_of_the_input():
    x = torch.rand(3, 3, 10, 10)
    assert per_image_bytes(lambda t: t.flatten(1)[:, :2], x) == OPAQUE_FACTOR * 300 * 4


class _OutsideAutograd(nn.Module):
    """A module whose forward leaves autograd (as an onnxruntime wrapper does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.detach().numpy().reshape(len(x), -1)[:, :2].copy())


class _NeedsNoGrad(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.numpy().reshape(len(x), -1)[:, :2].copy())  # raises on a grad tensor


def test_a_module_outside_autograd_is_sized_as_opaque():
    x = torch.rand(2, 3, 4, 4)
    assert per_image_bytes(_OutsideAutograd(), x) == OPAQUE_FACTOR * 48 * 4
    assert per_image_bytes(_NeedsNoGrad(), x) == OPAQUE_FACTOR * 48 * 4


def test_the_model_and_its_mode_are_left_as_they_were():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    per_image_bytes(model, torch.rand(4, 4))
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("memory", [10**6, 10**7, 3 * 10**8])
@pytest.mark.parametrize("grad", [True, False])
def test_fit_batch_size_is_the_budget_over_the_cost(memory, grad):
    model = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 10))
    x = torch.rand(2, 50)
    cost = per_image_bytes(model, x) * (GRAD_FACTOR if grad else 1)
    size = fit_batch_size(model, x, grad=grad, memory_bytes=memory, fraction=0.5)
    fits = max(1, min(int(memory * 0.5) // cost, MAX_BATCH))
    assert size <= fits < 2 * size and size & (size - 1) == 0  # the largest power of two that fits
    assert fit_batch_size(model, x, grad=grad, memory_bytes=memory, fraction=0.5, limit=3) == min(size, 3)


def test_fit_batch_size_is_at_least_one_and_refuses_a_bad_fraction():
    model = nn.Linear(1000, 10)
    assert fit_batch_size(model, torch.rand(1, 1000), memory_bytes=10) == 1
    with pytest.raises(ConfigError, match="fraction"):
        fit_batch_size(model, torch.rand(1, 1000), fraction=1.5)
    with pytest.raises(ConfigError, match="empty"):
        per_image_bytes(model, torch.rand(0, 1000))


def test_resolve_batch_size_keeps_a_given_size_and_checks_it():
    model = nn.Linear(4, 2)
    assert resolve_batch_size(7, model, torch.rand(3, 4)) == 7
    assert resolve_batch_size(None, model, torch.rand(3, 4)) >= 1
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="batch_size"):
            resolve_batch_size(bad, model, torch.rand(3, 4))


def test_available_memory_reads_meminfo(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   12345 kB\n")
    assert available_memory("cpu", meminfo) == 12345 * 1024
    assert available_memory("cpu", tmp_path / "missing") == FALLBACK_BYTES
    assert available_memory("cpu") > 0  # this machine's /proc/meminfo


def test_a_remembered_size_is_reused_so_a_resumed_run_cuts_the_same_batches(tmp_path, monkeypatch):
    model = nn.Linear(4, 2)
    record = tmp_path / "batch_size.json"
    first = resolve_batch_size(None, model, torch.rand(3, 4), remember=record)
    assert record.is_file()
    monkeypatch.setattr("hardened._util.memory.available_memory", lambda *a, **k: 10)  # memory has gone
    assert resolve_batch_size(None, model, torch.rand(3, 4), remember=record) == first
    assert resolve_batch_size(None, model, torch.rand(3, 4)) == 1  # unremembered: sized again
    assert resolve_batch_size(5, model, torch.rand(3, 4), remember=record) == 5  # --batch-size wins
    record.write_text('{"batch_size": "many"}')
    assert resolve_batch_size(None, model, torch.rand(3, 4), remember=record) == 1  # not valid: sized again


def test_a_runs_own_record_is_read_but_not_written(tmp_path):
    settings = tmp_path / "settings.json"
    assert resolve_batch_size(None, nn.Linear(4, 2), torch.rand(3, 4), remember=settings, store=False) >= 1
    assert not settings.exists()
    settings.write_text('{"format": 1, "batch_size": 48, "eps": [0.1]}')
    assert resolve_batch_size(None, nn.Linear(4, 2), torch.rand(3, 4), remember=settings, store=False) == 48
