"""Shared helpers of the benchmark scripts: cached reference models and machine description."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

import hardened as hd
from hardened.data import Dataset
from hardened.train import TrainConfig, train

__all__ = ["RESULTS", "cached_lenet", "machine"]

RESULTS = Path(__file__).resolve().parent / "results"


def cached_lenet(
    train_data: Dataset, test_data: Dataset, path: Path, *, epochs: int, seed: int = 0
) -> tuple[nn.Module, dict[str, Any]]:
    """A standard-trained ``lenet``: loaded from ``path`` if present, else trained and saved there.

    Returns the model (eval mode) and a JSON-ready record (epochs, seconds, test accuracy, file).
    """
    if path.with_suffix(".safetensors").is_file():
        loaded = hd.load_model(path.with_suffix(".safetensors"))
        record = dict(loaded.info.training)
        record["loaded_from"] = str(path)
        return loaded.model.eval(), record
    torch.manual_seed(seed)
    model = hd.build_model("lenet", input_shape=train_data.input_shape)
    config = TrainConfig(epochs=epochs, batch_size=128, lr=1e-3, optimizer="adam", seed=seed)
    result = train(model, train_data, config=config, test_data=test_data, progress=False)
    record = {
        "arch": "lenet",
        "method": "standard",
        "train_data": train_data.name,
        "train_size": len(train_data),
        "epochs": epochs,
        "batch_size": config.batch_size,
        "optimizer": "adam, lr 1e-3",
        "train_seconds": round(result.seconds, 1),
        "test_accuracy": result.history[-1].test_accuracy,
    }
    hd.save_model(
        model,
        path.with_suffix(".safetensors"),
        arch="lenet",
        arch_kwargs={"input_shape": list(train_data.input_shape)},
        input_shape=train_data.input_shape,
        classes=train_data.classes,
        training=record,
    )
    record["saved_to"] = str(path)
    return model.eval(), record


def machine() -> dict[str, Any]:
    """What the timings were taken on."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "note": "2 CPU cores shared with other jobs: timings are noisy; compare medians and ratios",
    }
