"""Request bodies to images N×C×H×W in [0, 1], or a ``Rejected`` with the HTTP status and a message.

JSON ``{"images": [...]}`` (N×C×H×W, or N×H×W for a one-channel model, exactly the model's
input size), the same array as a NumPy ``.npy`` body (``application/x-npy``), and multipart
uploads of PNG or JPEG files (any size up to ``max_pixels``, decoded with the pixel limit of
``hardened.data.images``, converted to the model's channels and resized). Status codes: 413 too many images or pixels, 415 not PNG/JPEG, 422 anything
else unusable (bad JSON or .npy, wrong shape, values outside [0, 1], NaN, a corrupt file).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import orjson
import torch
from torch import Tensor

from hardened._util.checks import check_images
from hardened.errors import DataError, InputError
from hardened.guard.inputs import image_to_tensor

__all__ = ["Rejected", "images_from_json", "images_from_npy", "images_from_uploads", "check_count"]

_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


class Rejected(Exception):
    """A request the service refuses: ``status`` (HTTP) and ``message`` (what was wrong, what to do)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape))


def check_count(n: int, max_images: int) -> None:
    if n == 0:
        raise Rejected(422, "no images in the request: send at least one")
    if n > max_images:
        raise Rejected(413, f"{n} images in one request, over the limit of {max_images}; split the batch")


def images_from_json(body: bytes, input_shape: tuple[int, int, int], max_images: int) -> Tensor:
    """The images of a JSON body ``{"images": N×C×H×W or N×H×W numbers in [0, 1]}``."""
    try:
        document = orjson.loads(body)  # 3× faster than json.loads on nested float arrays
    except orjson.JSONDecodeError as error:
        if b"NaN" in body or b"Infinity" in body:
            raise Rejected(422, "NaN and Infinity are not pixel values (nor standard JSON): send numbers "
                                "in [0, 1]") from None
        raise Rejected(422, f"the body is not valid JSON ({type(error).__name__}: {error}); "
                            'send {"images": [...]}') from None
    if not isinstance(document, dict) or "images" not in document:
        raise Rejected(422, 'the JSON body must be an object with a key "images": {"images": [...]}')
    images = document["images"]
    if not isinstance(images, list):
        raise Rejected(422, f'"images" must be an array of images, got {type(images).__name__}')
    check_count(len(images), max_images)
    try:
        array = np.asarray(images, dtype=np.float32)
    except (ValueError, TypeError, RecursionError, OverflowError):
        raise Rejected(422, '"images" must be a rectangular nested array of numbers (every image '
                            f"{_shape_text(input_shape)}), not ragged and with no strings or nulls") from None
    return _as_images(array, input_shape, max_images, '"images"')


def images_from_npy(body: bytes, input_shape: tuple[int, int, int], max_images: int) -> Tensor:
    """The images of an ``application/x-npy`` body: one NumPy ``.npy`` array (``np.save``), float32
    or float64, N×C×H×W or N×H×W in [0, 1]. Read without pickle; no text to parse, so a batch of
    32 MNIST images costs microseconds instead of the milliseconds of its JSON."""
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise Rejected(422, f"the body is not a .npy array ({error}); send np.save(file, images) with "
                            "float32 images N×C×H×W") from None
    if not isinstance(array, np.ndarray) or array.dtype not in (np.float32, np.float64):
        raise Rejected(422, f"the .npy array has dtype {getattr(array, 'dtype', type(array).__name__)}; "
                            "send float32 (or float64) pixels in [0, 1]")
    if array.ndim < 1:
        raise Rejected(422, "the .npy array is a scalar; send images N×C×H×W")
    check_count(array.shape[0], max_images)
    return _as_images(array.astype(np.float32, copy=False), input_shape, max_images, "the .npy array")


def _as_images(array: np.ndarray, input_shape: tuple[int, int, int], max_images: int, what: str) -> Tensor:
    """float32 ``array`` N×C×H×W (or N×H×W for one channel) -> checked images, or ``Rejected``."""
    channels, height, width = input_shape
    if array.ndim == 3 and channels == 1:
        array = array[:, None]
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(input_shape):
        alternative = f" or N×{height}×{width}" if channels == 1 else ""
        raise Rejected(422, f"{what} has shape {_shape_text(array.shape)} but the model takes "
                            f"N×{_shape_text(input_shape)}{alternative}; resize the images or upload PNG/JPEG files")
    try:
        return check_images(torch.from_numpy(np.ascontiguousarray(array)))
    except InputError as error:
        raise Rejected(422, str(error)) from None


def images_from_uploads(files: Sequence[tuple[str, bytes]], input_shape: tuple[int, int, int],
                        max_images: int, max_pixels: int) -> Tensor:
    """The images of uploaded ``(file name, bytes)`` PNG or JPEG files, in the model's input format."""
    from PIL import Image

    check_count(len(files), max_images)
    batch = []
    for name, data in files:
        if not any(data.startswith(magic) for magic in _MAGIC):
            raise Rejected(415, f"upload {name!r} is not a PNG or JPEG file; send PNG or JPEG images, "
                                'or JSON {"images": [...]}')
        try:
            with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header only
                width, height = image.size
        except Image.DecompressionBombError as error:  # Pillow's own limit, checked on open
            raise Rejected(413, f"upload {name!r} declares too many pixels ({error}); the limit is "
                                f"{max_pixels} pixels: resize it first") from None
        except (OSError, ValueError, SyntaxError) as error:
            raise Rejected(422, f"upload {name!r} cannot be read as an image: {error}") from None
        if width * height > max_pixels:
            raise Rejected(413, f"upload {name!r} is {width}×{height} pixels, over the limit of {max_pixels}; "
                                "resize it first")
        try:
            batch.append(image_to_tensor(data, input_shape, name=name, max_pixels=max_pixels))
        except (DataError, InputError) as error:
            raise Rejected(422, str(error)) from None
    return torch.cat(batch)
