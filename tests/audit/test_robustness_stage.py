"""The audit's robustness stage runs the cascade: a quantised model is broken and flagged (in the
verdict and the sanity stage), a plain one is not flagged, and the stage is cached and resumes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import hardened.evaluate.cascade as cascade_module
from hardened.audit import run_audit
from hardened.audit.stages.robustness import RobustnessStage
from hardened.audit.stages.sanity import SanityStage
from hardened.data import Splits, load_dataset
from helpers import TINY_BUDGET
from masking_toys import Quantise

BUDGET = dataclasses.replace(TINY_BUDGET, n_eval=40, n_minimal=8)


@pytest.fixture(scope="module")
def digits() -> Splits:
    data = load_dataset("digits", split="all")
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.y), generator=g)
    train, test = order[:1200], order[1200:1300]
    return Splits(train=dataclasses.replace(data, x=data.x[train], y=data.y[train]),
                  test=dataclasses.replace(data, x=data.x[test], y=data.y[test]))


@pytest.fixture(scope="module")
def net(digits) -> nn.Module:
    """A small MLP fitted to the digits (about 95% test accuracy, not robust at Linf 0.3)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        loss = nn.functional.cross_entropy(model(digits.train.x), digits.train.y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


def _audit(model, splits, folder):
    return run_audit(model, splits, out_dir=folder, budget=BUDGET, seed=0, stages=[RobustnessStage(), SanityStage()])


def test_a_quantised_model_is_broken_and_the_fired_check_is_named(digits, net, tmp_path):
    quantised = nn.Sequential(Quantise(4), net).eval()
    result = _audit(quantised, digits, tmp_path / "report")
    robustness, sanity = result.stage("robustness"), result.stage("sanity")
    assert robustness.status == sanity.status == "ok", (robustness.message, sanity.message)
    summary = robustness.summary
    assert summary.linf_max_eps == 0.3 and summary.linf_max_accuracy < 0.10  # single digit, as plain PGD is not
    assert "zero-gradients" in summary.masking_fired
    assert any("BPDA" in a for a in summary.countermeasures)
    fired = result.verdict.split("(masking check fired: ", 1)[1].split(")", 1)[0].split(", ")
    assert "zero-gradients" in fired and "upper bound" in result.verdict
    assert "masking: zero-gradients" in sanity.summary.flagged
    fired = [m for m in robustness.data["masking"] if m["fired"]]
    # the quantiser shatters gradients; the smoothed-gradient member may also see it (another masking sign)
    assert [m["name"] for m in fired][0] == "zero-gradients" and "linf 0.3" in fired[0]["fired_at"]
    assert {m["name"] for m in fired} <= {"zero-gradients", "smoothed-gradient"}
    broken = {c["label"]: c["broken"] for c in robustness.data["cascades"]["linf"][-1]["contributions"]}
    assert sum(broken.values()) > 0 and set(broken) == set(robustness.data["members"])
    checks = next(t for t in robustness.tables if t.title.startswith("Gradient-masking checks"))
    assert ["zero-gradients", "fired"] == list(checks.rows[[r[0] for r in checks.rows].index("zero-gradients")][:2])


def test_a_plain_model_fires_no_check_and_its_cascade_beats_one_step(digits, net, tmp_path):
    result = _audit(net, digits, tmp_path / "report")
    robustness = result.stage("robustness")
    assert robustness.status == "ok", robustness.message
    assert robustness.summary.masking_fired == () and robustness.summary.countermeasures == ()
    assert "masking check fired" not in result.verdict
    assert not [c for c in result.stage("sanity").summary.flagged if c.startswith("masking:")]
    one_step, cascade = (s["robust_accuracy"] for s in robustness.data["sweeps"][:2])
    assert all(c <= o for c, o in zip(cascade, one_step, strict=True))  # the cascade is the stronger bound
    assert robustness.data["preset"] == "quick" and len(robustness.data["members"]) == len(cascade_module.PRESETS["quick"])


def test_the_stage_is_cached_and_resumes_after_a_failure(digits, net, tmp_path, monkeypatch):
    reference = _audit(net, digits, tmp_path / "reference").stage("robustness")
    real = cascade_module._attack_batch
    calls = {"n": 0}

    def dies_on_the_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    folder = tmp_path / "report"
    monkeypatch.setattr(cascade_module, "_attack_batch", dies_on_the_third_batch)
    assert _audit(net, digits, folder).stage("robustness").status == "failed"
    assert list((folder / "stages").glob("robustness-*/cascade/linf/eps-*/attack*.pt"))  # its state is kept
    monkeypatch.setattr(cascade_module, "_attack_batch", real)
    resumed = _audit(net, digits, folder).stage("robustness")
    assert resumed.status == "ok" and resumed.data["resumed"] == 2
    assert resumed.summary == reference.summary
    assert resumed.data["cascades"]["l2"][-1]["robust_accuracy"] == reference.data["cascades"]["l2"][-1][
        "robust_accuracy"]
    assert not list((folder / "stages").glob("robustness-*"))  # the state goes once the result is cached

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cached stage was recomputed")

    monkeypatch.setattr(cascade_module, "_attack_batch", must_not_run)
    again = _audit(net, digits, folder).stage("robustness")
    assert again.status == "ok" and again.summary == reference.summary


def test_masking_check_passes_exactly_when_the_finding_did_not_fire():
    from hardened.evaluate.masking import MaskingFinding, gradient_check
    from hardened.evaluate.sanity import masking_check

    fired = masking_check(MaskingFinding("zero-gradients", True, "flat.", "bpda", {"share": 0.9}), ["linf 0.3"])
    assert not fired.passed and fired.name == "masking: zero-gradients"
    assert fired.explanation == "flat. (fired at linf 0.3) Answered with: bpda."
    assert fired.numbers == {"share": 0.9, "fired_at": ["linf 0.3"]}
    x = torch.rand(8, 1, 8, 8)
    flat = nn.Sequential(Quantise(4), nn.Flatten(), nn.Linear(64, 3))
    smooth = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    y = torch.zeros(8, dtype=torch.long)
    assert not masking_check(gradient_check(flat, x, y)).passed
    assert masking_check(gradient_check(smooth, x, y)).passed
