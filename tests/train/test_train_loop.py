"""The trainer: JSON-lines metrics, atomic checksummed checkpoints, exact resume after an
interruption or a crash, refusal of corrupt or unsafe checkpoints, settings checks."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hardened.data import Dataset, load_splits
from hardened.errors import ConfigError, DataError
from hardened.models import build_model
from hardened.train import (
    CHECKPOINT_NAME,
    PGDTraining,
    TrainConfig,
    Trainer,
    load_checkpoint,
    make_method,
    split_unlabeled,
    train,
)
from hardened.train.loop import lr_factor, save_checkpoint

CONFIG = TrainConfig(epochs=3, batch_size=64, lr=3e-3, eval_n=60, eval_steps=3, checkpoint_every=5)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return load_splits("digits").train.head(600)


def fresh(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32,))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def pgd() -> PGDTraining:
    return PGDTraining(eps=0.15, steps=3)


class CrashAt(PGDTraining):
    """PGD training that raises at one global step, like a killed process."""

    def __init__(self, step: int) -> None:
        super().__init__(eps=0.15, steps=3)
        self.crash_step = step

    def updates(self, model, x, y, ctx):
        if ctx.step == self.crash_step:
            raise KeyboardInterrupt("simulated kill")
        yield from super().updates(model, x, y, ctx)


def test_log_has_the_epoch_metrics(data, tmp_path):
    log = tmp_path / "run.log.jsonl"
    result = train(fresh(), data, method=pgd(), config=CONFIG, test_data=data, log_path=log)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    for line in lines:
        assert {"loss", "test_accuracy", "robust_accuracy", "seconds", "train_accuracy"} <= set(line)
        assert 0 <= line["robust_accuracy"] <= 1 and 0.2 <= line["test_accuracy"] <= 1
        assert line["extra"]["pgd"] == {"norm": "linf", "eps": 0.15, "steps": 3, "n": 60}
    assert result.steps == 3 * 10 and result.stopped is None


def test_resume_after_max_steps_reproduces_the_uninterrupted_weights(data, tmp_path):
    reference = fresh()
    train(reference, data, method=pgd(), config=CONFIG)
    sliced = Trainer(fresh(), data, method=pgd(), config=CONFIG, checkpoint_dir=tmp_path)
    first = sliced.fit(max_steps=13)  # mid-epoch, between two step checkpoints
    assert first.stopped == "max_steps" and first.steps == 13
    model = fresh(seed=99)  # the checkpoint, not the initial weights, must decide
    result = Trainer(model, data, method=pgd(), config=CONFIG, checkpoint_dir=tmp_path).fit(resume=True)
    assert result.resumed_from_step == 13 and result.steps == 30
    assert same_weights(model, reference)


def test_resume_after_a_crash_neither_loses_nor_repeats_steps(data, tmp_path):
    reference = fresh()
    ref_result = train(reference, data, method=pgd(), config=CONFIG)
    log = tmp_path / "log.jsonl"
    crashing = Trainer(fresh(), data, method=CrashAt(17), config=CONFIG, checkpoint_dir=tmp_path,
                       log_path=log)
    with pytest.raises(KeyboardInterrupt):
        crashing.fit()
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["global_step"] == 15  # the last step checkpoint before the crash
    model = fresh()
    result = Trainer(model, data, method=pgd(), config=CONFIG, checkpoint_dir=tmp_path,
                     log_path=log).fit(resume=True)
    assert result.resumed_from_step == 15
    assert same_weights(model, reference)
    assert result.counters == ref_result.counters  # no repeated or lost adversarial batches
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("robust", [{}, {"robust_loss": "trades", "beta": 3.0, "labelled": "adversarial"}],
                         ids=["pgd", "trades-both"])
def test_resume_restores_pseudo_labels_without_relabelling(data, tmp_path, robust):
    labelled, pool = split_unlabeled(data, 0.5)
    config = TrainConfig(epochs=2, batch_size=64, lr=3e-3, eval_n=0)

    def method():
        return make_method("semi-supervised", pool=pool, eps=0.15, steps=2, labeler_epochs=1, **robust)

    reference = fresh()
    ref = train(reference, labelled, method=method(), config=config)
    Trainer(fresh(), labelled, method=method(), config=config, checkpoint_dir=tmp_path).fit(max_steps=4)
    model = fresh()
    result = Trainer(model, labelled, method=method(), config=config, checkpoint_dir=tmp_path).fit(resume=True)
    assert result.counters == ref.counters and result.counters["pseudo_labelled"] == len(pool)
    assert same_weights(model, reference)


def test_corrupt_checkpoint_is_detected_and_not_loaded(data, tmp_path):
    Trainer(fresh(), data, method=pgd(), config=CONFIG, checkpoint_dir=tmp_path).fit(max_steps=5)
    path = tmp_path / CHECKPOINT_NAME
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    model = fresh(seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DataError, match="corrupt"):
        Trainer(model, data, method=pgd(), config=CONFIG, checkpoint_dir=tmp_path).fit(resume=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad header"):
        load_checkpoint(path)


class Payload:
    """An arbitrary object: a checkpoint holding it must not be unpickled."""


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    save_checkpoint(tmp_path / "evil.ckpt", {"model": {}, "payload": Payload()})
    with pytest.raises(DataError, match="cannot be read safely"):
        load_checkpoint(tmp_path / "evil.ckpt")


def test_resume_with_other_settings_is_refused(data, tmp_path):
    Trainer(fresh(), data, method=pgd(), config=CONFIG, checkpoint_dir=tmp_path).fit(max_steps=3)
    with pytest.raises(ConfigError, match="different training method"):
        Trainer(fresh(), data, method=PGDTraining(eps=0.2, steps=3), config=CONFIG,
                checkpoint_dir=tmp_path).fit(resume=True)
    other = TrainConfig(epochs=3, batch_size=32, lr=3e-3, eval_n=60, eval_steps=3)
    with pytest.raises(ConfigError, match="different training settings"):
        Trainer(fresh(), data, method=pgd(), config=other, checkpoint_dir=tmp_path).fit(resume=True)
    with pytest.raises(ConfigError, match="checkpoint folder"):
        Trainer(fresh(), data, method=pgd(), config=CONFIG).fit(resume=True)


def test_resume_without_a_checkpoint_starts_fresh(data, tmp_path):
    model = fresh()
    result = Trainer(model, data, config=TrainConfig(epochs=1, eval_n=0), checkpoint_dir=tmp_path).fit(resume=True)
    assert result.resumed_from_step is None and (tmp_path / CHECKPOINT_NAME).exists()


class PlainProtocol:
    """A user's method written against the bare protocol (batch_loss + config)."""

    name = "plain"

    def __init__(self) -> None:
        self.calls = 0

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: Any) -> torch.Tensor:
        self.calls += 1
        return F.cross_entropy(model(x), y)

    def config(self) -> dict[str, Any]:
        return {"method": self.name}


def test_plain_protocol_methods_and_cpu_amp_train(data):
    method = PlainProtocol()
    result = train(fresh(), data, method=method, config=TrainConfig(epochs=1, batch_size=100, eval_n=50))
    assert method.calls == 6 and result.method == {"method": "plain"}
    amp = train(fresh(), data, method=pgd(), config=TrainConfig(epochs=1, batch_size=100, eval_n=50, amp=True))
    assert torch.isfinite(torch.tensor(amp.history[0].loss))


def test_schedules_and_config_checks():
    assert lr_factor("constant", 5, 10) == 1.0
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("cyclic", 4, 10) == pytest.approx(1.0) and lr_factor("cyclic", 0, 10) == 0.0
    for bad in ({"lr_schedule": "step"}, {"checkpoint_every": -1}, {"eval_eps": 0.0}, {"epochs": 0}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    with pytest.raises(ConfigError, match="empty"):
        Trainer(fresh(), Dataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long),
                                 tuple("0123456789"), "none"))


def test_checkpoint_round_trip_is_bytes_exact(tmp_path):
    state = {"model": {"w": torch.arange(6.0)}, "history": [{"epoch": 1}], "n": 3}
    save_checkpoint(tmp_path / "a.ckpt", state)
    loaded = load_checkpoint(tmp_path / "a.ckpt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["n"] == 3
    buffer = io.BytesIO((tmp_path / "a.ckpt").read_bytes())
    assert buffer.readline().startswith(b"HARDENED-CHECKPOINT 1 sha256=")
