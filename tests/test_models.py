"""Models: architectures, Normalize inside, safetensors + sidecar round trip, safe loading."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hardened.errors import ConfigError, ModelLoadError
from hardened.models import Normalize, build_model, load_model, save_model


@pytest.mark.parametrize(
    "arch, shape",
    [("mlp", (1, 28, 28)), ("lenet", (1, 28, 28)), ("lenet", (1, 8, 8)), ("resnet_small", (3, 32, 32))],
)
def test_save_load_round_trip_gives_identical_outputs(tmp_path, arch, shape):
    torch.manual_seed(0)
    kwargs = {"input_shape": list(shape), "num_classes": 4, "mean": [0.2] * shape[0], "std": [0.3] * shape[0]}
    model = build_model(arch, **kwargs).eval()
    path = save_model(model, tmp_path / "m.safetensors", arch=arch, arch_kwargs=kwargs,
                      input_shape=shape, classes=list("abcd"), training={"epochs": 1})
    loaded = load_model(path)
    x = torch.rand(3, *shape)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
    assert loaded.info.input_shape == shape and loaded.info.classes == tuple("abcd")
    assert loaded.info.training == {"epochs": 1}
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar["arch"] == arch and len(sidecar["weights_sha256"]) == 64


def test_normalisation_lives_inside_the_model():
    model = build_model("lenet", input_shape=(1, 28, 28), mean=[0.5], std=[0.25])
    assert isinstance(model[0], Normalize)
    x = torch.full((1, 1, 2, 2), 0.75)
    assert torch.allclose(model[0](x), torch.ones_like(x))


def test_corrupt_weights_are_detected(tmp_path):
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=3)
    path = save_model(model, tmp_path / "m.safetensors", arch="mlp",
                      arch_kwargs={"input_shape": [1, 8, 8], "num_classes": 3})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(path)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "m.h5").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unknown model file type"):
        load_model(tmp_path / "m.h5")
    (tmp_path / "bad.pt").write_bytes(b"not torchscript")
    with pytest.raises(ModelLoadError, match="TorchScript"):
        load_model(tmp_path / "bad.pt")


def test_torchscript_model(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    torch.jit.script(model).save(str(tmp_path / "m.pt"))
    loaded = load_model(tmp_path / "m.pt")
    x = torch.rand(2, 1, 4, 4)
    assert torch.allclose(loaded.model(x), model(x))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_factory_with_weights_and_refusal_to_unpickle(tmp_path, monkeypatch):
    (tmp_path / "my_factory_mod.py").write_text(
        "from torch import nn\n"
        "def make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    source = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    torch.save(source.state_dict(), tmp_path / "w.pth")
    loaded = load_model("my_factory_mod:make", weights=tmp_path / "w.pth")
    x = torch.rand(2, 1, 4, 4)
    assert torch.allclose(loaded.model(x), source(x))
    torch.save({"weight": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ModelLoadError, match="refused to unpickle|cannot read"):
        load_model("my_factory_mod:make", weights=tmp_path / "evil.pth")
    with pytest.raises(ModelLoadError, match="cannot import"):
        load_model("no_such_module_xyz:make")
    torch.save({"0.weight": torch.zeros(2, 2)}, tmp_path / "shape.pth")
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model("my_factory_mod:make", weights=tmp_path / "shape.pth")


def test_unknown_architecture():
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_model("vgg")


def test_a_state_dict_mismatch_lists_missing_unexpected_and_reshaped_keys(tmp_path):
    kwargs = {"input_shape": [1, 8, 8], "num_classes": 3, "hidden": [16]}
    path = save_model(build_model("mlp", **kwargs), tmp_path / "m.safetensors", arch="mlp", arch_kwargs=kwargs)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    sidecar["arch_kwargs"]["hidden"] = [16, 12]
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message
    assert "missing keys (" in message and "shape mismatches (" in message and "4.weight 3×16 in the file vs 12×16" in message
    assert "unexpected keys" not in message


def test_state_mismatch_summary_counts_and_truncates():
    from hardened.models.io import state_mismatch

    expected = {f"k{i}": torch.zeros(2) for i in range(8)} | {"w": torch.zeros(3, 4)}
    given = {"w": torch.zeros(4, 3), "extra": torch.zeros(1)}
    summary = state_mismatch(expected, given, show=3)
    assert summary.startswith("8 missing keys (k0, k1, k2 and 5 more); 1 unexpected keys (extra); ")
    assert summary.endswith("1 shape mismatches (w 4×3 in the file vs 3×4)")


def test_resnet18_round_trips_through_safetensors(tmp_path):
    from hardened.models import resnet18

    torch.manual_seed(0)
    model = resnet18(width=4, num_classes=3).eval()
    assert sum(p.numel() for p in resnet18().parameters()) == 11_173_962  # the CIFAR ResNet-18
    path = save_model(model, tmp_path / "r18.safetensors", arch="resnet18", arch_kwargs={"width": 4, "num_classes": 3})
    loaded = load_model(path).model
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
