"""CIFAR-10/100 (binary records) and SVHN (.mat) loaders against files written here in the
official formats; folders of large RGB images; foolbox's real CIFAR-10 samples."""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from hardened.data import load_dataset, load_image_folder, load_splits
from hardened.data.cifar import CIFAR10_CLASSES, load_cifar
from hardened.data.svhn import load_svhn
from hardened.errors import DataError


def _records(rng: np.random.Generator, n: int, label_bytes: int, classes: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """``n`` CIFAR records: label byte(s) then the R, G and B planes of a 32×32 image."""
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, classes, n).astype(np.uint8)
    heads = [rng.integers(0, 20, n).astype(np.uint8)] if label_bytes == 2 else []  # coarse labels
    rows = np.concatenate([*[h[:, None] for h in heads], labels[:, None], images.reshape(n, -1)], axis=1)
    return rows.tobytes(), images, labels.astype(np.int64)


def _write_tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


@pytest.mark.parametrize("seed", [0, 1])
def test_cifar10_archive_reads_every_record_exactly(tmp_path, seed):
    rng = np.random.default_rng(seed)
    files, expected = {}, {"train": [], "test": []}
    for name, part in [*((f"data_batch_{i}.bin", "train") for i in range(1, 6)), ("test_batch.bin", "test")]:
        raw, images, labels = _records(rng, 3 + int(rng.integers(0, 3)), 1, 10)
        files[f"cifar-10-batches-bin/{name}"] = raw
        expected[part].append((images, labels))
    files["cifar-10-batches-bin/batches.meta.txt"] = "\n".join(CIFAR10_CLASSES).encode()
    (tmp_path / "cifar10").mkdir()
    _write_tar(tmp_path / "cifar10" / "cifar-10-binary.tar.gz", files)
    splits = load_splits("cifar-10", data_dir=tmp_path)
    for part, data in (("train", splits.train), ("test", splits.test)):
        images = np.concatenate([i for i, _ in expected[part]])
        labels = np.concatenate([b for _, b in expected[part]])
        assert data.x.dtype == torch.float32 and data.x.shape == (len(labels), 3, 32, 32)
        torch.testing.assert_close(data.x, torch.from_numpy(images).float() / 255, rtol=0, atol=0)
        assert torch.equal(data.y, torch.from_numpy(labels))
        assert data.classes == CIFAR10_CLASSES
    everything = load_dataset("cifar10", "all", data_dir=tmp_path)
    assert len(everything) == len(splits.train) + len(splits.test)


def test_cifar_extracted_folder_and_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    train, _, train_labels = _records(rng, 4, 2, 100)
    test, test_images, test_labels = _records(rng, 2, 2, 100)
    (folder / "train.bin").write_bytes(train)
    (folder / "test.bin").write_bytes(test)
    splits = load_cifar("cifar100", tmp_path)
    assert torch.equal(splits.train.y, torch.from_numpy(train_labels))  # the fine, not coarse, label
    assert torch.equal(splits.test.y, torch.from_numpy(test_labels))
    assert torch.equal((splits.test.x * 255).round().to(torch.uint8), torch.from_numpy(test_images))
    assert len(splits.train.classes) == 100


def test_cifar_errors_name_the_files_and_folder(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz.*--download"):
        load_splits("cifar10", data_dir=tmp_path)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]:
        (folder / name).write_bytes(b"\x00" * 3072)  # one byte short of a record
    with pytest.raises(DataError, match="not a whole number"):
        load_splits("cifar10", data_dir=tmp_path)
    (tmp_path / "cifar100").mkdir()
    _write_tar(tmp_path / "cifar100" / "cifar-100-binary.tar.gz", {"other/file.bin": b"x"})
    with pytest.raises(DataError, match="binary release"):
        load_splits("cifar100", data_dir=tmp_path)


def _write_svhn(path: Path, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    digits = rng.integers(0, 10, n)
    scipy.io.savemat(path, {"X": images.transpose(2, 3, 1, 0), "y": np.where(digits == 0, 10, digits)[:, None].astype(np.uint8)})
    return images, digits


def test_svhn_mat_files_map_label_10_to_digit_0(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "svhn").mkdir()
    train_images, train_digits = _write_svhn(tmp_path / "svhn" / "train_32x32.mat", rng, 12)
    _write_svhn(tmp_path / "svhn" / "test_32x32.mat", rng, 5)
    splits = load_svhn(tmp_path)
    assert splits.train.x.shape == (12, 3, 32, 32) and len(splits.test) == 5
    assert torch.equal((splits.train.x * 255).round().to(torch.uint8), torch.from_numpy(train_images))
    assert torch.equal(splits.train.y, torch.from_numpy(train_digits).long())
    assert load_splits("svhn", data_dir=tmp_path).test.name == "svhn:test"


def test_svhn_errors(tmp_path):
    with pytest.raises(DataError, match=r"train_32x32\.mat.*--download"):
        load_svhn(tmp_path)
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file")
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((3, 3), np.uint8), "y": np.ones((1, 1))})
    with pytest.raises(DataError, match="MATLAB"):
        load_svhn(tmp_path)


def test_image_folder_of_large_rgb_images(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    data = load_image_folder(tmp_path)
    assert data.x.shape == (4, 3, 224, 224) and data.classes == ("cat", "dog")
    first = np.array(Image.open(tmp_path / "cat" / "0.png"))
    assert torch.equal((data.x[0] * 255).round().to(torch.uint8), torch.from_numpy(first).permute(2, 0, 1))


@pytest.mark.skipif(importlib.util.find_spec("foolbox") is None, reason="foolbox (its sample images) is not installed")
def test_foolbox_real_cifar10_samples_load_as_an_rgb_folder(tmp_path):
    """foolbox ships 20 real CIFAR-10 test images named ``cifar10_<index>_<label>.png``."""
    samples = Path(importlib.util.find_spec("foolbox").origin).parent / "data"  # type: ignore[union-attr, arg-type]
    files = sorted(samples.glob("cifar10_*.png"))
    if not files:
        pytest.skip("this foolbox build ships no CIFAR-10 samples")
    for file in files:
        label = CIFAR10_CLASSES[int(file.stem.split("_")[-1])]
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / file.name).write_bytes(file.read_bytes())
    data = load_image_folder(tmp_path)
    assert data.x.shape == (len(files), 3, 32, 32)
    assert 0.05 < float(data.x.std()) and float(data.x.min()) >= 0 and float(data.x.max()) <= 1


def test_cifar_download_checks_sha256_and_then_loads(tmp_path, monkeypatch):
    """``download=True`` through a local mirror (file:// URL), with the fake archive's digest
    standing in for the real one: a wrong digest is refused, the right one is stored and read."""
    import dataclasses
    import hashlib

    from hardened.data import cifar

    rng = np.random.default_rng(5)
    files = {f"cifar-10-batches-bin/{name}": _records(rng, 2, 1, 10)[0]
             for name in [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]}
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _write_tar(mirror / "cifar-10-binary.tar.gz", files)
    digest = hashlib.sha256((mirror / "cifar-10-binary.tar.gz").read_bytes()).hexdigest()
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="sha256"):
        load_cifar("cifar10", data_dir, download=True, mirrors=(mirror.as_uri() + "/",))
    source = dataclasses.replace(cifar.CIFAR_SOURCES["cifar10"], sha256={"cifar-10-binary.tar.gz": digest})
    monkeypatch.setitem(cifar.CIFAR_SOURCES, "cifar10", source)
    splits = load_cifar("cifar10", data_dir, download=True, mirrors=(mirror.as_uri() + "/",))
    assert len(splits.train) == 10 and len(splits.test) == 2
    assert (data_dir / "cifar10" / "cifar-10-binary.tar.gz").is_file()
