"""Decoding image files with a pixel limit: a decompression bomb or a corrupt file is a DataError.

A 156-byte PNG can declare 40000×40000 pixels; the header is read first (``Image.open`` is
lazy) and anything over ``MAX_PIXELS`` is refused before a byte of it is decoded.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hardened.errors import DataError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["MAX_PIXELS", "open_image", "decode_image"]

MAX_PIXELS = 8192 * 8192  # 67 Mpx: far above any classifier input, far below PIL's 179 Mpx bomb limit


def open_image(path: str | os.PathLike[str] | bytes, *, max_pixels: int = MAX_PIXELS,
               name: str | None = None) -> PILImage:
    """The decoded image at ``path``, or encoded in ``bytes`` (an upload; ``name`` names it in
    messages), as a copy with the file closed; ``DataError`` when it is not a readable image or
    declares more than ``max_pixels`` pixels."""
    from PIL import Image

    source: Path | io.BytesIO
    if isinstance(path, bytes):
        source, file = io.BytesIO(path), name or "upload"
    else:
        source = file = Path(path)
        if file.is_dir():
            raise DataError(f"{file} is a folder, not an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise DataError(
                        f"image {file} is too large to decode safely: it declares {width}×{height} pixels, "
                        f"over the limit of {max_pixels} (a decompression bomb or a huge photo); resize it first"
                    )
                image.load()
                return image.copy()
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"image {file} is too large to decode safely (a decompression bomb or a huge "
                        f"photo; the limit is {max_pixels} pixels): {error}") from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DataError(f"cannot read image {file}: {reason}") from error


def decode_image(path: str | os.PathLike[str] | bytes, mode: str, *, max_pixels: int = MAX_PIXELS,
                 name: str | None = None) -> np.ndarray:
    """uint8 pixels H×W (``mode="L"``) or H×W×3 (``"RGB"``) of the image at ``path`` (or in
    ``bytes``, see ``open_image``)."""
    return np.asarray(open_image(path, max_pixels=max_pixels, name=name).convert(mode), dtype=np.uint8)
