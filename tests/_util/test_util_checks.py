"""A model's RuntimeError is reported as what it is: out of memory, dtype, shape, or itself."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import hardened as hd
from hardened._util.checks import check_model_output
from hardened.certify import SmoothedClassifier
from hardened.errors import ConfigError, HardenedError, InputError


class Failing(nn.Module):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.error = error

    def forward(self, x: Tensor) -> Tensor:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                     "you tried to allocate 107374182400 bytes"),
    ],
)
def test_out_of_memory_says_lower_the_batch_size(error) -> None:
    with pytest.raises(ConfigError, match=r"ran out of memory on a batch of 3 images .*lower the batch size"):
        check_model_output(Failing(error), torch.rand(3, 1, 2, 2))


def test_other_runtime_errors_keep_their_own_first_line() -> None:
    error = RuntimeError("the custom layer broke\nsecond line of detail")
    with pytest.raises(HardenedError, match="forward pass failed on 3 images: the custom layer broke$") as info:
        check_model_output(Failing(error), torch.rand(3, 1, 2, 2))
    assert not isinstance(info.value, (InputError, ConfigError))


def test_shape_errors_stay_shape_errors() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(InputError, match=r"cannot take images of shape \(1, 3, 3\).*cannot be multiplied"):
        check_model_output(model, torch.rand(2, 1, 3, 3))


LENET = hd.build_model("lenet", input_shape=(1, 28, 28), num_classes=10).eval()
X64 = torch.rand(2, 1, 28, 28, dtype=torch.float64)


@pytest.mark.parametrize(
    "call",
    [
        lambda: hd.PGD(eps=0.1, steps=2)(LENET, X64, torch.tensor([0, 1])),
        lambda: hd.explain_images(LENET, X64),
        lambda: SmoothedClassifier(LENET, sigma=0.25).certify(X64[0], n0=4, n=16),
    ],
    ids=["pgd", "explain", "certify"],
)
def test_float64_images_are_reported_as_a_dtype_problem(call) -> None:
    with pytest.raises(InputError, match=r"images are float64 but the model's weights are float32: .*x\.float\(\)"):
        call()


def test_float64_images_work_with_a_float64_model() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    assert check_model_output(model, torch.rand(2, 1, 2, 2, dtype=torch.float64)).dtype == torch.float64
