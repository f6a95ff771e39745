"""Image decoding with a pixel limit (hardened.data.images) and the loaders that use it."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from hardened.data import load_image_folder, load_splits
from hardened.data.files import load_npz_images
from hardened.data.images import MAX_PIXELS, decode_image, open_image
from hardened.errors import DataError


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` grayscale pixels but carries one byte of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_decode_round_trips_random_images(tmp_path, seed, mode):
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40))) + ((3,) if mode == "RGB" else ())
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(pixels, mode).save(path)
    assert np.array_equal(decode_image(path, mode), pixels)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(40000, 40000))
    assert bomb.stat().st_size < 200
    start = time.perf_counter()
    with pytest.raises(DataError, match="too large to decode safely"):
        open_image(bomb)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("extra", [0, 1])
def test_the_limit_is_exact(tmp_path, extra):
    """w·h == limit decodes; one pixel more is refused (before decoding, so data need not fill it)."""
    from PIL import Image

    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((6, 7), np.uint8)).save(path)
    if extra:
        with pytest.raises(DataError, match="declares 7×6 pixels, over the limit of 41"):
            open_image(path, max_pixels=6 * 7 - extra)
    else:
        assert open_image(path, max_pixels=6 * 7).size == (7, 6)
    assert MAX_PIXELS >= 4096 * 4096


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + bytes(range(64)), b"not an image at all"])
def test_corrupt_files_are_data_errors(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match="cannot read image"):
        decode_image(path, "L")


def test_a_folder_is_not_an_image(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        open_image(tmp_path)


def test_image_folder_refuses_a_bomb_inside(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bomb.png").write_bytes(_png_header_only(40000, 40000))
    with pytest.raises(DataError, match="too large to decode safely"):
        load_image_folder(tmp_path)


@pytest.mark.parametrize("layout", ["nhw", "nchw", "nhwc"])
def test_npz_images_in_every_layout(tmp_path, layout):
    rng = np.random.default_rng(0)
    x = rng.random((3, 1, 5, 6), dtype=np.float32)
    stored = {"nhw": x[:, 0], "nchw": x, "nhwc": x.transpose(0, 2, 3, 1)}[layout]
    np.savez(tmp_path / "x.npz", x=stored)
    assert np.array_equal(load_npz_images(tmp_path / "x.npz"), x)


@pytest.mark.parametrize("make", [
    lambda p: np.savez(p, x=np.zeros((0, 1, 4, 4), "f4")),
    lambda p: np.savez(p, images=np.zeros((2, 1, 4, 4), "f4")),
    lambda p: np.savez(p, x=np.array([None, {}], dtype=object)),
    lambda p: Path(p).write_bytes(np.random.default_rng(0).bytes(128)),
])
def test_npz_images_bad_files(tmp_path, make):
    path = tmp_path / "x.npz"
    make(path)
    with pytest.raises(DataError) as caught:
        load_npz_images(path)
    assert "allow_pickle" not in str(caught.value)


@pytest.mark.parametrize("n", [0, 1])
def test_empty_or_unsplittable_data_is_one_data_error(tmp_path, n):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((n, 1, 4, 4), "f4"), y=np.zeros(n, "i8"))
    with pytest.raises(DataError, match="no images" if n == 0 else "part is empty"):
        load_splits(str(path))
    assert torch.get_num_threads() >= 1
