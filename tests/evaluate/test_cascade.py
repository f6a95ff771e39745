"""The cascade evaluator: per-sample worst case, marginal contributions, counts and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from hardened.attacks import ATTACKS, make_attack
from hardened.errors import ConfigError, DataError, InputError
from hardened.evaluate import cascade as cascade_module
from hardened.evaluate.cascade import (
    PRESETS,
    CascadeStep,
    cascade_sweep,
    resolve_steps,
    run_cascade,
)
from masking_toys import trained_cnn

# deterministic members (no random start), so each one alone is reproducible per sample
MEMBERS = [
    CascadeStep("fgsm", {}),
    CascadeStep("pgd", {"steps": 8, "random_start": False, "loss": "margin"}),
    CascadeStep("mifgsm", {"steps": 8}),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [0.2, 0.3])
def test_cascade_is_never_weaker_per_sample_than_any_member(toy_test, seed, eps):
    model = trained_cnn(seed)
    x, y = toy_test.x, toy_test.y
    result = run_cascade(model, x, y, eps=eps, preset=MEMBERS, batch_size=32, masking="off")
    for step in MEMBERS:
        alone = make_attack(step.attack, eps=eps, **step.options)(model, x, y)
        broken_alone = alone.pred_adv != y
        assert not bool((broken_alone & result.robust).any()), f"{step.label} broke a point the cascade kept"
        alone_margin = torch.gather(model(alone.x_adv), 1, y[:, None]).squeeze(1)
        others = model(alone.x_adv).scatter(1, y[:, None], float("-inf")).amax(1)
        still = result.robust
        assert bool((result.margin[still] <= (alone_margin - others)[still] + 1e-5).all())
    assert bool((result.robust <= result.clean_correct).all())


def test_contributions_add_up_and_name_the_breaker(toy_net, toy_test):
    x, y = toy_test.x, toy_test.y
    result = run_cascade(toy_net, x, y, eps=0.3, preset=MEMBERS, batch_size=25, masking="off")
    contributions = result.contributions
    assert contributions[0].attacked == int(result.clean_correct.sum())
    for before, after in zip(contributions, contributions[1:], strict=False):
        assert after.attacked == before.attacked - before.broken
    assert sum(c.broken for c in contributions) == int(result.clean_correct.sum() - result.robust.sum())
    labels = [c.label for c in contributions]
    for k in range(result.n):
        if result.clean_correct[k] and not result.robust[k]:
            assert result.broken_by[k] in labels
            assert result.margin[k] <= 0
            assert int(toy_net(result.x_adv[k : k + 1]).argmax()) != int(y[k])
        else:
            assert result.broken_by[k] is None
    assert (result.x_adv - x).abs().max() <= 0.3 + 1e-6
    assert 0.0 <= float(result.x_adv.min()) and float(result.x_adv.max()) <= 1.0
    summary = result.to_dict(per_sample=True)
    json.dumps(summary)
    assert summary["robust_accuracy"] == result.robust_accuracy
    assert [c["broken"] for c in summary["contributions"]] == [c.broken for c in contributions]


def test_counts_of_one_fgsm_step_match_the_hand_count(toy_net, toy_test):
    """Clean pass (N), then per attacked point: the attack's checked clean pass, whose graph
    the one gradient reuses, its final pass, and the cascade's verification pass."""
    x, y = toy_test.x[:40], toy_test.y[:40]
    result = run_cascade(toy_net, x, y, eps=0.1, preset=[CascadeStep("fgsm", {})], masking="off")
    n, m = len(x), int(result.clean_correct.sum())
    assert (result.forwards, result.backwards) == (n + 3 * m, m)
    assert result.contributions[0].queries == 2 * m
    probe = min(64, m)
    checked = run_cascade(toy_net, x, y, eps=0.1, preset=[CascadeStep("fgsm", {})])
    assert (checked.forwards, checked.backwards) == (n + 3 * m + 5 * probe, m + probe)


def test_eot_counts_every_sample(defences, toy_test):
    x, y = toy_test.x[:20], toy_test.y[:20]
    torch.manual_seed(0)
    result = run_cascade(defences["randomized"], x, y, eps=0.1, preset=[CascadeStep("fgsm", {})], eot_samples=4)
    fgsm = result.contributions[0]
    assert fgsm.backwards == 4 * fgsm.attacked
    assert fgsm.forwards == 4 * 2 * fgsm.attacked + fgsm.attacked


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_at", [(0, 1), (1, 0), (2, 2)])
def test_a_resumed_cascade_equals_an_uninterrupted_one(toy_net, toy_test, tmp_path, stop_at):
    x, y = toy_test.x, toy_test.y
    steps = [CascadeStep("fgsm", {}), CascadeStep("pgd", {"steps": 5}), CascadeStep("pgd", {"steps": 10, "loss": "margin"})]
    options = {"eps": 0.3, "preset": steps, "batch_size": 16, "seed": 4}
    whole = run_cascade(toy_net, x, y, **options)

    def interrupt(attack: int, batch: int, record: dict) -> None:
        if (attack, batch) == stop_at:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_cascade(toy_net, x, y, state_dir=tmp_path, callback=interrupt, **options)
    resumed = run_cascade(toy_net, x, y, state_dir=tmp_path, **options)
    assert resumed.resumed > 0
    assert torch.equal(resumed.x_adv, whole.x_adv)
    assert torch.equal(resumed.robust, whole.robust)
    assert torch.equal(resumed.margin, whole.margin)
    assert resumed.broken_by == whole.broken_by
    strip = [{k: v for k, v in c.to_dict().items() if k != "seconds"} for c in resumed.contributions]
    assert strip == [{k: v for k, v in c.to_dict().items() if k != "seconds"} for c in whole.contributions]
    again = run_cascade(toy_net, x, y, state_dir=tmp_path, **options)
    assert again.resumed == sum(-(-c.attacked // 16) for c in whole.contributions)


def test_a_mismatched_resume_is_refused(toy_net, toy_test, tmp_path):
    x, y = toy_test.x[:20], toy_test.y[:20]
    run_cascade(toy_net, x, y, eps=0.3, preset=MEMBERS[:1], state_dir=tmp_path)
    with pytest.raises(ConfigError, match="other settings"):
        run_cascade(toy_net, x, y, eps=0.2, preset=MEMBERS[:1], state_dir=tmp_path)
    with pytest.raises(ConfigError, match="other settings"):
        run_cascade(toy_net, x[:10], y[:10], eps=0.3, preset=MEMBERS[:1], state_dir=tmp_path)
    record = next(tmp_path.glob("attack00-*.pt"))
    record.write_bytes(b"not a record")
    with pytest.raises(DataError, match="unreadable"):
        run_cascade(toy_net, x, y, eps=0.3, preset=MEMBERS[:1], state_dir=tmp_path)


def test_bad_inputs_are_library_errors(toy_net, toy_test):
    x, y = toy_test.x[:8], toy_test.y[:8]
    with pytest.raises(ConfigError, match="unknown cascade preset"):
        run_cascade(toy_net, x, y, eps=0.3, preset="fast")
    with pytest.raises(ConfigError, match="at least one attack"):
        run_cascade(toy_net, x, y, eps=0.3, preset=[])
    with pytest.raises(ConfigError, match="unknown attack"):
        run_cascade(toy_net, x, y, eps=0.3, preset=[("nope", {})])
    with pytest.raises(ConfigError):
        run_cascade(toy_net, x, y, eps=-1.0, preset=MEMBERS)
    with pytest.raises(InputError):
        run_cascade(toy_net, x * 3, y, eps=0.3, preset=MEMBERS)


def test_presets_are_ordered_lists_of_registered_names():
    assert list(PRESETS) == ["quick", "standard", "thorough"]
    assert [s.attack for s in resolve_steps("standard")] == ["apgd-ce", "apgd-ce", "apgd-t", "square"]
    assert resolve_steps([("pgd", {"steps": 3})]) == (CascadeStep("pgd", {"steps": 3}),)


NEEDS_APGD = pytest.mark.skipif(
    not {"apgd-ce", "apgd-t", "apgd-dlr", "square"} <= set(ATTACKS.names()), reason="APGD and Square not registered yet"
)


@NEEDS_APGD
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_its_attacks(preset):
    for step in PRESETS[preset]:
        attack = make_attack(step.attack, eps=0.3, norm="linf", seed=0, **step.options)
        assert attack.needs_gradients == (step.attack != "square")


@NEEDS_APGD
def test_the_quick_preset_breaks_the_quantised_toy_model(defences, toy_test):
    """Through BPDA, within 10 points (of 90 images) of the undefended net; masked without."""
    x, y = toy_test.x, toy_test.y
    plain = run_cascade(defences["plain"], x, y, eps=0.3, preset="quick")
    masked = run_cascade(defences["quantised"], x, y, eps=0.3, preset="quick", masking="off")
    answered = run_cascade(defences["quantised"], x, y, eps=0.3, preset="quick")
    assert masked.robust_accuracy >= plain.robust_accuracy + 0.1
    assert answered.robust_accuracy <= plain.robust_accuracy + 0.1
    assert [c.attack for c in answered.contributions] == [s.attack for s in PRESETS["quick"]]
    assert answered.contributions[0].broken > 0 and answered.countermeasures

@NEEDS_APGD
def test_a_score_based_member_that_finds_what_gradients_missed_fires_the_check(defences, toy_test):
    x, y = toy_test.x[:30], toy_test.y[:30]
    steps = [CascadeStep("fgsm", {}), CascadeStep("square", {"queries": 300})]
    result = run_cascade(defences["quantised"], x, y, eps=0.3, preset=steps, masking="off", escalate=False)
    fgsm, square = result.contributions
    assert fgsm.broken == 0 and square.broken > 0 and not square.gradient_attack and square.backwards == 0
    assert square.queries <= 300 * square.attacked
    [check] = [f for f in result.findings if f.name == "score-attack"]
    assert check.fired and check.numbers["broken"] == square.broken
    assert {result.broken_by[k] for k in range(30) if not result.robust[k] and result.clean_correct[k]} == {"square(queries=300)"}


@NEEDS_APGD
def test_a_score_based_member_that_breaks_what_gradients_missed_is_escalated(defences, toy_test, monkeypatch, tmp_path):
    """Square breaks points the (masked) gradient attack missed: it runs again with the larger
    budget on the points still robust, which can only lower the robust accuracy; resumable."""
    monkeypatch.setattr(cascade_module, "ESCALATED_QUERIES", 400)
    x, y = toy_test.x[:30], toy_test.y[:30]
    steps = [CascadeStep("fgsm", {}), CascadeStep("square", {"queries": 100})]
    plain = run_cascade(defences["quantised"], x, y, eps=0.3, preset=steps, masking="off", escalate=False)
    result = run_cascade(defences["quantised"], x, y, eps=0.3, preset=steps, masking="off", state_dir=tmp_path)
    fgsm, square, escalated = result.contributions
    assert square.broken > 0 and not square.escalated
    assert escalated.escalated and escalated.options == {"queries": 400} and escalated.label == "square(queries=400)"
    assert escalated.attacked == int(plain.robust.sum()) and escalated.queries <= 400 * escalated.attacked
    assert result.robust_accuracy == pytest.approx(plain.robust_accuracy - escalated.broken / 30)
    assert bool((result.robust <= plain.robust).all())
    again = run_cascade(defences["quantised"], x, y, eps=0.3, preset=steps, masking="off", state_dir=tmp_path)
    assert torch.equal(again.robust, result.robust) and again.resumed > 0
    # nothing to escalate: Square broke nothing the gradient attack missed, or it had the full budget
    assert cascade_module._escalation([fgsm, replace(square, broken=0)]) is None
    assert cascade_module._escalation([fgsm, replace(square, options={"queries": 400})]) is None
    assert cascade_module._escalation([square]) is None  # no gradient attack before it


def test_cascade_sweep_gives_clean_accuracy_at_zero_and_one_cascade_per_eps(toy_net, toy_test, tmp_path):
    x, y = toy_test.x[:30], toy_test.y[:30]
    swept = cascade_sweep(toy_net, x, y, eps_values=[0.3, 0.0, 0.1], preset=MEMBERS[:2], state_dir=tmp_path)
    assert swept.sweep.eps == [0.0, 0.1, 0.3] and [r.eps for r in swept.results] == [0.1, 0.3]
    clean = float((toy_net(x).argmax(1) == y).float().mean())
    assert swept.sweep.robust_accuracy[0] == pytest.approx(clean)
    assert swept.sweep.robust_accuracy[1:] == [r.robust_accuracy for r in swept.results]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eps-0.1", "eps-0.3"]
    assert swept.sweep.attack == "cascade" and json.dumps(swept.to_dict())


def test_another_process_cannot_use_the_state_folder_while_a_cascade_runs(toy_net, toy_test, tmp_path):
    x, y = toy_test.x[:10], toy_test.y[:10]
    probe = "import sys; from hardened._util.lock import lock_output_dir\nwith lock_output_dir(sys.argv[1]): pass"
    codes = []

    def from_outside(attack: int, batch: int, record: dict) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        codes.append(subprocess.run([sys.executable, "-c", probe, str(tmp_path)], env=env, capture_output=True).returncode)

    run_cascade(toy_net, x, y, eps=0.3, preset=MEMBERS[:1], state_dir=tmp_path, callback=from_outside)
    assert codes == [1]
    assert subprocess.run([sys.executable, "-c", probe, str(tmp_path)], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).returncode == 0


class _Thresholded(torch.nn.Module):
    """Three classes read from the first 8 pixels: z = (0.5, 4 sum_{i<8} relu(x_i - 0.6), -1).
    At pixels of 0.3 its gradient is exactly zero around the image, yet an L2 step under 1 flips
    the class: the plain gradient members cannot move, the smoothed one can."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lifted = 4 * torch.relu(x.flatten(1)[:, :8] - 0.6).sum(1)
        return torch.stack([torch.full_like(lifted, 0.5), lifted, torch.full_like(lifted, -1.0)], dim=1)


@NEEDS_APGD
@pytest.mark.parametrize("preset", ["quick", "standard"])
def test_the_smoothed_member_breaks_what_the_plain_gradient_cannot_reach(preset):
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.rand(24, 1, 16, 16, generator=g)
    x.view(24, -1)[:, :8] = 0.3
    y = torch.zeros(24, dtype=torch.int64)
    model = _Thresholded()
    result = run_cascade(model, x, y, eps=1.0, norm="l2", preset=preset, seed=0)
    by = {c.label: c.broken for c in result.contributions}
    plain, smoothed = (s.label for s in PRESETS[preset][:2])
    assert "smoothing" in smoothed and by[plain] == 0
    assert result.robust_accuracy <= 0.1 and by[smoothed] >= 0.9 * len(x) - by[plain]
    with torch.no_grad():
        assert torch.equal(~result.robust, model(result.x_adv).argmax(1) != y)
    finding = next(f for f in result.findings if f.name == "smoothed-gradient")
    assert finding.fired and "masked" in finding.meaning and result.masking_suspected


@NEEDS_APGD
def test_the_smoothed_gradient_finding_stays_silent_where_the_plain_gradient_breaks_everything(toy_net, toy_test):
    result = run_cascade(toy_net, toy_test.x[:24], toy_test.y[:24], eps=0.5, norm="linf", preset="quick", seed=0)
    finding = next(f for f in result.findings if f.name == "smoothed-gradient")
    assert not finding.fired and finding.numbers["broken"] <= 0.02 * 24
