"""Built-in out-of-distribution probes that need no download, in the classifier's input format.

- ``noise``: uniform noise in [0, 1].
- ``inverted``: in-distribution images with inverted intensities (``1 - x``).
- ``natural``: random square crops of natural photographs (the two sample images scikit-learn
  ships, or the images of a folder), converted to the model's channels (ITU-R 601 luma for one
  channel) and resized (antialiased bilinear) to its height and width.

``load_probe`` also accepts any dataset spec that ``hardened.data.load_splits`` knows (e.g.
``fashion-mnist``): its test images, converted to the input format when the shapes differ.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hardened._util.seeding import make_generator
from hardened.data.images import decode_image
from hardened.errors import ConfigError, DataError, InputError

__all__ = ["PROBES", "to_format", "uniform_noise", "inverted", "natural_images", "folder_images", "load_probe"]

PROBES = ("noise", "inverted", "natural")
_LUMA = (0.299, 0.587, 0.114)
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def _check_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(input_shape) != 3 or any(int(s) < 1 for s in input_shape):
        raise ConfigError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape}")
    return int(input_shape[0]), int(input_shape[1]), int(input_shape[2])


def to_format(images: Tensor, input_shape: tuple[int, int, int]) -> Tensor:
    """Convert images N×C'×H'×W' in [0, 1] to N×C×H×W: channels (luma or repeat), then resize."""
    channels, height, width = _check_shape(input_shape)
    if images.dim() != 4:
        raise InputError(f"images must be N×C×H×W, got shape {tuple(images.shape)}")
    x = images.float()
    if x.shape[1] != channels:
        if x.shape[1] == 3 and channels == 1:
            weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * weights).sum(dim=1, keepdim=True)
        elif x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        else:
            raise InputError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
    if tuple(x.shape[2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0).contiguous()


def uniform_noise(n: int, input_shape: tuple[int, int, int], *, seed: int = 0) -> Tensor:
    """``n`` images of i.i.d. uniform pixels in [0, 1]."""
    shape = _check_shape(input_shape)
    return torch.rand((int(n), *shape), generator=make_generator(seed))


def inverted(x: Tensor) -> Tensor:
    """``1 - x``: dark-on-light versions of light-on-dark images (and vice versa)."""
    return 1.0 - x


def _photographs(folder: str | os.PathLike[str] | None) -> list[Tensor]:
    """The source photographs as 3×H×W float tensors in [0, 1]."""
    arrays: list[np.ndarray] = []
    if folder is None:
        try:
            from sklearn.datasets import load_sample_images
        except ModuleNotFoundError as error:
            raise DataError("the natural probe needs scikit-learn: pip install scikit-learn") from error
        arrays = list(load_sample_images().images)
    else:
        root = Path(folder)
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) if root.is_dir() else []
        if not files:
            raise DataError(f"no images found in {root} for the natural probe")
        arrays = [decode_image(file, "RGB") for file in files]
    return [torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1) for a in arrays]


def folder_images(folder: str | os.PathLike[str], input_shape: tuple[int, int, int]) -> Tensor:
    """Every image under ``folder`` (flat, or in sub-folders of any depth; sorted by path), each
    converted to ``input_shape`` whatever its own size and mode: N×C×H×W in [0, 1]."""
    shape = _check_shape(input_shape)
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) found under {root}")
    images = [torch.from_numpy(decode_image(f, "RGB").astype(np.float32) / 255.0).permute(2, 0, 1) for f in files]
    return torch.cat([to_format(image.unsqueeze(0), shape) for image in images])


def natural_images(
    n: int,
    input_shape: tuple[int, int, int],
    *,
    seed: int = 0,
    folder: str | os.PathLike[str] | None = None,
    min_fraction: float = 0.25,
) -> Tensor:
    """``n`` random square crops of natural photographs, converted to ``input_shape``.

    Each crop takes a photograph at random, a side between ``min_fraction`` and 1 of the
    photograph's shorter side, and a random position (all from ``seed``).
    """
    shape = _check_shape(input_shape)
    if not 0.0 < float(min_fraction) <= 1.0:
        raise ConfigError(f"min_fraction must lie in (0, 1], got {min_fraction}")
    photos = _photographs(folder)
    g = make_generator(seed)
    crops = []
    for _ in range(int(n)):
        photo = photos[int(torch.randint(len(photos), (1,), generator=g))]
        short = min(photo.shape[1], photo.shape[2])
        side = int(short * (min_fraction + (1 - min_fraction) * float(torch.rand(1, generator=g))))
        side = max(side, 1)
        top = int(torch.randint(photo.shape[1] - side + 1, (1,), generator=g))
        left = int(torch.randint(photo.shape[2] - side + 1, (1,), generator=g))
        crop = photo[:, top : top + side, left : left + side].unsqueeze(0)
        crops.append(to_format(crop, shape))
    if not crops:
        return torch.zeros((0, *shape))
    return torch.cat(crops)


def load_probe(
    name: str,
    like: Tensor,
    n: int,
    *,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    natural_folder: str | os.PathLike[str] | None = None,
) -> Tensor:
    """``n`` OOD images named ``name`` in the format of ``like`` (in-distribution images N×C×H×W).

    ``name``: ``noise``, ``inverted`` (of the first ``n`` of ``like``), ``natural``, a folder or
    file of the user's (used whole: OOD images are never trained on, so nothing is held out), or
    a named dataset for ``hardened.data.load_splits`` (its test part), e.g. ``fashion-mnist``.
    """
    if like.dim() != 4 or like.shape[0] == 0:
        raise InputError("like must be a non-empty batch of in-distribution images N×C×H×W")
    shape = (int(like.shape[1]), int(like.shape[2]), int(like.shape[3]))
    key = name.strip().lower()
    if key == "noise":
        return uniform_noise(n, shape, seed=seed)
    if key == "inverted":
        return inverted(like[:n])
    if key == "natural":
        return natural_images(n, shape, seed=seed, folder=natural_folder)
    from hardened.data import load_dataset, load_splits

    path = Path(name).expanduser()
    if path.is_dir():
        x = folder_images(path, shape)
        return x[: int(n)]
    try:
        if path.is_file():
            test = load_dataset(name, "all")
        else:
            test = load_splits(name, data_dir=data_dir, seed=seed).test
    except DataError as error:
        raise DataError(
            f"unknown OOD probe {name!r}: use {', '.join(PROBES)} or a dataset ({error})"
        ) from error
    x = test.x[: int(n)]
    return x if tuple(x.shape[1:]) == shape else to_format(x, shape)
