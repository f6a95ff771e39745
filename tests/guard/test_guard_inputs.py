"""What the guard commands read: inputs to classify, the calibration split, the calibration rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hardened.data import Dataset
from hardened.errors import ConfigError, DataError, InputError
from hardened.guard import calibrate_threshold
from hardened.guard.calibrate import calibration_split, check_calibration, min_samples_for
from hardened.guard.inputs import load_inputs
from hardened.guard.probes import to_format


def _data(n: int) -> Dataset:
    return Dataset(torch.rand(n, 1, 4, 4), torch.arange(n) % 3, ("a", "b", "c"), "d")


@pytest.mark.parametrize("n, k, seed", [(10, 1, 0), (10, 9, 1), (57, 20, 2), (100, 50, 3)])
def test_calibration_split_partitions_and_is_seeded(n, k, seed):
    data = _data(n)
    calibration, evaluation = calibration_split(data, k, seed)
    assert (len(calibration), len(evaluation)) == (k, n - k)
    rows = {tuple(v.tolist()) for v in torch.cat([calibration.x, evaluation.x]).flatten(1)}
    assert rows == {tuple(v.tolist()) for v in data.x.flatten(1)}
    again, _ = calibration_split(data, k, seed)
    assert torch.equal(again.x, calibration.x)


@pytest.mark.parametrize("k", [0, 10, 11])
def test_calibration_split_bounds(k):
    with pytest.raises(ConfigError, match="--calibration-n"):
        calibration_split(_data(10), k, 0)


@pytest.mark.parametrize("fpr", [0.5, 0.1, 0.05, 0.01])
def test_check_calibration_agrees_with_calibrate(fpr):
    need = min_samples_for(fpr)
    assert check_calibration(fpr, "fpr", need) == fpr
    calibrate_threshold(np.arange(need, dtype=float), fpr=fpr)
    with pytest.raises(InputError, match="too few"):
        check_calibration(fpr, "fpr", need - 1)
    with pytest.raises(InputError, match="too few"):
        calibrate_threshold(np.arange(need - 1, dtype=float), fpr=fpr)


@pytest.mark.parametrize("fpr, method", [(0.0, "fpr"), (1.0, "fpr"), (2.0, "fpr"), (None, "fpr"), (0.1, "median")])
def test_check_calibration_refusals(fpr, method):
    with pytest.raises(ConfigError):
        check_calibration(fpr, method)
    assert check_calibration(None, "max", 1) is None


def test_load_inputs_reads_images_and_npz(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    arrays = rng.random((3, 4, 4), dtype=np.float32)
    np.savez(tmp_path / "b.npz", x=arrays)
    names, x = load_inputs([tmp_path / "a.png", tmp_path / "b.npz"], (1, 4, 4))
    assert names == ["a.png", "b.npz[0]", "b.npz[1]", "b.npz[2]"]
    assert torch.allclose(x[0, 0], torch.from_numpy(pixels / 255.0).float())
    assert torch.allclose(x[1:, 0], torch.from_numpy(arrays))
    _, rgb = load_inputs([tmp_path / "a.png"], (3, 2, 2))
    assert torch.allclose(rgb, to_format(x[:1], (3, 2, 2)))


def test_load_inputs_refusals(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        load_inputs([tmp_path], (1, 4, 4))
    with pytest.raises(InputError, match="does not exist"):
        load_inputs([tmp_path / "nope.png"], (1, 4, 4))
    with pytest.raises(InputError, match="no inputs"):
        load_inputs([], (1, 4, 4))
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 4, 4), "f4"))
    with pytest.raises(DataError, match="no images"):
        load_inputs([tmp_path / "e.npz"], (1, 4, 4))
