"""A small LeNet trained on scikit-learn's 8×8 digits, and ID / OOD sets for the guard tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hardened.data import Splits, load_splits
from hardened.guard.probes import uniform_noise
from hardened.models import build_model
from hardened.train import TrainConfig, train

DIGITS_ARCH = {"input_shape": [1, 8, 8], "num_classes": 10, "channels": [8, 16], "hidden": 32}


@pytest.fixture(scope="session")
def digits_arch() -> dict:
    return dict(DIGITS_ARCH)


@pytest.fixture(scope="session")
def digits() -> Splits:
    return load_splits("digits", seed=0)


@pytest.fixture(scope="session")
def noise() -> torch.Tensor:
    return uniform_noise(200, (1, 8, 8), seed=3)


@pytest.fixture(scope="session")
def digits_model(digits: Splits) -> nn.Module:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # the test (not the library) fixes the initial weights
    model = build_model("lenet", **DIGITS_ARCH)
    torch.random.set_rng_state(generator_state)
    train(model, digits.train, config=TrainConfig(epochs=8, batch_size=32, lr=3e-3, seed=0, eval_n=0))
    return model.eval()
