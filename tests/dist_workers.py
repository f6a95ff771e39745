"""Worker processes of the 2-rank gloo tests (``torch.multiprocessing.spawn`` imports this module
by name in each child, so it holds no test functions)."""

from __future__ import annotations

import dataclasses
import json
import os
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hardened._util.digests import model_digest
from hardened.audit import BUDGETS, AuditResult, Stage, run_audit
from hardened.audit.stages.certify import CertifyStage
from hardened.audit.stages.clean import CleanStage
from hardened.audit.stages.robustness import RobustnessStage
from hardened.certify.runs import certify_sharded
from hardened.data.dataset import Dataset, Splits
from hardened.distributed import process_group
from hardened.errors import HardenedError
from hardened.evaluate.cascade import run_cascade
from hardened.train import TrainConfig, Trainer, make_method

N_TRAIN, BATCH = 90, 32  # 3 steps per epoch; the last global batch (26) splits 13 / 13


def toy_data(n: int = N_TRAIN, seed: int = 0) -> Dataset:
    """``n`` 1×6×6 images in [0, 1] of 3 classes (a class is a brighter band of rows)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, 1, 6, 6, generator=g) * 0.5
    for k in range(3):
        x[y == k, :, 2 * k : 2 * k + 2, :] += 0.5
    return Dataset(x=x, y=y, classes=("a", "b", "c"), name="toy")


def toy_model(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 3))


METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "standard": {},
    "pgd": {"eps": 0.1, "steps": 3},  # random starts: per image
    "fgsm": {"eps": 0.1},
    "trades": {"eps": 0.1, "steps": 2},
    "noise": {"sigma": 0.2},
    "ensemble": {"eps": 0.1},
    "semi-supervised": {"eps": 0.1, "steps": 2, "labeler_epochs": 1},
}


def method_options(method: str) -> dict[str, Any]:
    options = dict(METHOD_OPTIONS[method])
    if method == "ensemble":
        options["sources"] = [toy_model(seed=1)]
    if method == "semi-supervised":
        options["pool"] = toy_data(30, seed=3).x
    return options


def train_toy(method: str, checkpoint_dir: Path | None = None, epochs: int = 2, seed: int = 0,
              max_steps: int | None = None) -> nn.Module:
    """The same training run in whatever world the caller is in (1 process, or a rank of 2);
    ``max_steps`` stops it there (checkpointed), a later call with the same folder resumes."""
    model = toy_model()
    options = method_options(method)
    config = TrainConfig(epochs=epochs, batch_size=BATCH, lr=0.05, optimizer="sgd", momentum=0.9,
                         seed=seed, eval_n=0)
    trainer = Trainer(model, toy_data(), method=make_method(method, **options), config=config,
                      checkpoint_dir=checkpoint_dir)
    trainer.fit(resume=checkpoint_dir is not None, max_steps=max_steps)
    return model


TRAINED = tuple(METHOD_OPTIONS)


def _setup(rank: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


def certify_toy(model: nn.Module, out: Path, seed: int = 0) -> Any:
    """The same certification in whatever world the caller is in."""
    data = toy_data(10, seed=1)
    return certify_sharded(model, data.x, data.y, log_path=out / "samples.jsonl", sigma=0.25, n0=8, n=64,
                           alpha=0.01, seed=seed, batch_size=64)


class DiesAfter(nn.Module):
    """Exits the process (as a kill would) at its ``calls``-th forward pass."""

    def __init__(self, model: nn.Module, calls: int) -> None:
        super().__init__()
        self.model, self.calls = model, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls -= 1
        if self.calls < 0:
            os._exit(3)
        return self.model(x)


CASCADE_PRESET = [("pgd", {"steps": 3}), ("fgsm", {})]


def cascade_toy(model: nn.Module, state_dir: Path) -> Any:
    """The same cascade (3 batches of 4 at the first member) in whatever world the caller is in."""
    data = toy_data(12, seed=2)
    return run_cascade(model, data.x, data.y, eps=0.3, preset=CASCADE_PRESET, batch_size=4, masking="off",
                       state_dir=state_dir)


def certified_model(dies_after: int = 10**9) -> nn.Module:
    return DiesAfter(toy_model(), calls=dies_after)


def killed_certify(rank: int, store: str, folder: str) -> None:
    """Sharded certify in which rank 1 dies (``os._exit``) at its 6th forward pass, after its
    first finished samples and before the end of its shard; rank 0 writes the error it got to
    ``folder/rank0-error.json``."""
    _setup(rank)
    with process_group(init_method=store):
        try:
            certify_toy(certified_model(1 + 2 * 2 if rank == 1 else 10**9), Path(folder) / "certify")
            seen = None
        except HardenedError as error:
            seen = [type(error).__name__, str(error)]
    if rank == 0:
        (Path(folder) / "rank0-error.json").write_text(json.dumps(seen), encoding="utf-8")


def scenarios(rank: int, store: str, folder: str) -> None:
    """Train every method (two with checkpoints), resume a sliced run and the killed
    certification, a cascade and a settings mismatch; rank 0 writes the weights and what it saw
    to ``folder``; each rank writes the digest of every model it trained to ``digests-<rank>.json``."""
    _setup(rank)
    root = Path(folder)
    seen: dict[str, Any] = {}
    digests: dict[str, str] = {}
    with process_group(init_method=store) as info:
        seen["world"] = [info.rank, info.size, dist.get_backend()]
        for method in TRAINED:
            checkpoints = root / f"ckpt-{method}" if method in ("standard", "pgd") else None
            model = train_toy(method, checkpoint_dir=checkpoints, epochs=2 if checkpoints else 1)
            digests[method] = model_digest(model)
            if rank == 0:
                torch.save(model.state_dict(), root / f"{method}.pt")
        train_toy("pgd", checkpoint_dir=root / "ckpt-sliced", max_steps=4)  # stops inside epoch 2
        resumed = train_toy("pgd", checkpoint_dir=root / "ckpt-sliced")
        if rank == 0:
            torch.save(resumed.state_dict(), root / "pgd-resumed.pt")
        result = cascade_toy(train_toy("standard"), root / "cascade")
        if rank == 0:
            torch.save({"x_adv": result.x_adv, "robust": result.robust, "margin": result.margin}, root / "cascade.pt")
            seen["cascade"] = {"broken_by": list(result.broken_by), "resumed": result.resumed,
                               "contributions": [c.to_dict() for c in result.contributions]}
        run = certify_toy(certified_model(), root / "certify")
        if run is not None:
            seen["certify_records"] = len(run.records)
        try:
            certify_toy(certified_model(), root / "mismatch", seed=rank)
            seen["mismatch"] = None
        except HardenedError as error:
            seen["mismatch"] = [type(error).__name__, str(error)]
        except Exception:  # noqa: BLE001 - reported to the test, which fails on it
            seen["mismatch"] = ["unexpected", traceback.format_exc()]
    (root / f"digests-{rank}.json").write_text(json.dumps(digests), encoding="utf-8")
    if rank == 0:
        (root / "result.json").write_text(json.dumps(seen), encoding="utf-8")


def audit_splits() -> Splits:
    return Splits(train=toy_data(60, seed=5), test=toy_data(150, seed=6))


# a quick audit cut to the toy: 150 images = 3 cascade batches of 64 (rank 0 attacks batches 0
# and 2, rank 1 batch 1), certificates of 6 images (3 per rank)
AUDIT_BUDGET = dataclasses.replace(
    BUDGETS["quick"], name="toy", n_eval=150, eps_linf=(0.0, 0.1, 0.2), eps_l2=(0.0, 0.5), headline_linf=0.1,
    headline_l2=0.5, n_minimal=4, fmn_steps=20, n_certify=6, smoothing_n=64,
)


def audit_toy(model: nn.Module, out: Path) -> AuditResult:
    """The same audit (clean, robustness, certify) in whatever world the caller is in."""
    stages: list[Stage[Any]] = [CleanStage(), RobustnessStage(), CertifyStage()]
    return run_audit(model, audit_splits(), out_dir=out, budget=AUDIT_BUDGET, seed=0, stages=stages)


def audited(rank: int, store: str, folder: str) -> None:
    """The toy audit of the model in ``folder/model.pt`` on 2 ranks, into ``folder/audit``; then
    another into ``folder/killed-audit`` in which rank 1 dies (exit 3) at its 3rd forward pass
    of the robustness stage, and rank 0 writes the error it got to ``killed-audit-error.json``."""
    _setup(rank)
    root = Path(folder)
    model = toy_model()
    model.load_state_dict(torch.load(root / "model.pt", weights_only=True))
    with process_group(init_method=store):
        result = audit_toy(model, root / "audit")
        (root / f"verdict-{rank}.txt").write_text(result.verdict, encoding="utf-8")
        try:
            audit_toy(DiesAfter(model, 2 if rank == 1 else 10**9), root / "killed-audit")
            seen = None
        except HardenedError as error:
            seen = [type(error).__name__, str(error)]
    (root / "killed-audit-error.json").write_text(json.dumps(seen), encoding="utf-8")
