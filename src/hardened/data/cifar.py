"""CIFAR-10 and CIFAR-100 from their *binary* releases (fixed-size records; nothing unpickled).

The python releases (``cifar-10-python.tar.gz``) are pickles, which can run code when loaded,
so only the binary ones are read (Krizhevsky, 2009, https://www.cs.toronto.edu/~kriz/cifar.html):

- CIFAR-10 ``cifar-10-binary.tar.gz`` -> ``cifar-10-batches-bin/data_batch_{1..5}.bin`` and
  ``test_batch.bin``: records of 1 label byte + 3072 pixel bytes;
- CIFAR-100 ``cifar-100-binary.tar.gz`` -> ``cifar-100-binary/train.bin`` and ``test.bin``:
  records of 1 coarse-label byte, 1 fine-label byte + 3072 pixel bytes (the fine label is used).

Pixels are the 1024 red, then 1024 green, then 1024 blue values of a 32×32 image, row-major,
so one record reshapes straight to 3×32×32. The archive is read member by member (regular
files with the expected names only; nothing is extracted), or an already extracted folder.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hardened.data.dataset import Dataset, Splits
from hardened.data.download import IdxSource, default_data_dir, find_or_download
from hardened.errors import DataError

__all__ = ["CIFAR_SOURCES", "CifarLayout", "load_cifar", "read_cifar_records"]

PIXELS = 3 * 32 * 32

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)


@dataclass(frozen=True)
class CifarLayout:
    """Where the records sit in a binary release and how long each record's label is."""

    folder: str  # the archive's top folder
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_bytes: int  # 1 (CIFAR-10) or 2 (CIFAR-100: coarse, fine)
    classes: tuple[str, ...]


LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout("cifar-10-batches-bin", tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                           ("test_batch.bin",), 1, CIFAR10_CLASSES),
    "cifar100": CifarLayout("cifar-100-binary", ("train.bin",), ("test.bin",), 2, CIFAR100_CLASSES),
}

CIFAR_SOURCES: dict[str, IdxSource] = {
    "cifar10": IdxSource(
        name="cifar10",
        files={"archive": "cifar-10-binary.tar.gz"},
        sha256={"cifar-10-binary.tar.gz": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"},
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        classes=CIFAR10_CLASSES,
    ),
    "cifar100": IdxSource(
        name="cifar100",
        files={"archive": "cifar-100-binary.tar.gz"},
        sha256={"cifar-100-binary.tar.gz": "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"},
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        classes=CIFAR100_CLASSES,
    ),
}
ALIASES = {"cifar-10": "cifar10", "cifar10": "cifar10", "cifar-100": "cifar100", "cifar100": "cifar100"}


def read_cifar_records(raw: bytes, label_bytes: int, num_classes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Records ``raw`` -> (uint8 images N×3×32×32, int64 labels N); the last label byte is used."""
    size = label_bytes + PIXELS
    if len(raw) == 0 or len(raw) % size:
        raise DataError(
            f"{where}: {len(raw)} bytes is not a whole number of {size}-byte CIFAR records; "
            "the file is truncated or not a CIFAR binary batch (download it again)"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, size)
    labels = records[:, label_bytes - 1].astype(np.int64)
    if int(labels.max()) >= num_classes:
        raise DataError(f"{where}: label {int(labels.max())} out of range for {num_classes} classes")
    return records[:, label_bytes:].reshape(-1, 3, 32, 32), labels


def _read_members(archive: Path, names: list[str]) -> dict[str, bytes]:
    """The bytes of the regular files ``names`` inside a tar archive, extracting nothing."""
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if member.name in names and member.isreg():
                    handle = tar.extractfile(member)
                    if handle is not None:
                        out[member.name] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"cannot read {archive} as a tar archive: {error}; download it again") from error
    missing = [n for n in names if n not in out]
    if missing:
        raise DataError(f"{archive} lacks {', '.join(missing)}: is it the binary release?")
    return out


def _read_folder(folder: Path, names: list[str]) -> dict[str, bytes]:
    return {f"{folder.name}/{n}": (folder / n).read_bytes() for n in names}


def load_cifar(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    mirrors: tuple[str, ...] | None = None,
) -> Splits:
    """CIFAR-10 or CIFAR-100 (``name``: ``cifar10``/``cifar-10``/``cifar100``/``cifar-100``) with the
    official train/test split, float32 N×3×32×32 in [0, 1].

    Looks in ``data_dir/<name>/`` and ``data_dir/`` for the archive or its extracted folder;
    ``download=True`` fetches the archive (sha256 checked, written atomically).
    """
    key = ALIASES.get(name.lower())
    if key is None:
        raise DataError(f"unknown CIFAR set {name!r}: use cifar10 or cifar100")
    layout, source = LAYOUTS[key], CIFAR_SOURCES[key]
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    members = [f"{layout.folder}/{n}" for n in (*layout.train, *layout.test)]
    extracted = next((d / layout.folder for d in (root / key, root)
                      if all((d / layout.folder / n).is_file() for n in (*layout.train, *layout.test))), None)
    if extracted is not None:
        raw = _read_folder(extracted, [*layout.train, *layout.test])
    else:
        paths = find_or_download(source, root, download=download, mirrors=mirrors, missing=(
            f"{key} not found: need {source.files['archive']} (or its extracted folder {layout.folder}/) in "
            f"{root / key} or {root}. Pass --download to fetch it, or --data-dir / "
            "HARDENED_DATA_DIR pointing at a folder that has it"
        ))
        raw = _read_members(paths["archive"], members)
    parts = {}
    for part, files in (("train", layout.train), ("test", layout.test)):
        arrays = [read_cifar_records(raw[f"{layout.folder}/{f}"], layout.label_bytes, len(layout.classes), f)
                  for f in files]
        x = torch.from_numpy(np.concatenate([a for a, _ in arrays]).astype(np.float32) / 255.0)
        y = torch.from_numpy(np.concatenate([b for _, b in arrays]))
        parts[part] = Dataset(x, y, layout.classes, f"{key}:{part}")
    return Splits(train=parts["train"], test=parts["test"])
