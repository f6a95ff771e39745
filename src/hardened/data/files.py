"""User data: a folder of images (one sub-folder per class) and ``.npz`` arrays."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.lib.npyio import NpzFile

from hardened._util.records import MAX_CLASSES
from hardened.data.dataset import Dataset
from hardened.data.images import open_image
from hardened.errors import DataError, HardenedError

__all__ = ["load_image_folder", "load_npz", "load_npz_images", "read_npz", "images_nchw", "to_unit_float"]

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
                images.append(open_image(file))
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


def read_npz(
    path: str | os.PathLike[str], required: Sequence[str], optional: Sequence[str] = (),
    error: type[HardenedError] = DataError,
) -> dict[str, np.ndarray]:
    """The arrays ``required`` (and those of ``optional`` present) of a ``.npz`` archive.

    Always read with ``allow_pickle=False``: a file that is not a .npz archive, or holds
    pickled objects, is an ``error`` that says so (never numpy's advice to unpickle it).
    """
    file = Path(path)
    if not file.is_file():
        raise error(f"{file} does not exist" if not file.exists() else f"{file} is a folder, not a .npz file")
    wanted = (*required, *optional)
    try:
        with np.load(file, allow_pickle=False) as archive:
            if not isinstance(archive, NpzFile):
                raise error(f"{file} is a single .npy array, not a .npz archive; save it with numpy.savez(path, {required[0]}=...)")
            missing = [name for name in required if name not in archive.files]
            if missing:
                names = " and ".join(", ".join(map(repr, required)).rsplit(", ", 1))
                raise error(f"{file} must hold arrays named {names}, found {archive.files}")
            arrays = {name: archive[name] for name in wanted if name in archive.files}
    except HardenedError:
        raise
    except ValueError as problem:  # numpy's messages here suggest unpickling: never repeat them
        text = str(problem).lower()
        if "object arrays" in text:
            raise error(
                f"{file} holds object arrays (pickled Python objects), which are never loaded "
                "(unpickling can run code); store plain numeric arrays with numpy.savez"
            ) from None
        if "pickle" in text:
            raise error(
                f"{file} is not a .npz archive (neither a zip of arrays nor a .npy file; a pickle is "
                "never loaded, as unpickling can run code); save the arrays with numpy.savez"
            ) from None
        raise error(f"cannot read {file} as .npz: {problem}") from None
    except Exception as problem:  # zipfile, zlib, OSError...: a broken archive, whatever the cause
        raise error(f"cannot read {file} as .npz (not a valid archive: {type(problem).__name__}: {problem})") from None
    return arrays


def _check_labels(y: np.ndarray, classes: list[str] | None, file: Path) -> tuple[str, ...]:
    """Class names for labels ``y``: ``classes`` when given (labels must index it), else 0..K-1
    with every class present; at most ``MAX_CLASSES`` classes."""
    if classes is not None:
        if len(classes) > MAX_CLASSES:
            raise DataError(f"{file}: {len(classes)} classes, over the limit of {MAX_CLASSES:,}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise DataError(
                f"{file}: labels span [{int(y.min())}, {int(y.max())}] but 'classes' names {len(classes)} classes"
            )
        return tuple(classes)
    if not len(y):
        return ()
    low, high = int(y.min()), int(y.max())
    if low < 0:
        raise DataError(f"{file}: labels must be 0..K-1, found {low}")
    if high >= MAX_CLASSES:
        raise DataError(
            f"{file}: a label of {high} means {high + 1:,} classes, over the limit of {MAX_CLASSES:,}; "
            "labels must be 0..K-1"
        )
    present = np.zeros(high + 1, dtype=bool)
    present[y] = True
    if not present.all():
        absent = np.flatnonzero(~present)
        shown = ", ".join(str(int(a)) for a in absent[:5]) + (", ..." if len(absent) > 5 else "")
        raise DataError(
            f"{file}: labels must be 0..K-1 with every class present, but {len(absent)} of 0..{high} never "
            f"occur ({shown}); relabel them, or add a 'classes' array naming all K classes"
        )
    return tuple(str(i) for i in range(high + 1))


def load_npz(path: str | os.PathLike[str]) -> Dataset:
    """Arrays ``x`` (N×H×W, N×C×H×W or N×H×W×C with C in {1, 3}) and ``y`` (N,) from a .npz.

    An optional ``classes`` array names the classes (labels index it); otherwise labels must
    be ``0..K-1`` with every class present. At most ``MAX_CLASSES`` classes.
    """
    file = Path(path)
    arrays = read_npz(file, ("x", "y"), ("classes",))
    x, y = arrays["x"], arrays["y"]
    classes = None
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind not in "UiuS":
            raise DataError(f"{file}: 'classes' must be a 1-d array of names, got {names.dtype} {names.shape}")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names.tolist()]
    x = images_nchw(x, str(file))
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{file}: y must be N integer labels, got {y.dtype} {y.shape}")
    names_out = _check_labels(y, classes, file)
    tensor = torch.from_numpy(np.ascontiguousarray(to_unit_float(x, str(file))))
    return Dataset(tensor, torch.from_numpy(y.astype(np.int64)), names_out, file.stem)


def images_nchw(x: np.ndarray, what: str) -> np.ndarray:
    """An image array N×H×W, N×C×H×W or N×H×W×C (C in {1, 3}) as N×C×H×W."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise DataError(f"{what}: x must be N×H×W, N×C×H×W or N×H×W×C, got shape {x.shape}")
    return x


def load_npz_images(path: str | os.PathLike[str]) -> np.ndarray:
    """The images ``x`` of a .npz (no labels needed) as float32 N×C×H×W in [0, 1]; at least one."""
    file = Path(path)
    x = read_npz(file, ("x",))["x"]
    x = images_nchw(x, str(file))
    if len(x) == 0:
        raise DataError(f"{file} holds no images (x has N = 0)")
    return np.ascontiguousarray(to_unit_float(x, str(file)))
