"""Routing one flat set of settings to each training method (hardened.train.options)."""

from __future__ import annotations

import inspect

import pytest

from hardened.errors import ConfigError
from hardened.train import METHODS, make_method
from hardened.train.options import MethodSettings, collapse_guard, method_options

SETTINGS = MethodSettings(eps=0.1, norm="l2", steps=3, step_size=0.05, random_start=False, beta=2.0,
                          sigma=0.4, adversarial_lr_scale=0.3, guard=collapse_guard("report", 0.2, 5),
                          eps_warmup=0.1)


@pytest.mark.parametrize("method", METHODS)
def test_every_routed_option_is_one_the_method_takes_and_reaches_it(method):
    options = method_options(method, SETTINGS)
    accepted = set(inspect.signature(METHODS.get(method)).parameters)
    assert set(options) <= accepted, set(options) - accepted
    extra = {"ensemble": {"sources": []}, "semi-supervised": {"pool": None}}.get(method, {})
    if method in ("ensemble", "semi-supervised"):
        return  # they also need modules / images, built by the CLI; the keyword check above holds
    built = make_method(method, **options, **extra)
    for key, value in options.items():
        if value is not None and hasattr(built, key):
            assert getattr(built, key) == value, key


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("standard", "noise")])
def test_adversarial_methods_need_eps(method):
    with pytest.raises(ConfigError, match="--eps"):
        method_options(method, MethodSettings())


def test_unknown_method_and_guard_mode():
    with pytest.raises(ConfigError, match="unknown training method"):
        method_options("nope", SETTINGS)
    with pytest.raises(ConfigError, match="stop, lower, report, off"):
        collapse_guard("sometimes", 0.3, 0)
    assert collapse_guard("off", 0.3, 0) is None
