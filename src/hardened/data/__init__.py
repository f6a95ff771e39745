"""Datasets: built-in (``mnist-5k``, ``digits``), IDX (``mnist``, ``fashion-mnist``), RGB
(``cifar10``, ``cifar100``, ``svhn``), user files.

``load_splits(spec)`` gives a deterministic train/test pair; ``load_dataset(spec, split=...)``
one part of it. ``spec`` is a built-in name, ``mnist`` / ``fashion-mnist`` / ``cifar10`` /
``cifar100`` / ``svhn`` (official splits, read from ``data_dir``), a folder of class
sub-folders, or an ``.npz`` file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from hardened.data.builtin import load_digits, load_mnist_5k
from hardened.data.cifar import ALIASES as CIFAR_ALIASES
from hardened.data.cifar import load_cifar
from hardened.data.dataset import Dataset, Splits, stratified_split
from hardened.data.download import IDX_SOURCES, default_data_dir, find_or_download
from hardened.data.files import load_image_folder, load_npz
from hardened.data.idx import read_idx, write_idx
from hardened.data.svhn import load_svhn
from hardened.errors import DataError

__all__ = [
    "Dataset",
    "Splits",
    "BUILTIN",
    "load_dataset",
    "load_splits",
    "load_idx_dataset",
    "load_cifar",
    "load_svhn",
    "load_mnist_5k",
    "load_digits",
    "load_image_folder",
    "load_npz",
    "read_idx",
    "write_idx",
    "stratified_split",
    "default_data_dir",
]

BUILTIN = ("mnist-5k", "digits")
OFFICIAL_SPLITS = (*IDX_SOURCES, *CIFAR_ALIASES, "svhn")  # sets read from data_dir with their own split
SPLITS = ("train", "test", "all")


def load_idx_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    mirrors: tuple[str, ...] | None = None,
) -> Splits:
    """MNIST or Fashion-MNIST from IDX files, with the official train/test split."""
    source = IDX_SOURCES[name]
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    paths = find_or_download(source, folder, download=download, mirrors=mirrors, missing=(
        f"{name} files not found in {folder / name} or {folder}: need "
        f"{', '.join(source.files.values())} (gzipped or raw). Pass --download to fetch "
        "them, or --data-dir / HARDENED_DATA_DIR pointing at a folder that has them"
    ))
    parts = {}
    for part in ("train", "test"):
        images = read_idx(paths[f"{part}_images"])
        labels = read_idx(paths[f"{part}_labels"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{name} {part}: images {images.shape} and labels {labels.shape} do not match"
            )
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        y = torch.from_numpy(labels.astype(np.int64))
        parts[part] = Dataset(x, y, source.classes, f"{name}:{part}")
    return Splits(train=parts["train"], test=parts["test"])


def load_splits(
    spec: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Splits:
    """A train/test pair for ``spec``: the official split for ``mnist``/``fashion-mnist``/CIFAR/SVHN,
    a seeded stratified split (``test_fraction``, ``seed``) for everything else."""
    key = spec.lower()
    if key in IDX_SOURCES:
        return _nonempty(load_idx_dataset(key, data_dir, download=download), spec)
    if key in CIFAR_ALIASES:
        return _nonempty(load_cifar(key, data_dir, download=download), spec)
    if key == "svhn":
        return _nonempty(load_svhn(data_dir, download=download), spec)
    data = _load_unsplit(spec)
    if len(data) == 0:
        raise DataError(f"{spec} holds no images (x has N = 0): give data with at least one image per class")
    return _nonempty(stratified_split(data, test_fraction=test_fraction, seed=seed), spec)


def _nonempty(splits: Splits, spec: str) -> Splits:
    """Every command needs both parts; say so once here rather than fail deep in a loop."""
    for part, data in (("training", splits.train), ("test", splits.test)):
        if len(data) == 0:
            raise DataError(
                f"{spec}: the {part} part is empty ({len(splits.train)} training, {len(splits.test)} "
                "test images); give more images (a few per class at least)"
            )
    return splits


def _load_unsplit(spec: str) -> Dataset:
    """A built-in or user dataset in its stored order (no official split)."""
    key = spec.lower()
    if key == "mnist-5k":
        return load_mnist_5k()
    if key == "digits":
        return load_digits()
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    if path.is_dir():
        return load_image_folder(path)
    known = ", ".join((*BUILTIN, *IDX_SOURCES, "cifar10", "cifar100", "svhn"))
    raise DataError(
        f"unknown data {spec!r}: use one of {known}, a folder of class sub-folders, "
        "or an .npz file with arrays x and y"
    )


def load_dataset(spec: str, split: str = "test", **kwargs: object) -> Dataset:
    """One part (``"train"``, ``"test"`` or ``"all"``) of ``load_splits(spec, **kwargs)``.

    ``"all"`` is the whole dataset in stored order (for MNIST-style sets: train then test).
    ``spec`` may also carry the part after a colon, e.g. ``"mnist:train"``.
    """
    if ":" in spec and spec.rsplit(":", 1)[1] in SPLITS and not Path(spec).exists():
        spec, split = spec.rsplit(":", 1)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if split == "all" and spec.lower() not in OFFICIAL_SPLITS:
        return _load_unsplit(spec)
    splits = load_splits(spec, **kwargs)  # type: ignore[arg-type]
    if split == "train":
        return splits.train
    if split == "test":
        return splits.test
    base = splits.train.name.rsplit(":", 1)[0]
    return Dataset(
        torch.cat([splits.train.x, splits.test.x]),
        torch.cat([splits.train.y, splits.test.y]),
        splits.train.classes,
        base,
    )
