"""The training loop: ``Trainer`` (epochs, metrics log, atomic checkpoints, exact resume).

Reproducibility: the shuffling of epoch ``e`` uses a generator seeded from ``(seed, e)``; the
built-in methods' randomness (random starts, noise, pool picks) per-image streams seeded from
``(seed, e, image index)``, a custom method's a generator seeded from ``(seed, t)`` at global
step ``t``; the global RNG (dropout) is forked and seeded from ``(seed, t)`` for the step and
restored afterwards. So a run
resumed from a checkpoint written after step ``t`` repeats exactly the steps ``t+1...`` of the
uninterrupted run, and ends with the same weights (on the same device and thread count).

Data-parallel training (launched by ``torchrun``, see ``hardened.distributed``): every rank draws
the same epoch permutation, cuts the same global batch of ``batch_size`` images and trains on its
contiguous slice; gradients are summed over ranks with weights ``local / global batch`` before
each optimizer step, so each step is the single-process step up to the order of float additions.
Rank 0 alone writes the checkpoint and the log; the checkpoint records the world size and a
resume at another world size is refused. Each image draws from its own stream wherever it is
trained, so every built-in method equals the single process within float tolerance; what still
comes from per-rank streams (dropout's global RNG, a custom method's step generator) and the
batch statistics of BatchNorm (per rank: no SyncBatchNorm) match it in distribution only.

Checkpoints are one file, ``checkpoint.ckpt``: a header line with the sha256 of the payload,
then a ``torch.save`` payload of plain types and tensors, read back only with
``torch.load(weights_only=True)`` and only after the checksum matches.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardened._util.atomic import append_jsonl, write_bytes, write_text
from hardened._util.batching import predict_logits
from hardened._util.device import model_device
from hardened._util.digests import sha256_hex, tensor_digest
from hardened._util.lock import lock_output_dir
from hardened._util.progress import progress_bar
from hardened._util.seeding import ImageStreams, make_generator, mix_seed
from hardened.data.dataset import Dataset
from hardened.distributed import (
    WorldInfo,
    all_reduce_sum,
    average_gradients,
    barrier,
    broadcast_parameters,
    check_same_settings,
    is_distributed,
    shard_bounds,
    world,
)
from hardened.errors import ConfigError, DataError
from hardened.evaluate.sweeps import robust_accuracy_sweep
from hardened.train.config import TrainConfig
from hardened.train.methods import Method, Standard, StepContext, TrainingMethod, as_method

__all__ = [
    "CHECKPOINT_NAME",
    "EpochRecord",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "accuracy",
    "load_checkpoint",
    "train",
]

CHECKPOINT_NAME = "checkpoint.ckpt"
_MAGIC = b"HARDENED-CHECKPOINT 1 sha256="
# settings that may differ between the interrupted run and its resumption
_RESUME_FREE = ("checkpoint_every", "epochs")


@dataclass(frozen=True)
class EpochRecord:
    """One line of the JSON-lines log.

    ``test_accuracy`` is the clean accuracy on the held-out data, ``robust_accuracy`` the PGD
    accuracy on its first ``eval_n`` images; ``extra`` holds the method's counters, guard events and the PGD settings.
    """

    epoch: int
    loss: float
    train_accuracy: float
    test_accuracy: float | None
    seconds: float
    robust_accuracy: float | None = None
    steps: int = 0
    lr: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    """History of a training run; ``stopped`` says why it ended early (``None``: it did not)."""

    method: dict[str, Any]
    config: dict[str, Any]
    history: tuple[EpochRecord, ...]
    seconds: float
    steps: int = 0
    stopped: str | None = None
    resumed_from_step: int | None = None
    counters: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "config": self.config,
            "history": [asdict(r) for r in self.history],
            "seconds": self.seconds,
            "steps": self.steps,
            "stopped": self.stopped,
            "resumed_from_step": self.resumed_from_step,
            "counters": dict(self.counters),
        }


def accuracy(model: nn.Module, data: Dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (eval mode, no grad)."""
    if len(data) == 0:
        return float("nan")
    device = model_device(model)
    logits = predict_logits(model, data.x.to(device), batch_size)
    return float((logits.argmax(1).cpu() == data.y.cpu()).float().mean())


def lr_factor(
    schedule: str, step: int, total: int, *, peak: float = 0.4,
    milestones: tuple[float, ...] = (), gamma: float = 0.1,
) -> float:
    """Learning-rate multiplier at 0-based ``step`` of ``total`` under ``schedule``.

    ``cyclic`` rises linearly to 1 at the fraction ``peak`` and falls to 0 at the end;
    ``piecewise`` is ``gamma ** k`` after ``k`` of the ``milestones`` (fractions of ``total``).
    """
    if schedule == "constant" or total <= 1:
        return 1.0
    t = step / total
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "piecewise":
        return float(gamma ** sum(step >= m * total for m in milestones))
    return t / peak if t < peak else max(0.0, (1.0 - t) / (1.0 - peak))


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` atomically as one file: checksum header line, then the torch payload."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return write_bytes(path, _MAGIC + sha256_hex(payload).encode("ascii") + b"\n" + payload)


def load_checkpoint(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by the trainer; a checksum mismatch raises ``DataError``."""
    target = Path(path)
    try:
        raw = target.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read checkpoint {target}: {error}") from error
    header, newline, payload = raw.partition(b"\n")
    if not newline or not header.startswith(_MAGIC):
        raise DataError(
            f"{target} is not a hardened training checkpoint (bad header); delete it to start "
            "over, or point --checkpoint-dir at the run's folder"
        )
    expected = header[len(_MAGIC):].decode("ascii", "replace").strip()
    if sha256_hex(payload) != expected:
        raise DataError(
            f"checkpoint {target} is corrupt: its sha256 does not match the recorded checksum "
            "(a partial copy or a damaged disk?). It was not loaded; delete it to start over"
        )
    try:
        state = torch.load(io.BytesIO(payload), map_location=device, weights_only=True)
    except Exception as error:  # weights_only refuses pickled objects (UnpicklingError)
        raise DataError(f"checkpoint {target} cannot be read safely: {error}") from error
    if not isinstance(state, dict) or "model" not in state:
        raise DataError(f"checkpoint {target} does not hold a training state")
    return state


class Trainer:
    """Train ``model`` in place on ``train_data`` with a method (standard by default).

    ``fit()`` runs the epochs; with ``checkpoint_dir`` it writes ``checkpoint.ckpt`` atomically at
    the end of every epoch and every ``config.checkpoint_every`` steps, and ``fit(resume=True)``
    continues from it. Each epoch appends an ``EpochRecord`` to the JSON-lines ``log_path``
    (rewritten from the checkpoint's history on resume, so it never holds repeated epochs).
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset,
        *,
        method: Method | TrainingMethod | None = None,
        config: TrainConfig | None = None,
        test_data: Dataset | None = None,
        log_path: str | os.PathLike[str] | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        progress: bool = False,
    ) -> None:
        if len(train_data) == 0:
            raise ConfigError(f"{train_data.name} is empty: nothing to train on")
        self.model = model
        self.train_data = train_data
        self.method = as_method(method)
        self.config = config or TrainConfig()
        self.test_data = test_data
        self.log_path = Path(log_path) if log_path is not None else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = progress
        self.device = model_device(model)
        self.optimizer = _optimizer(model, self.config)
        amp = self.config.amp if self.config.amp is not None else self.device.type == "cuda"
        self.amp = bool(amp)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp and self.device.type == "cuda"
        )
        self.steps_per_epoch = -(-len(train_data) // self.config.batch_size)
        self.world = world() if is_distributed() else WorldInfo()
        last_batch = len(train_data) - (self.steps_per_epoch - 1) * self.config.batch_size
        if last_batch < self.world.size:
            raise ConfigError(
                f"the last batch of an epoch holds {last_batch} images, fewer than the {self.world.size} "
                "ranks: change --batch-size or --n-train so that every rank gets an image"
            )
        self.total_steps = self.config.epochs * self.steps_per_epoch
        self._eval_threat = self._pick_eval_threat()
        self._reset_state()

    # ------------------------------------------------------------------ state
    def _reset_state(self) -> None:
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.history: list[EpochRecord] = []
        self._loss_sum = 0.0
        self._loss_count = 0
        self._epoch_seconds = 0.0
        self._guard_best = -1.0
        self._guard_best_state: dict[str, torch.Tensor] | None = None
        self._guard_events: list[dict[str, Any]] = []
        self._guard_checks: list[dict[str, Any]] = []
        self._stopped: str | None = None

    def _pick_eval_threat(self) -> tuple[str, float] | None:
        if self.config.eval_eps is not None:
            return self.config.eval_norm, float(self.config.eval_eps)
        threat = self.method.threat
        return (threat.norm, threat.eps) if threat is not None else None

    @property
    def checkpoint_path(self) -> Path | None:
        return self.checkpoint_dir / CHECKPOINT_NAME if self.checkpoint_dir is not None else None

    def _comparable_config(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self.config).items() if k not in _RESUME_FREE}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (plain types and tensors, weights_only-loadable)."""
        return {
            "format": 1,
            "world_size": self.world.size,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method": self.method.state_dict(),
            "method_config": json.dumps(self.method.config(), sort_keys=True, default=str),
            "config": json.dumps(self._comparable_config(), sort_keys=True),
            "epochs": self.config.epochs,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "history": [asdict(r) for r in self.history],
            "loss_sum": self._loss_sum,
            "loss_count": self._loss_count,
            "epoch_seconds": self._epoch_seconds,
            "guard_best": self._guard_best,
            "guard_best_state": self._guard_best_state,
            "guard_events": json.dumps(self._guard_events),
            "guard_checks": json.dumps(self._guard_checks),
            "stopped": self._stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by ``state_dict``; settings must match the current run."""
        method_config = json.dumps(self.method.config(), sort_keys=True, default=str)
        if state.get("method_config") != method_config:
            raise ConfigError(
                "the checkpoint was written by a different training method or method settings "
                f"({state.get('method_config')}); resume with the same settings or start over"
            )
        if state.get("config") != json.dumps(self._comparable_config(), sort_keys=True):
            raise ConfigError(
                f"the checkpoint was written with different training settings ({state.get('config')}); "
                "only --epochs and --checkpoint-every may change when resuming"
            )
        if self.config.lr_schedule != "constant" and state.get("epochs") != self.config.epochs:
            raise ConfigError(
                f"the {self.config.lr_schedule} lr schedule depends on the number of epochs: "
                f"resume with --epochs {state.get('epochs')}"
            )
        written = state.get("world_size", 1)
        if written != self.world.size:
            raise ConfigError(
                f"the checkpoint was written by {written} process(es) and this run has {self.world.size}: "
                f"resume with the same number of processes (--nproc-per-node {written}), or start over "
                "in another --checkpoint-dir"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.history = [EpochRecord(**r) for r in state["history"]]
        self._loss_sum = float(state["loss_sum"])
        self._loss_count = int(state["loss_count"])
        self._epoch_seconds = float(state["epoch_seconds"])
        self._guard_best = float(state["guard_best"])
        self._guard_best_state = state.get("guard_best_state")
        self._guard_events = json.loads(state["guard_events"])
        self._guard_checks = json.loads(state.get("guard_checks", "[]"))
        self._stopped = state.get("stopped")

    def save(self) -> Path | None:
        """Write the checkpoint now (atomically, rank 0 only; the other ranks wait until it is
        written, so a run that follows at once finds it); ``None`` without a checkpoint folder."""
        if self.checkpoint_path is None:
            return None
        path = save_checkpoint(self.checkpoint_path, self.state_dict()) if self.world.is_main else None
        if self.world.distributed:
            barrier("waiting for rank 0 to write the checkpoint")
        return path

    # ------------------------------------------------------------------ steps
    @contextmanager
    def _step_rng(self, step: int) -> Iterator[None]:
        """Fork the global RNG and seed it from ``(seed, step)`` for the step (dropout etc.)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            seed = self._seed(2, step)
            torch.random.default_generator.manual_seed(seed)
            if devices:
                torch.cuda.manual_seed(seed)
            yield

    def _seed(self, stream: int, step: int) -> int:
        """The seed of ``stream`` at ``step``; ranks other than 0 get their own independent streams."""
        if self.world.rank == 0:
            return mix_seed(self.config.seed, stream, step)
        return mix_seed(self.config.seed, stream, step, self.world.rank)

    def _lr_factor(self, step: int) -> float:
        c = self.config
        return lr_factor(c.lr_schedule, step, self.total_steps, peak=c.lr_peak,
                         milestones=c.lr_milestones, gamma=c.lr_gamma)

    def _autocast(self) -> Any:
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp)

    def _train_step(self, index: torch.Tensor, offset: int, global_batch: int) -> None:
        """One optimizer step on this rank's images ``index`` (of the training set), which start at
        ``offset`` in a global batch of ``global_batch``."""
        x = self.train_data.x[index].to(self.device)
        y = self.train_data.y[index].to(self.device)
        step = self.global_step
        weight = len(x) / global_batch
        base_lr = self.config.lr * self._lr_factor(step)
        ctx = StepContext(
            epoch=self.epoch, step=step,
            generator=make_generator(self._seed(1, step), self.device), lr=base_lr,
            total_steps=self.total_steps, offset=offset, global_batch=global_batch,
            streams=ImageStreams(self.config.seed, (3, self.epoch), index, self.device),
        )
        with self._step_rng(step):
            self.model.train()
            updates = self.method.updates(self.model, x, y, ctx)
            while True:
                with self._autocast():
                    update = next(updates, None)
                if update is None:
                    break
                loss = float(update.loss.detach()) * len(x)
                if self.world.distributed:
                    loss = all_reduce_sum([loss])[0]
                if not math.isfinite(loss):
                    raise ConfigError(
                        f"the {self.method.name} loss became {loss / global_batch} at step {step + 1}; "
                        "lower the learning rate (--lr) or the eps"
                    )
                for group in self.optimizer.param_groups:
                    group["lr"] = base_lr * update.lr_scale
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(update.loss).backward()
                average_gradients(self.model, weight)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self._loss_sum += loss
                self._loss_count += global_batch

    # ------------------------------------------------------------ evaluation
    def _eval_data(self, n: int) -> Dataset | None:
        if n <= 0:
            return None
        source = self.test_data if self.test_data is not None and len(self.test_data) else None
        return (source or self.train_data).head(n)

    def _robust_accuracy(self, data: Dataset, steps: int) -> float | None:
        if self._eval_threat is None:
            return None
        norm, eps = self._eval_threat
        bounds = self.method.threat.bounds if self.method.threat is not None else (0.0, 1.0)
        sweep = robust_accuracy_sweep(
            self.model, data.x.to(self.device), data.y.to(self.device), eps_values=[eps],
            attack="pgd", norm=norm, steps=steps, seed=self.config.seed, bounds=bounds,
        )
        return sweep.robust_accuracy[0]

    def _check_guard(self, where: str) -> bool:
        """Run the catastrophic-overfitting detector (``CollapseGuard``); True: stop training.

        Measures FGSM and PGD accuracy at the method's full threat model on held-out images,
        keeps the weights of the best PGD accuracy, and acts on a collapse once the eps warm-up
        is over and ``guard.start`` of the steps have run. Each measurement goes to the epoch's log record (``extra["guard"]``).
        """
        guard, threat = self.method.guard, self.method.threat
        data = self._eval_data(guard.n) if guard is not None else None
        if guard is None or data is None or threat is None:
            return False
        x, y = data.x.to(self.device), data.y.to(self.device)
        common: dict[str, Any] = {"eps_values": [threat.eps], "norm": threat.norm, "bounds": threat.bounds}
        pgd = robust_accuracy_sweep(self.model, x, y, attack="pgd", steps=guard.steps,
                                    seed=self.config.seed, **common).robust_accuracy[0]
        fgsm = robust_accuracy_sweep(self.model, x, y, attack="fgsm", **common).robust_accuracy[0]
        self._guard_checks.append({"step": self.global_step, "fgsm_accuracy": fgsm, "pgd_accuracy": pgd})
        waiting = getattr(self.method, "warming_up", False) or self.global_step < guard.start * self.total_steps
        reason = None if waiting else guard.diagnose(fgsm, pgd, self._guard_best)
        if pgd > self._guard_best:
            self._guard_best = pgd
            self._guard_best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if reason is None:
            return False
        event: dict[str, Any] = {
            "event": "catastrophic_overfitting", "step": self.global_step, "where": where,
            "reason": reason, "fgsm_accuracy": fgsm, "pgd_accuracy": pgd,
            "best_pgd_accuracy": self._guard_best, "action": guard.action,
        }
        message = f"catastrophic overfitting at step {self.global_step}: {reason}"
        if guard.action in ("stop", "lower") and self._guard_best_state is not None:
            self.model.load_state_dict(self._guard_best_state)
        if guard.action == "lower" and callable(getattr(self.method, "lower_step", None)):
            event["step_size"] = self.method.lower_step(guard.lower_factor)  # type: ignore[attr-defined]
            message += f"; restored the best weights and lowered the step size to {event['step_size']:.4g}"
            self._guard_events.append(event)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            return False
        self._guard_events.append(event)
        if guard.action in ("stop", "lower"):
            self._stopped = message + "; stopped and restored the best weights"
            return True
        warnings.warn(message + " (guard action 'report': training goes on)", RuntimeWarning, stacklevel=2)
        return False

    def _end_epoch(self) -> EpochRecord:
        data = self._eval_data(self.config.eval_n)
        full = self.test_data if self.test_data is not None and len(self.test_data) else data
        test_acc = accuracy(self.model, full) if data is not None and full is not None else None
        robust = self._robust_accuracy(data, self.config.eval_steps) if data is not None else None
        extra: dict[str, Any] = {"counters": dict(self.method.counters)}
        if robust is not None and self._eval_threat is not None:
            extra["pgd"] = {"norm": self._eval_threat[0], "eps": self._eval_threat[1],
                            "steps": self.config.eval_steps, "n": len(data) if data else 0}
        events = [e for e in self._guard_events if e.get("epoch") is None]
        for event in events:
            event["epoch"] = self.epoch + 1
        if events:
            extra["guard_events"] = events
        if self._guard_checks:
            extra["guard"] = self._guard_checks
            self._guard_checks = []
        return EpochRecord(
            epoch=self.epoch + 1,
            loss=self._loss_sum / max(self._loss_count, 1),
            train_accuracy=accuracy(self.model, self.train_data.head(2000)),
            test_accuracy=test_acc,
            seconds=self._epoch_seconds,
            robust_accuracy=robust,
            steps=self.global_step,
            lr=self.config.lr * self._lr_factor(self.global_step - 1),
            extra=extra,
        )

    def _rewrite_log(self) -> None:
        if self.log_path is not None and self.world.is_main:
            write_text(self.log_path, "".join(json.dumps(asdict(r)) + "\n" for r in self.history))

    # ------------------------------------------------------------------- fit
    def fit(self, *, resume: bool = False, max_steps: int | None = None) -> TrainResult:
        """Train to ``config.epochs``; ``resume`` continues from the checkpoint when it exists.

        ``max_steps`` ends this call after that many steps (checkpointed), e.g. to slice a long
        job; a later ``fit(resume=True)`` goes on. The method's ``prepare`` (validation,
        pseudo-labelling) runs before the first step. The checkpoint folder is locked for the
        run (``ConfigError`` at once when another process trains into it).
        """
        if self.checkpoint_dir is None or not self.world.is_main:
            return self._fit(resume, max_steps)
        with lock_output_dir(self.checkpoint_dir):
            return self._fit(resume, max_steps)

    def _fit(self, resume: bool, max_steps: int | None) -> TrainResult:
        start = time.perf_counter()
        resumed_from: int | None = None
        self._reset_state()
        if resume:
            if self.checkpoint_path is None:
                raise ConfigError("resume needs a checkpoint folder (--checkpoint-dir)")
            if self.checkpoint_path.exists():
                self.load_state_dict(load_checkpoint(self.checkpoint_path, self.device))
                resumed_from = self.global_step
        if self.world.distributed:
            check_same_settings({
                "config": self._comparable_config(), "epochs": self.config.epochs,
                "method": self.method.config(), "resume": resume, "resumed_from": resumed_from,
                "data": tensor_digest({"x": self.train_data.x, "y": self.train_data.y}),
            }, "training")
            broadcast_parameters(self.model)
        self.method.prepare(self.model, self.train_data, config=self.config, fit=_fit_standard)
        main = self.world.is_main
        if main and resumed_from is None and self.log_path is not None and self.log_path.exists():
            self.log_path.unlink()
        if resumed_from is not None:
            self._rewrite_log()
        done_steps = 0
        spe = self.steps_per_epoch
        with progress_bar(self.total_steps, f"train {self.method.name}", self.progress and main) as bar:
            bar.advance(min(self.global_step, self.total_steps))
            while self.epoch < self.config.epochs and self._stopped is None:
                shuffle = make_generator(mix_seed(self.config.seed, 0, self.epoch))
                order = torch.randperm(len(self.train_data), generator=shuffle)
                while self.step_in_epoch < spe:
                    if max_steps is not None and done_steps >= max_steps:
                        self.save()
                        return self._result(start, resumed_from, "max_steps")
                    tick = time.perf_counter()
                    batch = order[self.step_in_epoch * self.config.batch_size:][: self.config.batch_size]
                    start, stop = shard_bounds(len(batch), self.world.rank, self.world.size)
                    self._train_step(batch[start:stop], start, len(batch))
                    self.global_step += 1
                    self.step_in_epoch += 1
                    done_steps += 1
                    bar.advance()
                    guard = self.method.guard
                    stop = bool(guard and guard.every and self.global_step % guard.every == 0
                                and self._check_guard("step"))
                    self._epoch_seconds += time.perf_counter() - tick
                    if stop:
                        break
                    every = self.config.checkpoint_every
                    if every and self.global_step % every == 0 and self.step_in_epoch < spe:
                        self.save()
                if self._stopped is None and self.method.guard is not None and not self.method.guard.every:
                    self._check_guard("epoch")
                record = self._end_epoch()
                self.history.append(record)
                if self.log_path is not None and main:
                    append_jsonl(self.log_path, asdict(record))
                bar.describe(
                    f"train {self.method.name} epoch {record.epoch}/{self.config.epochs} "
                    f"loss {record.loss:.3f}"
                    + (f" acc {record.test_accuracy:.3f}" if record.test_accuracy is not None else "")
                    + (f" pgd {record.robust_accuracy:.3f}" if record.robust_accuracy is not None else "")
                )
                self.epoch += 1
                self.step_in_epoch = 0
                self._loss_sum, self._loss_count, self._epoch_seconds = 0.0, 0, 0.0
                self.save()
        return self._result(start, resumed_from, self._stopped)

    def _result(self, start: float, resumed_from: int | None, stopped: str | None) -> TrainResult:
        return TrainResult(
            method=self.method.config(),
            config=asdict(self.config),
            history=tuple(self.history),
            seconds=time.perf_counter() - start,
            steps=self.global_step,
            stopped=stopped,
            resumed_from_step=resumed_from,
            counters=dict(self.method.counters),
        )


def train(
    model: nn.Module,
    train_data: Dataset,
    *,
    method: Method | TrainingMethod | None = None,
    config: TrainConfig | None = None,
    test_data: Dataset | None = None,
    log_path: str | Path | None = None,
    progress: bool = False,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``model`` in place with ``method`` (standard by default); see ``Trainer``."""
    trainer = Trainer(
        model, train_data, method=method, config=config, test_data=test_data,
        log_path=log_path, checkpoint_dir=checkpoint_dir, progress=progress,
    )
    return trainer.fit(resume=resume)


def _fit_standard(model: nn.Module, data: Dataset, config: TrainConfig) -> TrainResult:
    """Train ``model`` with the standard method (a method's helper model, e.g. a pseudo-labeller)."""
    return train(model, data, method=Standard(), config=config)
