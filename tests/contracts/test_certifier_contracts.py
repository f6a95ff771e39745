"""Every registered certifier gives sound (or repeatable) radii in the norms it declares."""

from __future__ import annotations

import inspect

import pytest
import torch

from contract_checks import check_certifier, tiny_batch
from hardened.certify import CERTIFIERS
from helpers import tiny_cnn

#: options per certifier (speed, and IBP's radius); one missing here is built with defaults
OPTIONS = {"smoothing": {"n0": 20, "n": 200, "sigma": 0.25}, "ibp": {"eps": 0.01}}


@pytest.mark.parametrize(
    ("name", "norm"), [(n, norm) for n in CERTIFIERS.names() for norm in CERTIFIERS.get(n).norms]
)
def test_certifier_keeps_the_contract(name: str, norm: str) -> None:
    options = dict(OPTIONS.get(name, {}))
    if "norm" in inspect.signature(CERTIFIERS.get(name)).parameters:
        options["norm"] = norm
    x, y = tiny_batch()
    model = tiny_cnn()
    with torch.no_grad():
        y = model(x).argmax(1)  # certify the model's own answers, so some radii are positive
    y[0] = (y[0] + 1) % 3  # and one wrong label, whose radius must be 0
    check_certifier(CERTIFIERS.make(name, **options), model, x, y)
