"""Fuzz the JSON a user may be handed (model sidecars, guard.json): loading either succeeds or
raises a ``HardenedError``, never another exception, and never imports a module it names."""

from __future__ import annotations

import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardened.errors import HardenedError
from hardened.guard import GuardedClassifier, make_score
from hardened.models import build_model, load_model, save_model

SENTINEL = "hardened_fuzz_sentinel"
ARCH = {"input_shape": [1, 8, 8], "num_classes": 3, "channels": [2, 3], "hidden": 5}

references = st.sampled_from([f"{SENTINEL}:f", "this:s", "os:abort", "model.pt", "../x.safetensors",
                              "/etc/passwd", "classifier.safetensors", "lenet", "mlp"])
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), references,
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


ODD = [None, True, -1, 0, 2**31, 2**63, 10**7, 1.5, -0.0, 1e308, float("nan"), float("inf"), "", "abc",
       [], {}, [1, 2], "os:abort", "this:s", f"{SENTINEL}:f"]
odd = st.one_of(st.sampled_from(ODD), values)


def _slots(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in a JSON tree, depth first."""
    found: list[tuple[Any, Any]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append((node, key))
        found += _slots(child)
    return found


@st.composite
def mutated(draw: Any, base: dict[str, Any]) -> Any:
    """``base`` with one to three fields anywhere in it replaced (by odd values), dropped, or
    given an extra key; now and then not an object at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(values)
    record = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(record)
        container, key = draw(st.sampled_from(slots))
        action = draw(st.integers(0, 9))
        if action == 0 and isinstance(container, dict):
            container.pop(key, None)
        elif action == 1 and isinstance(container, dict):
            extra = draw(st.sampled_from(["evil", "hidden", "reference", "file", "arch"]))
            container[extra] = copy.deepcopy(draw(odd))  # ODD holds shared lists
        else:
            container[key] = copy.deepcopy(draw(odd))  # ODD holds shared lists
    return record


@pytest.fixture(scope="module")
def sentinel_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sentinel")
    (folder / f"{SENTINEL}.py").write_text("import torch\ndef f():\n    return torch.nn.Linear(1, 1)\n")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("lenet", **ARCH)
    return save_model(model, tmp_path_factory.mktemp("m") / "m.safetensors", arch="lenet", arch_kwargs=ARCH,
                      input_shape=(1, 8, 8), classes=["a", "b", "c"])


@pytest.fixture(scope="module")
def guard_folder(model_file, tmp_path_factory):
    loaded = load_model(model_file)
    score = make_score("energy", loaded.model).fit(torch.rand(64, 1, 8, 8))
    guard = GuardedClassifier(loaded.model, score, model_ref=str(model_file), model_info=loaded.info)
    guard.calibrate(torch.rand(40, 1, 8, 8), fpr=0.1)
    return guard.save(tmp_path_factory.mktemp("g") / "guard")


def _check_no_import(before: set[str]) -> None:
    assert SENTINEL not in sys.modules
    assert "this" not in set(sys.modules) - before


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _base(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@FUZZ
@given(data=st.data())
def test_fuzzed_sidecars_load_or_raise_a_hardened_error(model_file, sentinel_path, data):
    record = data.draw(mutated(_base(model_file.with_suffix(".json"))))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.safetensors"
        shutil.copy(model_file, path)
        path.with_suffix(".json").write_text(json.dumps(record))
        before = set(sys.modules)
        try:
            load_model(path)
        except HardenedError:
            pass
        _check_no_import(before)


@FUZZ
@given(data=st.data())
def test_fuzzed_guard_records_load_or_raise_a_hardened_error(guard_folder, sentinel_path, data):
    record = data.draw(mutated(_base(guard_folder / "guard.json")))
    with tempfile.TemporaryDirectory() as folder:
        copy_ = Path(folder) / "guard"
        shutil.copytree(guard_folder, copy_)
        (copy_ / "guard.json").write_text(json.dumps(record))
        before = set(sys.modules)
        try:
            GuardedClassifier.load(copy_)
        except HardenedError:
            pass
        _check_no_import(before)
