"""User data: a folder of images (one sub-folder per class) and ``.npz`` arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from hardened.data.dataset import Dataset
from hardened.errors import DataError

__all__ = ["load_image_folder", "load_npz", "to_unit_float"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def to_unit_float(array: np.ndarray, what: str) -> np.ndarray:
    """uint8 (0-255) -> /255; floats must already lie in [0, 1]. Returns float32."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (not np.isfinite(array).all() or array.min() < 0 or array.max() > 1):
            raise DataError(f"{what}: float images must be finite and lie in [0, 1]")
        return array.astype(np.float32)
    raise DataError(f"{what}: images must be uint8 (0-255) or float in [0, 1], got {array.dtype}")


def load_image_folder(
    path: str | os.PathLike[str], size: tuple[int, int] | None = None, grayscale: bool | None = None
) -> Dataset:
    """Images from ``path/<class name>/*.png|jpg...``; classes are the sorted sub-folder names.

    All images must share one size unless ``size=(H, W)`` resizes them. ``grayscale=None`` uses
    one channel when every image is grayscale, else RGB.
    """
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise DataError(f"{root} has no sub-folders: put each class's images in its own folder")
    images: list[Image.Image] = []
    labels: list[int] = []
    for label, folder in enumerate(class_dirs):
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    with Image.open(file) as image:
                        image.load()
                        images.append(image.copy())
                except OSError as error:
                    raise DataError(f"cannot read image {file}: {error}") from error
                labels.append(label)
    if not images:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    gray = all(im.mode in ("L", "1", "I", "I;16") for im in images) if grayscale is None else grayscale
    mode = "L" if gray else "RGB"
    arrays = []
    for image in images:
        converted = image.convert(mode)
        if size is not None:
            converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(converted, dtype=np.uint8))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"images under {root} have different sizes {sorted(shapes)[:3]}...; pass size=(H, W)")
    stacked = np.stack(arrays)
    stacked = stacked[:, None] if gray else stacked.transpose(0, 3, 1, 2)
    x = torch.from_numpy(to_unit_float(stacked, str(root)))
    return Dataset(x, torch.tensor(labels, dtype=torch.int64), tuple(d.name for d in class_dirs), root.name)


def load_npz(path: str | os.PathLike[str]) -> Dataset:
    """Arrays ``x`` (N×H×W, N×C×H×W or N×H×W×C with C in {1, 3}) and ``y`` (N,) from a .npz.

    An optional ``classes`` array names the classes; otherwise they are ``0..K-1``.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file} does not exist")
    try:
        with np.load(file, allow_pickle=False) as arrays:
            if "x" not in arrays or "y" not in arrays:
                raise DataError(f"{file} must hold arrays named 'x' and 'y', found {list(arrays)}")
            x, y = arrays["x"], arrays["y"]
            classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {file} as .npz: {error}") from error
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise DataError(f"{file}: x must be N×H×W or N×C×H×W, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{file}: y must be N integer labels, got {y.dtype} {y.shape}")
    num = int(y.max()) + 1 if len(y) else 0
    names = tuple(classes) if classes is not None else tuple(str(i) for i in range(num))
    tensor = torch.from_numpy(np.ascontiguousarray(to_unit_float(x, str(file))))
    return Dataset(tensor, torch.from_numpy(y.astype(np.int64)), names, file.stem)
