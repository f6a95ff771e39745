"""The training loop: epochs over shuffled batches, a held-out evaluation per epoch, a log."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardened._util.atomic import append_jsonl
from hardened._util.batching import batch_slices, predict_logits
from hardened._util.progress import progress_bar
from hardened._util.seeding import make_generator
from hardened.data.dataset import Dataset
from hardened.errors import ConfigError
from hardened.train.methods import Standard, TrainingMethod

__all__ = ["TrainConfig", "EpochRecord", "TrainResult", "train", "accuracy"]

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``seed`` fixes shuffling and the method's randomness."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    loss: float
    train_accuracy: float
    test_accuracy: float | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    method: dict[str, Any]
    config: dict[str, Any]
    history: tuple[EpochRecord, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "config": self.config,
            "history": [asdict(r) for r in self.history],
            "seconds": self.seconds,
        }


def accuracy(model: nn.Module, data: Dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (eval mode, no grad)."""
    if len(data) == 0:
        return float("nan")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    logits = predict_logits(model, data.x.to(device), batch_size)
    return float((logits.argmax(1).cpu() == data.y).float().mean())


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def train(
    model: nn.Module,
    train_data: Dataset,
    *,
    method: TrainingMethod | None = None,
    config: TrainConfig | None = None,
    test_data: Dataset | None = None,
    log_path: str | Path | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``model`` in place on ``train_data`` with ``method`` (standard by default).

    Each epoch shuffles with a generator seeded by ``(seed, epoch)``, logs a JSON line to
    ``log_path`` and evaluates clean accuracy on ``test_data``.
    """
    method = method or Standard()
    config = config or TrainConfig()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    optimizer = _optimizer(model, config)
    history: list[EpochRecord] = []
    start = time.perf_counter()
    steps_per_epoch = -(-len(train_data) // config.batch_size)
    with progress_bar(config.epochs * steps_per_epoch, f"train {method.name}", progress) as bar:
        for epoch in range(config.epochs):
            epoch_start = time.perf_counter()
            shuffle = make_generator(config.seed * 100_003 + epoch)
            order = torch.randperm(len(train_data), generator=shuffle)
            method_rng = make_generator(config.seed * 100_003 + epoch + 50_000, device)
            model.train()
            total_loss, seen = 0.0, 0
            for batch in batch_slices(len(order), config.batch_size):
                index = order[batch]
                x = train_data.x[index].to(device)
                y = train_data.y[index].to(device)
                loss = method.batch_loss(model, x, y, method_rng)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(index)
                seen += len(index)
                bar.advance()
            model.eval()
            train_acc = accuracy(model, train_data.head(2000))
            test_acc = accuracy(model, test_data) if test_data is not None else None
            record = EpochRecord(
                epoch=epoch + 1,
                loss=total_loss / max(seen, 1),
                train_accuracy=train_acc,
                test_accuracy=test_acc,
                seconds=time.perf_counter() - epoch_start,
            )
            history.append(record)
            bar.describe(
                f"train {method.name} epoch {epoch + 1}/{config.epochs} loss {record.loss:.3f}"
                + (f" test acc {test_acc:.3f}" if test_acc is not None else "")
            )
            if log_path is not None:
                append_jsonl(log_path, asdict(record))
    return TrainResult(method.config(), asdict(config), tuple(history), time.perf_counter() - start)
