"""SVHN (Street View House Numbers, cropped digits) from its ``.mat`` files.

``train_32x32.mat`` and ``test_32x32.mat`` (Netzer et al., 2011,
http://ufldl.stanford.edu/housenumbers/) are MATLAB v5 files read with ``scipy.io.loadmat``,
which parses arrays and never unpickles: ``X`` is uint8 32×32×3×N, ``y`` is N×1 with labels
1..10, where 10 stands for the digit 0 (mapped to label 0 here).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from hardened.data.dataset import Dataset, Splits
from hardened.data.download import IdxSource, default_data_dir, find_or_download
from hardened.errors import DataError

__all__ = ["SVHN_SOURCE", "load_svhn", "read_svhn_mat"]

SVHN_SOURCE = IdxSource(
    name="svhn",
    files={"train": "train_32x32.mat", "test": "test_32x32.mat"},
    sha256={
        "train_32x32.mat": "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
        "test_32x32.mat": "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
    },
    mirrors=("http://ufldl.stanford.edu/housenumbers/",),
    classes=tuple(str(i) for i in range(10)),
)


def read_svhn_mat(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN ``.mat`` file -> (uint8 images N×3×32×32, int64 labels N in 0..9)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    file = Path(path)
    try:
        content = loadmat(str(file), variable_names=["X", "y"])
    except (MatReadError, ValueError, OSError, NotImplementedError) as error:
        raise DataError(f"cannot read {file} as a MATLAB v5 .mat file: {error}; download it again") from error
    if "X" not in content or "y" not in content:
        raise DataError(f"{file} must hold the SVHN arrays X and y, found {sorted(k for k in content if not k.startswith('__'))}")
    x, y = content["X"], np.asarray(content["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.size:
        raise DataError(f"{file}: X must be uint8 32×32×3×N with N = len(y) = {y.size}, got {x.dtype} {x.shape}")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{file}: labels must lie in 1..10 (10 is the digit 0), got {y.min()}..{y.max()}")
    labels = np.where(y == 10, 0, y).astype(np.int64)
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


def load_svhn(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    mirrors: tuple[str, ...] | None = None,
) -> Splits:
    """SVHN's official train/test split, float32 N×3×32×32 in [0, 1]; files are looked for in
    ``data_dir/svhn/`` then ``data_dir/`` (``download=True`` fetches them, sha256 checked)."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    paths = find_or_download(SVHN_SOURCE, root, download=download, mirrors=mirrors, missing=(
        f"svhn files not found in {root / 'svhn'} or {root}: need "
        f"{', '.join(SVHN_SOURCE.files.values())}. Pass --download to fetch them, or "
        "--data-dir / HARDENED_DATA_DIR pointing at a folder that has them"
    ))
    parts = {}
    for part in ("train", "test"):
        images, labels = read_svhn_mat(paths[part])
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
        parts[part] = Dataset(x, torch.from_numpy(labels), SVHN_SOURCE.classes, f"svhn:{part}")
    return Splits(train=parts["train"], test=parts["test"])
