"""Request bodies to images N×C×H×W in [0, 1], or a ``Rejected`` with the HTTP status and a message.

JSON ``{"images": [...]}`` (N×C×H×W, or N×H×W for a one-channel model, exactly the model's
input size), the same array as a NumPy ``.npy`` body (``application/x-npy``), and multipart
uploads of PNG or JPEG files (any size up to ``max_pixels``, decoded with the pixel limit of
``hardened.data.images``, converted to the model's channels and resized). Status codes: 413 too many images or pixels, 415 not PNG/JPEG, 422 anything
else unusable (bad JSON or .npy, wrong shape, values outside [0, 1], NaN, a corrupt file).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import orjson
import torch
from numpy.lib import format as npy_format
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
    or float64, N×C×H×W or N×H×W in [0, 1]. The header is read first and its shape and dtype are
    checked against the bytes that follow before anything is allocated (a header may declare
    terabytes); never unpickled. No text to parse: 32 MNIST images cost microseconds, their JSON
    milliseconds."""
    stream = io.BytesIO(body)
    try:
        version = npy_format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy format version {version[0]}.{version[1]}; np.save writes 1.0")
        read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)
    except (ValueError, OSError, EOFError, SyntaxError) as error:
        raise Rejected(422, f"the body is not a .npy array ({error}); send np.save(file, images) with "
                            "float32 images N×C×H×W") from None
    if dtype.kind != "f" or dtype.itemsize not in (4, 8):
        raise Rejected(422, f"the .npy array has dtype {dtype}; send float32 (or float64) pixels in [0, 1]")
    if len(shape) < 1:
        raise Rejected(422, "the .npy array is a scalar; send images N×C×H×W")
    check_count(shape[0], max_images)
    declared, held = math.prod(shape) * dtype.itemsize, len(body) - stream.tell()
    if declared != held:
        raise Rejected(422, f"the .npy array declares shape {_shape_text(shape)} ({declared} bytes) but "
                            f"holds {held} bytes; send the whole np.save output")
    array = np.frombuffer(body, dtype=dtype, offset=stream.tell()).reshape(shape, order="F" if fortran_order else "C")
    return _as_images(array.astype(np.float32), input_shape, max_images, "the .npy array")  # a writable copy


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
