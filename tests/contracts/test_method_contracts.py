"""Every registered training method runs one tiny step that changes the model."""

from __future__ import annotations

import pytest

from contract_checks import build_method, check_method, tiny_batch
from hardened.train.methods import METHODS
from helpers import tiny_cnn

#: inputs some methods require (not a list of what is tested: every name is)
REQUIRED = {
    "noise": lambda: {"sigma": 0.25},
    "ensemble": lambda: {"sources": [tiny_cnn(seed=1)]},
    "semi-supervised": lambda: {"pool": tiny_batch(seed=5)[0]},
}


@pytest.mark.parametrize("name", METHODS.names())
def test_method_keeps_the_contract(name: str) -> None:
    method = build_method(name, **REQUIRED.get(name, dict)())
    assert method.name == name
    check_method(method, tiny_cnn())
