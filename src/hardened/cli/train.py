"""``hardened train``: train a reference architecture and save it with its sidecar."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hardened.cli._common import (
    BatchOption,
    DataDirOption,
    DataOption,
    DeviceOption,
    DownloadOption,
    SeedOption,
    load_data,
    out,
    resolve_device,
    seed_everything,
)
from hardened.models import build_model, save_model
from hardened.train import TrainConfig, train


def train_command(
    out_path: Annotated[Path, typer.Option("--out", help="where to write model.safetensors (+ .json)")] = Path("model.safetensors"),
    data: DataOption = "mnist-5k",
    arch: Annotated[str, typer.Option("--arch", help="mlp, lenet or resnet_small")] = "lenet",
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 5,
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adam or sgd")] = "adam",
    batch_size: BatchOption = 128,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
) -> None:
    """Train a reference architecture (standard training) and report held-out accuracy."""
    seed_everything(seed)
    target = resolve_device(device)
    splits = load_data(data, data_dir, download, seed)
    mean = splits.train.x.mean(dim=(0, 2, 3)).tolist()
    std = splits.train.x.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()
    arch_kwargs = {
        "input_shape": list(splits.train.input_shape),
        "num_classes": splits.train.num_classes,
        "mean": mean,
        "std": std,
    }
    model = build_model(arch, **arch_kwargs).to(target)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed)
    result = train(
        model,
        splits.train.to(target),
        config=config,
        test_data=splits.test.to(target),
        log_path=out_path.with_suffix(".log.jsonl"),
        progress=True,
    )
    for record in result.history:
        out.print(
            f"epoch {record.epoch}: loss {record.loss:.4f}  train acc {record.train_accuracy:.4f}  "
            f"test acc {record.test_accuracy:.4f}  ({record.seconds:.1f}s)"
        )
    saved = save_model(
        model,
        out_path,
        arch=arch,
        arch_kwargs=arch_kwargs,
        input_shape=splits.train.input_shape,
        classes=splits.train.classes,
        training={**result.to_dict(), "data": data, "seed": seed},
    )
    out.print(f"saved {saved} (test accuracy {result.history[-1].test_accuracy:.4f})")
