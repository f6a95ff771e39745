"""Shared CLI plumbing: options, device and seed handling, model/data loading with checks."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console

from hardened._util.checks import check_model_output
from hardened.data import Dataset, Splits, load_splits
from hardened.errors import ConfigError, InputError
from hardened.models import LoadedModel, load_model

console = Console(stderr=True)
out = Console()

DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N")]
SeedOption = Annotated[int, typer.Option("--seed", help="seed for every random choice")]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, help="images per batch")]
DataOption = Annotated[str, typer.Option("--data", help="mnist-5k, digits, mnist, fashion-mnist, a folder or .npz")]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="folder with IDX files (default $HARDENED_DATA_DIR or the user cache)")
]
DownloadOption = Annotated[bool, typer.Option("--download", help="download missing MNIST/Fashion-MNIST files")]
ModelOption = Annotated[str, typer.Option("--model", help="model.safetensors, a TorchScript file, or pkg.module:factory")]
WeightsOption = Annotated[Path | None, typer.Option("--weights", help="weights for a pkg.module:factory model")]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    """The CLI (never the library) seeds the global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(spec: str, data_dir: Path | None, download: bool, seed: int) -> Splits:
    return load_splits(spec, data_dir=data_dir, download=download, seed=seed)


def check_fit(loaded: LoadedModel, data: Dataset, device: torch.device) -> None:
    """Fail early, with a clear message, when the model cannot take or label this data."""
    info = loaded.info
    if info.input_shape is not None and tuple(info.input_shape) != data.input_shape:
        raise InputError(
            f"the model expects images of shape {'×'.join(map(str, info.input_shape))} (C×H×W) "
            f"but {data.name} has {'×'.join(map(str, data.input_shape))}; use data the model was trained on"
        )
    logits = check_model_output(loaded.model, data.x[:2].to(device))
    if logits.shape[1] < data.num_classes:
        raise InputError(
            f"{data.name} has {data.num_classes} classes but the model outputs only "
            f"{logits.shape[1]} logits"
        )
    if info.classes is not None and len(data.y) and int(data.y.max()) >= len(info.classes):
        raise InputError(f"{data.name} has labels the model does not know ({len(info.classes)} classes)")


def load_model_for(spec: str, weights: Path | None, data: Dataset, device: torch.device) -> LoadedModel:
    loaded = load_model(spec, weights)
    loaded.model.to(device)
    check_fit(loaded, data, device)
    return loaded


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError as error:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from error


def parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as error:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from error
