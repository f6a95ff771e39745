"""Shared fixtures; torch limited to one thread per test worker. Helpers live in helpers.py."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch
from torch import nn

from hardened.data import Dataset
from helpers import TINY_BUDGET, blob_data, tiny_audit_splits, tiny_cnn

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def blobs() -> Dataset:
    return blob_data()


@pytest.fixture
def cnn() -> nn.Module:
    return tiny_cnn()


@pytest.fixture(scope="session")
def tiny_audit(tmp_path_factory):
    """One full audit of a tiny CNN on blob images with the tiny budget (shared by tests)."""
    from hardened.audit import run_audit

    model = tiny_cnn(seed=5)
    before = [p.detach().clone() for p in model.parameters()]
    folder = tmp_path_factory.mktemp("audit") / "report"
    result = run_audit(model, tiny_audit_splits(), out_dir=folder, budget=TINY_BUDGET, seed=3)
    return result, folder, model, before


@pytest.fixture
def torchvision_free(monkeypatch):
    """onnx2torch imports torchvision for its NMS and RoIAlign converters only. The CPU torch
    used here has no matching torchvision build (PyPI's pulls another torch), so where none
    imports, a bare stand-in lets onnx2torch import; a classifier never reaches those ops."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        fake = types.ModuleType("torchvision")
        fake.ops = types.ModuleType("torchvision.ops")  # type: ignore[attr-defined]
        fake.ops.roi_align = None  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "torchvision", fake)
        monkeypatch.setitem(sys.modules, "torchvision.ops", fake.ops)  # type: ignore[attr-defined]
