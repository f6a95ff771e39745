"""Data: IDX round trips, MNIST-style folders, downloads with sha256, user files, splits."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from hardened.data import load_dataset, load_splits, read_idx, stratified_split, write_idx
from hardened.data.download import IdxSource, download_idx_files
from hardened.errors import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def _write_mnist_like(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", n_train), ("t10k", n_test)):
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", (np.arange(n) % 10).astype(np.uint8))


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_round_trip(tmp_path, name):
    array = np.random.default_rng(1).integers(0, 256, (4, 5, 6), dtype=np.uint8)
    write_idx(tmp_path / name, array)
    assert np.array_equal(read_idx(tmp_path / name), array)
    raw = (tmp_path / name).read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")


def test_idx_header_is_the_mnist_layout(tmp_path):
    write_idx(tmp_path / "l.idx", np.array([7, 2, 1], dtype=np.uint8))
    assert (tmp_path / "l.idx").read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])


def test_truncated_and_foreign_files_are_rejected(tmp_path):
    write_idx(tmp_path / "x.idx", np.zeros((3, 4, 4), dtype=np.uint8))
    data = (tmp_path / "x.idx").read_bytes()
    (tmp_path / "cut.idx").write_bytes(data[:-5])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "cut.idx")
    (tmp_path / "png.idx").write_bytes(b"\x89PNG....")
    with pytest.raises(DataError, match="not an IDX"):
        read_idx(tmp_path / "png.idx")


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_a_folder_keeps_the_official_split(tmp_path, gz):
    _write_mnist_like(tmp_path / "mnist", gz=gz)
    splits = load_splits("mnist", data_dir=tmp_path)
    assert splits.train.x.shape == (30, 1, 28, 28) and splits.test.x.shape == (10, 1, 28, 28)
    assert splits.train.x.dtype == torch.float32 and float(splits.train.x.max()) <= 1.0
    assert splits.test.y.tolist() == list(range(10))
    assert len(load_dataset("mnist:train", data_dir=tmp_path)) == 30


def test_missing_files_name_the_folder_and_files(tmp_path):
    with pytest.raises(DataError) as error:
        load_splits("fashion-mnist", data_dir=tmp_path)
    assert str(tmp_path) in str(error.value) and "t10k-images-idx3-ubyte.gz" in str(error.value)
    assert "--download" in str(error.value)


def test_download_checks_sha256_from_a_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    _write_mnist_like(mirror)
    digests = {f: hashlib.sha256((mirror / f).read_bytes()).hexdigest() for f in FILES.values()}
    source = IdxSource("toy", dict(FILES), digests, (mirror.as_uri() + "/",), tuple("0123456789"))
    paths = download_idx_files(source, tmp_path / "cache")
    assert paths["test_labels"].read_bytes() == (mirror / FILES["test_labels"]).read_bytes()
    bad = IdxSource("toy2", dict(FILES), {f: "0" * 64 for f in FILES.values()}, source.mirrors, source.classes)
    with pytest.raises(DataError, match="sha256"):
        download_idx_files(bad, tmp_path / "cache2")
    assert not (tmp_path / "cache2" / "toy2" / FILES["train_images"]).exists()


def test_npz_uint8_and_channels_last(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (12, 6, 6, 3), dtype=np.uint8)
    y = np.arange(12) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y, classes=np.array(["a", "b", "c", "d"]))
    data = load_dataset(str(tmp_path / "d.npz"), split="all")
    assert data.x.shape == (12, 3, 6, 6) and data.classes == ("a", "b", "c", "d")
    assert torch.allclose(data.x[0, 1], torch.from_numpy(x[0, :, :, 1] / 255.0).float())
    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(DataError, match="'x' and 'y'"):
        load_dataset(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "range.npz", x=np.full((2, 4, 4), 2.0), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_dataset(str(tmp_path / "range.npz"))


def test_image_folder(tmp_path):
    from PIL import Image

    for name, value in (("cat", 30), ("dog", 200)):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((6, 7), value + i, dtype=np.uint8)).save(tmp_path / "pets" / name / f"{i}.png")
    data = load_dataset(str(tmp_path / "pets"), split="all")
    assert data.classes == ("cat", "dog") and data.x.shape == (10, 1, 6, 7)
    assert sorted(data.y.tolist()) == [0] * 5 + [1] * 5
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="sub-folders"):
        load_dataset(str(tmp_path / "empty"))


def test_split_is_seeded_stratified_and_disjoint():
    data = load_dataset("digits", split="all")
    a, b = stratified_split(data, 0.25, seed=3), stratified_split(data, 0.25, seed=3)
    assert torch.equal(a.train.y, b.train.y) and torch.equal(a.test.x, b.test.x)
    c = stratified_split(data, 0.25, seed=4)
    assert not torch.equal(a.test.y, c.test.y)
    assert len(a.train) + len(a.test) == len(data)
    counts = torch.bincount(a.test.y, minlength=10).float() / torch.bincount(data.y, minlength=10).float()
    assert float((counts - 0.25).abs().max()) < 0.02
    train_rows = {tuple(r) for r in a.train.x.flatten(1).numpy().round(4).tolist()}
    test_rows = [tuple(r) for r in a.test.x.flatten(1).numpy().round(4).tolist()]
    duplicates_in_source = len(data) - len({tuple(r) for r in data.x.flatten(1).numpy().round(4).tolist()})
    assert sum(r in train_rows for r in test_rows) <= duplicates_in_source


def test_builtin_mnist_5k_is_real_mnist():
    data = load_dataset("mnist-5k", split="all")
    assert data.x.shape == (5000, 1, 28, 28) and data.num_classes == 10
    assert torch.bincount(data.y).tolist() == [500] * 10
    # MNIST's mean pixel value is about 0.13
    assert 0.11 < float(data.x.mean()) < 0.15


def test_unknown_data_spec_lists_the_choices():
    with pytest.raises(DataError, match="mnist-5k"):
        load_splits("imagenet")
    with pytest.raises(DataError, match="split"):
        load_dataset("digits", split="validation")


def test_gzip_of_raw_is_read_the_same(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.idx", array)
    (tmp_path / "b.idx.gz").write_bytes(gzip.compress((tmp_path / "a.idx").read_bytes()))
    assert np.array_equal(read_idx(tmp_path / "b.idx.gz"), array)
