"""Training methods: each improves PGD robust accuracy over standard training on ``digits``;
extra inputs (source models, unlabeled pool) are really used; bad settings fail before training;
the catastrophic-overfitting guard fires on a constructed collapse."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardened.data import Splits, load_splits
from hardened.errors import ConfigError
from hardened.evaluate import robust_accuracy_sweep
from hardened.models import build_model
from hardened.train import (
    CollapseGuard,
    FastFGSM,
    StepContext,
    StepLoss,
    TrainConfig,
    Trainer,
    accuracy,
    make_method,
    split_unlabeled,
    train,
)

EPS = 0.15
CONFIG = TrainConfig(epochs=6, batch_size=64, lr=3e-3, eval_n=0)


def digits_mlp(seed: int = 0, classes: int = 10, shape: tuple[int, int, int] = (1, 8, 8)) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", input_shape=shape, num_classes=classes, hidden=(64,))


class Counting(nn.Module):
    """Wraps a model and counts the images it sees (an independent check of method counters)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += x.shape[0]
        return self.inner(x)


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_splits("digits")


@pytest.fixture(scope="module")
def baseline(digits: Splits) -> tuple[nn.Module, float]:
    model = digits_mlp()
    train(model, digits.train, config=CONFIG)
    return model, pgd_accuracy(model, digits)


def pgd_accuracy(model: nn.Module, digits: Splits) -> float:
    x, y = digits.test.x[:300], digits.test.y[:300]
    return robust_accuracy_sweep(model, x, y, eps_values=[EPS], steps=10).robust_accuracy[0]


@pytest.mark.parametrize(
    ("name", "options", "margin"),
    [
        ("pgd", {"eps": EPS, "steps": 5}, 0.15),
        ("pgd", {"eps": 1.0, "norm": "l2", "steps": 5}, 0.05),
        ("fgsm", {"eps": EPS}, 0.15),
        ("trades", {"eps": EPS, "steps": 5, "beta": 3.0}, 0.15),
        ("noise", {"sigma": 0.3}, 0.04),
    ],
)
def test_method_beats_standard_under_pgd(digits, baseline, name, options, margin):
    model = digits_mlp()
    train(model, digits.train, method=make_method(name, **options), config=CONFIG)
    robust = pgd_accuracy(model, digits)
    assert robust > baseline[1] + margin, (name, robust, baseline[1])
    assert accuracy(model, digits.test) > 0.8


def test_ensemble_uses_its_source_models(digits, baseline):
    sources = [Counting(baseline[0]), Counting(digits_mlp(seed=5))]
    method = make_method("ensemble", sources=sources, eps=EPS)
    model = digits_mlp()
    result = train(model, digits.train, method=method, config=CONFIG)
    assert pgd_accuracy(model, digits) > baseline[1] + 0.1
    counts = result.counters
    assert counts["own"] + counts["source_0"] + counts["source_1"] == CONFIG.epochs * len(digits.train)
    assert counts["source_0"] > 0 and counts["source_1"] > 0
    assert abs(counts["source_0"] - counts["source_1"]) <= CONFIG.batch_size  # round robin
    # each crafted example costs one gradient pass through its source (one step, R+FGSM)
    for k, source in enumerate(sources):
        assert source.images >= result.counters[f"source_{k}"]


def test_semi_supervised_pseudo_labels_and_uses_the_pool(digits, baseline):
    labelled, pool = split_unlabeled(digits.train, 0.75, seed=0)
    method = make_method("semi-supervised", pool=pool, eps=EPS, steps=5)
    model = digits_mlp()
    result = train(model, labelled, method=method, config=CONFIG)
    plain = digits_mlp()
    train(plain, labelled, method=make_method("pgd", eps=EPS, steps=5), config=CONFIG)
    assert result.counters["pseudo_labelled"] == len(pool)
    assert result.counters["pool_samples"] == result.counters["labelled_samples"] > 0
    robust = pgd_accuracy(model, digits)
    assert robust > baseline[1] + 0.1
    assert robust > pgd_accuracy(plain, digits)  # the pool adds robustness over plain PGD


def test_semi_supervised_takes_a_given_labeler_and_lowers_the_adversarial_lr(digits):
    labelled, pool = split_unlabeled(digits.train, 0.5, seed=1)
    labeler = Counting(digits_mlp(seed=3))
    method = make_method("semi-supervised", pool=pool, eps=EPS, steps=2, labeler=labeler,
                         adversarial_lr_scale=0.25)
    model = digits_mlp()
    method.prepare(model, labelled)
    assert labeler.images >= len(pool)
    ctx = StepContext(epoch=0, step=0, generator=torch.Generator().manual_seed(0), lr=1.0)
    kinds = [(u.kind, u.lr_scale) for u in method.updates(model, labelled.x[:8], labelled.y[:8], ctx)]
    assert kinds == [("labelled", 1.0), ("pool", 0.25)]


def test_semi_supervised_trades_loss_is_the_trades_loss_on_both_batches(digits):
    """robust_loss="trades": each update is TRADES' loss, the pool's on its pseudo-labels."""
    labelled, pool = split_unlabeled(digits.train, 0.5, seed=2)
    labeler = digits_mlp(seed=3)
    method = make_method("semi-supervised", pool=pool, eps=EPS, steps=3, labeler=labeler, robust_loss="trades",
                         beta=2.5, labelled="adversarial")
    assert method.params()["robust_loss"] == "trades" and method.params()["beta"] == 2.5
    model = digits_mlp(seed=4)
    method.prepare(model, labelled)
    x, y = labelled.x[:16], labelled.y[:16]
    ctx = StepContext(epoch=0, step=0, generator=torch.Generator().manual_seed(0), lr=1.0)
    first = next(iter(method.updates(model, x, y, ctx)))
    trades = make_method("trades", eps=EPS, steps=3, beta=2.5)
    trades._begin(ctx)
    expected = trades.batch_loss(model, x, y, torch.Generator().manual_seed(0))
    assert first.kind == "labelled"
    torch.testing.assert_close(first.loss, expected)
    # the pool update is TRADES on the pseudo-labels: its CE part is > 0 and beta scales the KL part
    updates = list(method.updates(model, x, y, StepContext(epoch=0, step=1, generator=torch.Generator().manual_seed(1), lr=1.0)))
    assert [u.kind for u in updates] == ["labelled", "pool"]
    assert torch.isfinite(updates[1].loss) and updates[1].loss > 0


def test_semi_supervised_trades_adds_robustness(digits, baseline):
    labelled, pool = split_unlabeled(digits.train, 0.75, seed=0)
    method = make_method("semi-supervised", pool=pool, eps=EPS, steps=5, robust_loss="trades", beta=3.0)
    model = digits_mlp()
    result = train(model, labelled, method=method, config=CONFIG)
    assert result.counters["pool_samples"] == result.counters["labelled_samples"] > 0
    assert pgd_accuracy(model, digits) > baseline[1] + 0.1


def test_semi_supervised_rejects_an_unknown_robust_loss():
    with pytest.raises(ConfigError, match="robust_loss must be one of pgd, trades"):
        make_method("semi-supervised", pool=torch.rand(4, 1, 8, 8), eps=0.1, robust_loss="mart")
    with pytest.raises(ConfigError, match="beta must be"):
        make_method("semi-supervised", pool=torch.rand(4, 1, 8, 8), eps=0.1, robust_loss="trades", beta=-1.0)


def test_semi_supervised_outside_a_trainer_needs_a_labeler(digits):
    labelled, pool = split_unlabeled(digits.train, 0.5, seed=1)
    method = make_method("semi-supervised", pool=pool, eps=EPS, steps=2)
    with pytest.raises(ConfigError, match="pass labeler="):
        method.prepare(digits_mlp(), labelled)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("pgd", {"eps": 0.0}, "eps must be > 0"),
        ("fgsm", {"eps": -0.1}, "eps must be > 0"),
        ("trades", {"eps": 0.0}, "eps must be > 0"),
        ("pgd", {"eps": 0.1, "step_size": 0.2, "random_start": False}, "larger than eps"),
        ("fgsm", {"eps": 0.1, "random_start": False}, "larger than eps"),
        ("noise", {"sigma": 0.0}, "sigma must be > 0"),
        ("semi-supervised", {"pool": torch.zeros(0, 1, 8, 8), "eps": 0.1}, "pool is empty"),
        ("ensemble", {"sources": [], "eps": 0.1}, "at least one source"),
        ("ensemble", {"eps": 0.1}, "needs sources"),
        ("pgd", {"eps": 0.1, "stepz": 3}, "bad options"),
        ("madry", {}, "unknown training method"),
    ],
)
def test_bad_settings_are_config_errors(name, options, match):
    with pytest.raises(ConfigError, match=match):
        make_method(name, **options)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: make_method("ensemble", sources=[digits_mlp(shape=(1, 28, 28))], eps=0.1),
         "cannot take images"),
        (lambda: make_method("ensemble", sources=[digits_mlp(classes=3)], eps=0.1), "3"),
        (lambda: make_method("semi-supervised", pool=torch.rand(10, 1, 28, 28), eps=0.1),
         "pool has images of shape"),
    ],
)
def test_incompatible_inputs_fail_before_training(digits, tmp_path, make, match):
    model = digits_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, digits.train, method=make(), config=CONFIG,
                      log_path=tmp_path / "log.jsonl", checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match=match):
        trainer.fit()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not (tmp_path / "log.jsonl").exists() and trainer.global_step == 0


class Sabotaged(FastFGSM):
    """Fast FGSM training that, after ``after`` steps, trains on random labels: a constructed
    collapse of PGD accuracy for the guard to catch."""

    def __init__(self, after: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.after = after

    def updates(self, model, x, y, ctx: StepContext):
        if ctx.step < self.after:
            yield from super().updates(model, x, y, ctx)
            return
        wrong = torch.randint(0, 10, y.shape, generator=ctx.generator)
        yield StepLoss(F.cross_entropy(model(x), wrong), 5.0)


def test_collapse_guard_stops_and_restores_the_best_weights(digits):
    guard = CollapseGuard(drop=0.2, every=10, n=150, steps=5, action="stop")
    model = digits_mlp()
    config = TrainConfig(epochs=6, batch_size=64, lr=3e-3, eval_n=0)
    result = train(model, digits.train, method=Sabotaged(60, eps=EPS, guard=guard), config=config,
                   test_data=digits.test)
    assert result.stopped is not None and "catastrophic overfitting" in result.stopped
    assert result.steps < 6 * 23
    events = [e for r in result.history for e in r.extra.get("guard_events", [])]
    assert events and events[0]["event"] == "catastrophic_overfitting"
    assert events[0]["pgd_accuracy"] < events[0]["best_pgd_accuracy"] - 0.2
    restored = robust_accuracy_sweep(model, digits.test.x[:150], digits.test.y[:150],
                                     eps_values=[EPS], steps=5, seed=0).robust_accuracy[0]
    assert restored == pytest.approx(events[0]["best_pgd_accuracy"])


def test_collapse_guard_report_warns_and_goes_on(digits):
    guard = CollapseGuard(drop=0.2, every=10, n=150, steps=5, action="report")
    config = TrainConfig(epochs=4, batch_size=64, lr=3e-3, eval_n=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(digits_mlp(), digits.train, method=Sabotaged(40, eps=EPS, guard=guard),
                       config=config, test_data=digits.test)
    assert result.stopped is None and result.steps == 4 * 23
    assert any("catastrophic overfitting" in str(w.message) for w in caught)


def test_guard_rule():
    guard = CollapseGuard(drop=0.3)
    assert guard.collapsed(0.2, 0.6) and not guard.collapsed(0.4, 0.6)
    with pytest.raises(ConfigError):
        CollapseGuard(action="ignore")


def test_eps_warmup_ramps_the_threat_model():
    method = make_method("pgd", eps=0.3, steps=2, eps_warmup=0.5)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    model = digits_mlp()
    sizes = []
    for step in (0, 4, 9, 10, 19):
        ctx = StepContext(epoch=0, step=step, generator=torch.Generator().manual_seed(step), lr=1.0,
                          total_steps=20)
        list(method.updates(model, x, y, ctx))
        threat, step_size = method._current()
        sizes.append(round(threat.eps, 6))
        assert step_size == pytest.approx(method.step_size * threat.eps / 0.3)
    assert sizes == [0.03, 0.15, 0.3, 0.3, 0.3]
    with pytest.raises(ConfigError, match="eps_warmup"):
        make_method("pgd", eps=0.3, eps_warmup=1.5)
