"""Untrusted model files: sidecars checked against their schema before anything is allocated,
and ``package.module:factory`` strings checked before they are called."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch
from torch import nn

from hardened.errors import ConfigError, ModelLoadError
from hardened.models import build_model, load_model, save_model
from hardened.models.schema import MAX_PARAMETERS, count_parameters

KWARGS = {"input_shape": [1, 8, 8], "num_classes": 3, "hidden": [16]}


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp", **KWARGS)
    path = save_model(model, tmp_path / "m.safetensors", arch="mlp", arch_kwargs=KWARGS, input_shape=(1, 8, 8))
    return path


def _edit(path, change) -> None:
    sidecar = path.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(change(record)))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: [r], "must hold a JSON object"),
        (lambda r: r | {"arch_kwargs": "lenet"}, "must be a JSON object"),
        (lambda r: r | {"input_shape": "abc"}, "'input_shape' must be"),
        (lambda r: r | {"arch": "os"}, "unknown architecture"),
        (lambda r: r | {"arch": None}, "'arch' must be"),
        (lambda r: r | {"arch_kwargs": {**KWARGS, "hidden": [10_000_000, 10_000_000]}}, "'hidden' must be"),
        (lambda r: r | {"arch_kwargs": {**KWARGS, "hidden": [60_000, 60_000]}}, "parameters, over the limit"),
        (lambda r: r | {"arch": "lenet", "arch_kwargs": {**KWARGS, "hidden": 2**31}}, "'hidden' must be"),
        (lambda r: r | {"arch_kwargs": {**KWARGS, "num_classes": True}}, "'num_classes' must be"),
        (lambda r: r | {"arch_kwargs": {**KWARGS, "mean": [0.1, 0.2]}}, "'mean' must be"),
        (lambda r: r | {"arch_kwargs": {**KWARGS, "std": [0.0]}}, "'std' must be"),
        (lambda r: r | {"arch_kwargs": {**KWARGS, "evil": 1}}, "takes no argument"),
        (lambda r: r | {"classes": "abc"}, "'classes' must be"),
        (lambda r: r | {"classes": ["a", "b"]}, "2 class names for a model with 3"),
        (lambda r: r | {"format_version": 99}, "'format_version' must be"),
        (lambda r: r | {"weights_sha256": 5}, "'weights_sha256' must be"),
    ],
)
def test_malformed_sidecars_are_refused_quickly(saved, change, message):
    _edit(saved, change)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=message):
        load_model(saved)
    assert time.perf_counter() - start < 2.0  # refused before allocating anything large


def test_lenet_with_huge_input_is_refused_before_the_probe_forward():
    with pytest.raises(ConfigError, match="'input_shape' must be"):
        build_model("lenet", input_shape=[1, 100_000, 100_000])
    with pytest.raises(ConfigError, match="cannot be built"):
        build_model("lenet", input_shape=[1, 2, 2])  # pooled away to nothing


@pytest.mark.parametrize(
    "arch, kwargs",
    [("mlp", {"input_shape": (1, 8, 8), "num_classes": 3, "hidden": [7, 5]}),
     ("lenet", {"input_shape": (1, 28, 28), "num_classes": 10, "channels": [4, 6], "hidden": 9}),
     ("resnet_small", {"input_shape": (3, 32, 32), "num_classes": 10, "width": 4, "blocks": 2})],
)
def test_meta_parameter_count_equals_the_real_one(arch, kwargs):
    real = sum(p.numel() for p in build_model(arch, **kwargs).parameters())
    assert count_parameters(arch, dict(kwargs)) == real


def test_meta_count_uses_no_random_numbers():
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    count_parameters("mlp", {"hidden": [4096, 4096]})
    assert torch.equal(torch.rand(3), expected)


def test_parameter_bound_closed_form():
    # mlp on 1x28x28 with one hidden layer h: (784 + 1) h + (h + 1) 10 parameters
    h = 1000
    assert count_parameters("mlp", {"hidden": [h]}) == 785 * h + (h + 1) * 10
    assert count_parameters("mlp", {"hidden": [65_536, 65_536]}) > MAX_PARAMETERS
    with pytest.raises(ConfigError, match="over the limit"):
        build_model("mlp", hidden=[65_536, 65_536])


def test_interrupted_save_never_leaves_weights_without_a_sidecar(tmp_path, monkeypatch):
    import hardened._util.atomic as atomic

    order: list[str] = []
    real_replace = atomic.os.replace

    def replace(src, dst):
        order.append(str(dst).rsplit(".", 1)[-1])
        if str(dst).endswith(".safetensors"):
            raise KeyboardInterrupt  # the kill lands between the two renames
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_model(build_model("mlp", **KWARGS), tmp_path / "m.safetensors", arch="mlp", arch_kwargs=KWARGS)
    assert order == ["json", "safetensors"]
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert not (tmp_path / "m.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    # a second save, killed again, over an older model: the digest tells, and points to --resume
    save_model(build_model("mlp", **KWARGS), tmp_path / "m.safetensors", arch="mlp", arch_kwargs=KWARGS)
    torch.manual_seed(5)
    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_model(build_model("mlp", **KWARGS), tmp_path / "m.safetensors", arch="mlp", arch_kwargs=KWARGS)
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    with pytest.raises(ModelLoadError, match="--resume"):
        load_model(tmp_path / "m.safetensors")


def test_missing_sidecar_points_to_resume(saved):
    saved.with_suffix(".json").unlink()
    with pytest.raises(ModelLoadError, match="--resume"):
        load_model(saved)


# ---- factories ----------------------------------------------------------------------------


@pytest.fixture()
def factories(tmp_path, monkeypatch):
    (tmp_path / "hardened_test_factories.py").write_text(
        "import torch\n"
        "def good():\n    return torch.nn.Linear(2, 2)\n"
        "def needs_arg(width):\n    return torch.nn.Linear(width, 2)\n"
        "def not_a_module():\n    return 42\n"
        "def raises():\n    raise KeyError('boom')\n"
        "class Net(torch.nn.Module):\n    def forward(self, x):\n        return x\n"
        "VALUE = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "hardened_test_factories"
    sys.modules.pop("hardened_test_factories", None)


def test_a_good_factory_and_a_module_class_load(factories):
    assert isinstance(load_model(f"{factories}:good").model, nn.Linear)
    assert type(load_model(f"{factories}:Net").model).__name__ == "Net"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("json:dumps", "cannot be called without arguments"),
        ("os:abort", "built-in function"),
        ("os:path", "not a function returning an nn.Module"),
        ("math:pi", "not a function returning an nn.Module"),
        ("collections:OrderedDict", "not an nn.Module subclass"),
        ("hardened_test_factories:needs_arg", "cannot be called without arguments"),
        ("hardened_test_factories:not_a_module", "returned int, not an nn.Module"),
        ("hardened_test_factories:raises", "failed: KeyError"),
        ("hardened_test_factories:VALUE", "not a function"),
        ("hardened_test_factories:missing", "cannot import factory"),
        ("no_such_module_xyz:f", "cannot import factory"),
        ("a b:c", "is not a factory reference"),
        ("os:", "is not a factory reference"),
    ],
)
def test_bad_factories_are_one_model_load_error(factories, spec, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(spec)


@pytest.mark.parametrize("seed", range(6))
def test_lenet_dense_input_size_matches_a_real_forward(seed):
    """LeNet sizes its first dense layer as c2·⌊H/4⌋·⌊W/4⌋ (no probe pass): check it against the
    convolutional part's real output on random image sizes."""
    rng = torch.Generator().manual_seed(seed)
    c, h, w = (int(torch.randint(lo, hi, (1,), generator=rng)) for lo, hi in ((1, 4), (4, 40), (4, 40)))
    model = build_model("lenet", input_shape=[c, h, w], channels=[3, 5], hidden=7, num_classes=2)
    dense = next(layer for layer in model if isinstance(layer, nn.Linear))
    convolutional = nn.Sequential(*list(model)[: list(model).index(dense)])
    with torch.no_grad():
        assert convolutional(torch.zeros(1, c, h, w)).shape[1] == dense.in_features
        assert model(torch.rand(2, c, h, w)).shape == (2, 2)
