"""Fixtures for the evaluation tests: the toy defences of ``masking_toys``."""

from __future__ import annotations

import pytest
from torch import nn

from hardened.data import Dataset
from helpers import blob_data
from masking_toys import Quantise, UniformNoise, trained_cnn


@pytest.fixture(scope="session")
def toy_net() -> nn.Module:
    return trained_cnn(0)


@pytest.fixture(scope="session")
def toy_test() -> Dataset:
    return blob_data(n=90, seed=5)


@pytest.fixture(scope="session")
def defences(toy_net: nn.Module) -> dict[str, nn.Module]:
    """The undefended net and its masked versions, all sharing its weights."""
    return {
        "plain": toy_net,
        "quantised": nn.Sequential(Quantise(), toy_net).eval(),
        "randomized": nn.Sequential(UniformNoise(0.1), toy_net).eval(),
        "noisy-quantised": nn.Sequential(UniformNoise(0.1), Quantise(), toy_net).eval(),
    }
