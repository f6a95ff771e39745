""".npz files from anywhere: never unpickled, never numpy's advice to unpickle, labels checked."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hardened.data.files import load_npz, read_npz
from hardened.errors import DataError, InputError


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 4, 4), dtype=np.float32)


@pytest.mark.parametrize("kind", ["random", "object", "npy", "zip", "folder", "pickle"])
def test_unreadable_npz_is_a_data_error_without_pickle_advice(tmp_path, kind):
    path = tmp_path / "f.npz"
    if kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(300))
    elif kind == "object":
        np.savez(path, x=np.array([1, "a", None], dtype=object), y=np.arange(3))
    elif kind == "npy":
        with open(path, "wb") as handle:
            np.save(handle, np.zeros(3))
    elif kind == "zip":
        path.write_bytes(b"PK\x03\x04" + os.urandom(64))
    elif kind == "folder":
        path.mkdir()
    else:
        import pickle

        path.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(DataError) as info:
        load_npz(path)
    text = str(info.value)
    assert "allow_pickle" not in text and "unsafely" not in text and str(path) in text
    with pytest.raises(InputError):
        read_npz(path, ("x",), error=InputError)


def test_a_huge_label_is_refused_before_training(tmp_path):
    y = np.random.default_rng(0).integers(0, 10, 20)
    y[0] = 10**6
    np.savez(tmp_path / "big.npz", x=_images(20), y=y)
    with pytest.raises(DataError, match="over the limit of 10,000"):
        load_npz(tmp_path / "big.npz")


@pytest.mark.parametrize("seed", range(5))
def test_labels_must_cover_0_to_k_minus_1(tmp_path, seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 12))
    y = np.concatenate([np.arange(k), rng.integers(0, k, 10)])
    np.savez(tmp_path / "ok.npz", x=_images(len(y)), y=y)
    assert load_npz(tmp_path / "ok.npz").num_classes == k
    gap = int(rng.integers(0, k - 1))  # drop one class below the largest label
    kept = y[y != gap]
    np.savez(tmp_path / "gap.npz", x=_images(len(kept)), y=kept)
    with pytest.raises(DataError, match=f"never occur \\({gap}"):
        load_npz(tmp_path / "gap.npz")
    names = np.array([f"c{i}" for i in range(k)])
    np.savez(tmp_path / "named.npz", x=_images(len(kept)), y=kept, classes=names)
    assert load_npz(tmp_path / "named.npz").classes == tuple(names)  # explicit count: gaps allowed
    np.savez(tmp_path / "short.npz", x=_images(len(y)), y=y, classes=names[:-1])
    with pytest.raises(DataError, match="'classes' names"):
        load_npz(tmp_path / "short.npz")


def test_negative_labels_and_too_many_class_names(tmp_path):
    np.savez(tmp_path / "neg.npz", x=_images(3), y=np.array([0, -1, 1]))
    with pytest.raises(DataError, match="0..K-1"):
        load_npz(tmp_path / "neg.npz")
    np.savez(tmp_path / "many.npz", x=_images(2), y=np.array([0, 1]), classes=np.arange(10_001))
    with pytest.raises(DataError, match="over the limit"):
        load_npz(tmp_path / "many.npz")
