"""The inputs a guard is asked about: image files and .npz arrays, in the guard's input format."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from hardened.data.files import load_npz_images
from hardened.data.images import MAX_PIXELS, decode_image
from hardened.errors import InputError
from hardened.guard.probes import to_format

__all__ = ["load_inputs", "image_to_tensor"]


def image_to_tensor(source: str | os.PathLike[str] | bytes, input_shape: tuple[int, int, int], *,
                    name: str | None = None, max_pixels: int = MAX_PIXELS) -> Tensor:
    """One image file (or its encoded ``bytes``, an upload named ``name``) as 1×C×H×W in the
    guard's input format: decoded under the pixel limit, converted to its channels, resized."""
    array = decode_image(source, "RGB" if input_shape[0] == 3 else "L", max_pixels=max_pixels, name=name)
    x = torch.from_numpy(array.astype("float32") / 255.0)
    x = x.permute(2, 0, 1)[None] if x.dim() == 3 else x[None, None]
    return to_format(x, input_shape)


def load_inputs(paths: Sequence[str | os.PathLike[str]], input_shape: tuple[int, int, int]) -> tuple[list[str], Tensor]:
    """Names and images N×C×H×W (``input_shape``) of image files and .npz files with an array x.

    Images are decoded with the pixel limit of ``hardened.data.images``, converted to the
    guard's channels and resized (``to_format``); an .npz contributes ``name[i]`` per image.
    """
    names: list[str] = []
    batches: list[Tensor] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            raise InputError(f"input {path} is a folder; give image files or .npz files (e.g. {path}/*.png)")
        if not path.is_file():
            raise InputError(f"input {path} does not exist")
        if path.suffix.lower() == ".npz":
            x = torch.from_numpy(load_npz_images(path))
            names += [f"{path.name}[{i}]" for i in range(x.shape[0])]
            batches.append(to_format(x, input_shape))
        else:
            batches.append(image_to_tensor(path, input_shape))
            names.append(path.name)
    if not batches:
        raise InputError("no inputs given: pass image files or .npz files")
    return names, torch.cat(batches)
