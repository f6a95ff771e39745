"""The one sha256 helper, tensor/model digest, seed mixer, device lookup and reproducible files."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from hardened._util.device import model_device
from hardened._util.digests import model_digest, sha256_hex, tensor_digest
from hardened._util.seeding import mix_seed
from hardened._util.tensorfile import digest_matches, save_tensors
from hardened.errors import ModelLoadError
from hardened.models import build_model, load_model, save_model

DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool]


def test_sha256_hex_of_bytes_and_of_a_file_equal_hashlib(tmp_path) -> None:
    data = bytes(range(256)) * 9000  # crosses the 1 MiB read chunk
    (tmp_path / "f").write_bytes(data)
    assert sha256_hex(data) == sha256_hex(tmp_path / "f") == hashlib.sha256(data).hexdigest()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 5), st.lists(st.integers(0, 3), min_size=1, max_size=3), st.integers(0, 2**31))
def test_tensor_digest_is_a_function_of_names_dtypes_shapes_and_bytes(kind, shape, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensor = (torch.rand(shape, generator=gen) * 200).to(DTYPES[kind])
    base = tensor_digest({"a": tensor, "b": tensor.clone()})
    # layout, insertion order and copies do not matter
    assert tensor_digest({"b": tensor.clone(), "a": tensor}) == base
    if tensor.dim() >= 2:
        strided = tensor.transpose(0, 1).contiguous().transpose(0, 1)
        assert tensor_digest({"a": strided, "b": tensor}) == base
    # names, shapes and dtypes do
    assert tensor_digest({"a": tensor, "c": tensor}) != base
    assert tensor_digest({"a": tensor.reshape(1, *tensor.shape), "b": tensor}) != base
    other = torch.float32 if tensor.dtype != torch.float32 else torch.float64
    assert tensor_digest({"a": tensor.to(other), "b": tensor}) != base


def test_tensor_digest_changes_with_one_value() -> None:
    x = torch.zeros(10)
    y = x.clone()
    y[7] = 1e-30
    assert tensor_digest({"x": x}) != tensor_digest({"x": y})


def test_model_digest_covers_parameters_and_buffers() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    before = model_digest(model)
    with torch.no_grad():
        model[1].running_mean.add_(1.0)
    assert model_digest(model) != before
    assert model_digest(model) == tensor_digest(model.state_dict())


def test_mix_seed_is_pure_and_63_bit() -> None:
    values = {mix_seed(s, a, b) for s in range(3) for a in range(3) for b in range(20)}
    assert len(values) == 180 and all(0 <= v < 2**63 for v in values)
    assert mix_seed(5, 1, 2) == mix_seed(5, 1, 2) != mix_seed(5, 2, 1)


def test_model_device_parameter_buffer_or_default() -> None:
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(nn.BatchNorm1d(2).requires_grad_(False)) == torch.device("cpu")
    assert model_device(nn.Identity(), default="meta") == torch.device("meta")
    assert model_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")


def test_save_tensors_is_byte_reproducible_and_loads(tmp_path) -> None:
    tensors = {f"layer{i}.weight": torch.randn(3, i + 1) for i in range(5)} | {"count": torch.arange(4)}
    metadata = {f"key{i}": str(i) for i in range(8)}
    paths = [tmp_path / f"{i}.safetensors" for i in range(6)]
    digests = {save_tensors(tensors, p, metadata) for p in paths}
    assert len({p.read_bytes() for p in paths}) == 1 and digests == {tensor_digest(tensors)}
    loaded = load_file(str(paths[0]))
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    size = int.from_bytes(paths[0].read_bytes()[:8], "little")
    header = json.loads(paths[0].read_bytes()[8 : 8 + size])
    assert list(header["__metadata__"]) == sorted(metadata) and size % 8 == 0


def test_digest_matches_tensors_or_legacy_file_bytes(tmp_path) -> None:
    tensors = {"w": torch.randn(4, 4)}
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path))
    assert digest_matches(tensors, path, tensor_digest(tensors))
    assert digest_matches(tensors, path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert not digest_matches(tensors, path, "0" * 64)


def test_two_saved_models_are_byte_identical_and_their_sidecars_too(tmp_path) -> None:
    torch.manual_seed(0)
    kwargs = {"input_shape": [1, 8, 8], "num_classes": 3}
    model = build_model("mlp", **kwargs)
    files = []
    for i in range(6):
        path = save_model(model, tmp_path / f"m{i}.safetensors", arch="mlp", arch_kwargs=kwargs,
                          input_shape=(1, 8, 8), training={"epochs": 1, "seed": 0})
        files.append((path.read_bytes(), path.with_suffix(".json").read_bytes()))
    assert len(set(files)) == 1
    sidecar = json.loads(files[0][1])
    assert sidecar["weights_sha256"] == model_digest(model)


def test_a_model_saved_by_the_old_code_still_loads_and_corruption_is_caught(tmp_path) -> None:
    kwargs = {"input_shape": [1, 8, 8], "num_classes": 3}
    model = build_model("mlp", **kwargs)
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"format": "hardened", "arch": "mlp"})
    sidecar = {"format_version": 1, "arch": "mlp", "arch_kwargs": kwargs, "input_shape": [1, 8, 8],
               "classes": None, "training": {}, "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    loaded = load_model(path).model
    assert model_digest(loaded) == model_digest(model)
    sidecar["weights_sha256"] = "f" * 64
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(path)
