"""The robustness/accuracy trade-off: train several methods on the same data and measure each.

For every method: clean accuracy, white-box PGD robust accuracy, transfer robust accuracy
(examples crafted on a held-out, independently trained standard model) and training time. All
methods train on the same labelled set with the same settings; ``semi-supervised`` also gets the
unlabeled pool (the rest of the training set, labels dropped) and ``ensemble`` fixed standard
source models trained beforehand.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardened.data.dataset import Dataset
from hardened.errors import ConfigError
from hardened.evaluate.sweeps import robust_accuracy_sweep
from hardened.evaluate.transfer import craft_transfer, transfer_accuracy
from hardened.models.zoo import build_model
from hardened.threat import check_norm
from hardened.train.config import TrainConfig
from hardened.train.loop import Trainer, TrainResult, accuracy
from hardened.train.methods import METHODS, make_method, split_unlabeled

__all__ = ["MethodRow", "TradeoffReport", "compare_methods", "build_seeded"]


@dataclass(frozen=True)
class MethodRow:
    """One method's line of the trade-off table (accuracies in [0, 1])."""

    method: str
    clean_accuracy: float
    robust_accuracy: float
    transfer_accuracy: float
    train_seconds: float
    seconds_per_epoch: float
    epochs: int
    steps: int
    stopped: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TradeoffReport:
    """The trade-off table and how it was measured."""

    data: str
    arch: str
    norm: str
    eps: float
    n_labelled: int
    n_pool: int
    n_test: int
    epochs: int
    pgd: dict[str, Any]
    transfer_source: str
    rows: tuple[MethodRow, ...]
    seconds: float
    kind: str = "tradeoff"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [asdict(r) for r in self.rows]}

    def to_markdown(self) -> str:
        """A markdown table: accuracies in %, the clean-accuracy cost against ``standard``."""
        base = next((r.clean_accuracy for r in self.rows if r.method == "standard"), None)
        lines = [
            f"{self.data}, {self.arch}, {self.norm} eps {self.eps:g}: {self.n_labelled} labelled "
            f"training images" + (f" + {self.n_pool} unlabeled (pool)" if self.n_pool else "")
            + f", {self.epochs} epochs; tested on {self.n_test} images; white-box PGD "
            f"{self.pgd.get('steps')} steps x {self.pgd.get('restarts')} restart(s); transfer from "
            f"{self.transfer_source}.",
            "",
            "| method | clean acc | clean cost | PGD robust acc | transfer robust acc | train time | s/epoch |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            cost = "" if base is None else f"{100 * (base - r.clean_accuracy):+.1f}"
            note = " (stopped early)" if r.stopped else ""
            lines.append(
                f"| {r.method}{note} | {100 * r.clean_accuracy:.2f}% | {cost} | "
                f"{100 * r.robust_accuracy:.2f}% | {100 * r.transfer_accuracy:.2f}% | "
                f"{r.train_seconds:.1f} s | {r.seconds_per_epoch:.1f} |"
            )
        return "\n".join(lines) + "\n"


def build_seeded(arch: str, seed: int, **kwargs: Any) -> nn.Module:
    """``build_model`` with initial weights drawn from ``seed`` (the global RNG is restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_model(arch, **kwargs)


def compare_methods(
    train_data: Dataset,
    test_data: Dataset,
    *,
    methods: list[str] | tuple[str, ...],
    arch: str = "lenet",
    arch_kwargs: dict[str, Any] | None = None,
    norm: str = "linf",
    eps: float = 0.3,
    config: TrainConfig | None = None,
    method_options: dict[str, dict[str, Any]] | None = None,
    unlabeled_fraction: float | None = None,
    source_archs: tuple[str, ...] = ("lenet", "mlp"),
    transfer_arch: str | None = None,
    pgd_steps: int = 40,
    pgd_restarts: int = 1,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
    on_model: Callable[[str, nn.Module, TrainResult], None] | None = None,
) -> TradeoffReport:
    """Train each of ``methods`` on the same data and measure the trade-off.

    ``method_options[name]`` adds options for one method (e.g. ``{"trades": {"beta": 6}}``).
    With ``unlabeled_fraction`` that part of ``train_data`` becomes the unlabeled pool (for
    every method the labelled set is the rest). Ensemble sources (``source_archs``) and the
    transfer source (``transfer_arch``, default ``arch``) are standard models trained first with
    other seeds. With ``out_dir`` every run checkpoints to ``out_dir/NAME/`` and logs
    ``out_dir/NAME/log.jsonl``; ``resume`` continues interrupted runs. ``on_model`` is called
    with each trained model (e.g. to save it).
    """
    start = time.perf_counter()
    norm = check_norm(norm)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown methods {unknown or list(methods)}: use some of {', '.join(METHODS)}")
    names = [METHODS.canonical(m) for m in methods]
    config = config or TrainConfig()
    options = {k.lower(): dict(v) for k, v in (method_options or {}).items()}
    kwargs = dict(arch_kwargs or {})
    target = torch.device(device)
    labelled, pool = train_data, None
    if unlabeled_fraction:
        labelled, pool = split_unlabeled(train_data, unlabeled_fraction, seed=config.seed)
    elif "semi-supervised" in names:
        raise ConfigError("semi-supervised needs an unlabeled pool: give unlabeled_fraction")
    labelled = labelled.to(target)
    test = test_data.to(target)
    root = Path(out_dir) if out_dir is not None else None

    def run(name: str, model: nn.Module, method: Any, cfg: TrainConfig) -> TrainResult:
        folder = root / name if root is not None else None
        trainer = Trainer(
            model, labelled, method=method, config=cfg, test_data=test,
            log_path=folder / "log.jsonl" if folder else None, checkpoint_dir=folder,
            progress=progress,
        )
        return trainer.fit(resume=resume and folder is not None)

    helper_cfg = dataclasses.replace(config, eval_n=0, checkpoint_every=0)
    sources: list[nn.Module] = []
    if "ensemble" in names:
        for k, source_arch in enumerate(source_archs):
            source = build_seeded(source_arch, config.seed + 1 + k, **kwargs).to(target)
            run(f"_source_{k}_{source_arch}", source, make_method("standard"), helper_cfg)
            sources.append(source.eval())
    holdout_arch = transfer_arch or arch
    holdout = build_seeded(holdout_arch, config.seed + 101, **kwargs).to(target)
    run(f"_transfer_source_{holdout_arch}", holdout, make_method("standard"), helper_cfg)
    holdout.eval()
    x_transfer = craft_transfer(holdout, test.x, test.y, eps=eps, norm=norm, steps=pgd_steps,
                                restarts=pgd_restarts, seed=config.seed)
    rows: list[MethodRow] = []
    for name in names:
        extra = dict(options.get(name, {}))
        if name == "standard" or name == "noise":
            extra.pop("eps", None)
        else:
            extra = {"eps": eps, "norm": norm, **extra}
        if name == "ensemble":
            extra["sources"] = sources
            extra["source_names"] = [f"{a}-seed{config.seed + 1 + k}" for k, a in enumerate(source_archs)]
        if name == "semi-supervised":
            extra["pool"] = pool
        method = make_method(name, **extra)
        cfg = config if config.eval_eps else dataclasses.replace(config, eval_eps=eps, eval_norm=norm)
        model = build_seeded(arch, config.seed, **kwargs).to(target)
        result = run(name, model, method, cfg)
        model.eval()
        robust = robust_accuracy_sweep(
            model, test.x, test.y, eps_values=[eps], norm=norm, steps=pgd_steps,
            restarts=pgd_restarts, seed=config.seed,
        ).robust_accuracy[0]
        seconds = sum(r.seconds for r in result.history)
        rows.append(MethodRow(
            method=name,
            clean_accuracy=accuracy(model, test),
            robust_accuracy=robust,
            transfer_accuracy=transfer_accuracy(model, x_transfer, test.y),
            train_seconds=seconds,
            seconds_per_epoch=seconds / max(len(result.history), 1),
            epochs=len(result.history),
            steps=result.steps,
            stopped=result.stopped,
            settings=method.config(),
            counters=result.counters,
        ))
        if on_model is not None:
            on_model(name, model, result)
    return TradeoffReport(
        data=train_data.name.split(":")[0], arch=arch, norm=norm, eps=float(eps),
        n_labelled=len(labelled), n_pool=0 if pool is None else len(pool), n_test=len(test),
        epochs=config.epochs, pgd={"steps": pgd_steps, "restarts": pgd_restarts},
        transfer_source=f"standard {holdout_arch} (seed {config.seed + 101}), PGD {pgd_steps} steps",
        rows=tuple(rows), seconds=time.perf_counter() - start,
    )
