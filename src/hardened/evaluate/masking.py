"""Gradient masking, detected and answered (Athalye et al. 2018, "Obfuscated Gradients Give a
False Sense of Security"; the checks follow AutoAttack's ``checks.py``, Croce & Hein 2020).

Checks (each returns a ``MaskingFinding`` that says what it means and what answers it):

- ``randomness_check``: the same input gives different outputs (a randomized defence); answer:
  EOT, the attack sees the mean of ``k`` samples of the model.
- ``probability_check``: the outputs are probabilities (rows non-negative, summing to 1), so
  losses saturate; answer: attack their logarithm, which has the same argmax.
- ``gradient_check``: the logit margin's input gradient is zero or non-finite on a share of the
  points (shattered gradients, e.g. an input quantiser); answer: BPDA when a leading input stage
  is found, else the score-based attack, which needs no gradient.
- ``score_attack_check``: after the cascade, the score-based attack broke points the gradient
  attacks missed: the gradients mislead, and the figure is an upper bound.
- ``smoothed_gradient_check``: after the cascade, the member that follows the gradient under
  input noise broke many points the plain gradient attacks missed: the gradient at the images is
  masked (an answer already applied, as that member is in every preset).

Answers are model wrappers: ``BPDA`` (Backward Pass Differentiable Approximation, straight-through:
the input stage runs forward, the identity is used backward) and ``EOT`` (Expectation over
Transformation). ``plan_countermeasures`` runs the checks and chooses the wrappers; the cascade
evaluator (``hardened.evaluate.cascade``) applies them to its gradient attacks.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from hardened._util.batching import eval_mode
from hardened._util.device import model_device
from hardened.attacks.losses import logit_margin
from hardened.errors import ConfigError
from hardened.evaluate.counting import CountingModel

__all__ = [
    "BPDA",
    "EOT",
    "LogOutputs",
    "MaskingFinding",
    "MaskingPlan",
    "MASKING_MODES",
    "bpda_model",
    "check_masking_mode",
    "find_input_stage",
    "gradient_check",
    "plan_countermeasures",
    "probability_check",
    "randomness_check",
    "score_attack_check",
    "smoothed_gradient_check",
]

MASKING_MODES = ("auto", "off")
DEFAULT_EOT_SAMPLES = 10


@dataclass(frozen=True)
class MaskingFinding:
    """One gradient-masking check: whether it ``fired``, what that ``meaning`` is, the
    ``answer`` applied (``"eot"``, ``"bpda"``, ``"log-outputs"``, ``"score-attack"``, ``"smoothed-gradient"`` or
    ``None``) and the measured ``numbers`` behind it."""

    name: str
    fired: bool
    meaning: str
    answer: str | None
    numbers: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _StraightThrough(torch.autograd.Function):
    """Forward: the processed input ``z`` exactly; backward: the gradient passes to ``x``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, z: Tensor) -> Tensor:  # noqa: ARG004
        return z.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ARG004
        return grad, None


class BPDA(nn.Module):
    """``rest(stage(x))`` whose backward pass treats ``stage`` as the identity (Athalye et al.
    2018, BPDA with the straight-through approximation). Forward values are unchanged."""

    def __init__(self, stage: nn.Module, rest: nn.Module) -> None:
        super().__init__()
        self.stage = stage
        self.rest = rest

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            z = self.stage(x)
        return self.rest(_StraightThrough.apply(x, z) if x.requires_grad else z)


class EOT(nn.Module):
    """The mean output of ``samples`` evaluations of a randomized ``model`` (Athalye et al.
    2018, Expectation over Transformation): its input gradient is the gradient averaged over the
    ``samples`` draws of the model's randomness. One forward of ``samples * N`` images."""

    def __init__(self, model: nn.Module, samples: int) -> None:
        super().__init__()
        if int(samples) < 1:
            raise ConfigError(f"EOT needs at least 1 sample, got {samples}")
        self.model = model
        self.samples = int(samples)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        out = self.model(x.repeat(self.samples, *([1] * (x.dim() - 1))))
        return out.reshape(self.samples, n, *out.shape[1:]).mean(dim=0)


class LogOutputs(nn.Module):
    """``log(p)`` of a model that outputs probabilities: logits up to a per-row constant, so
    argmax and softmax are unchanged while losses no longer saturate."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).clamp_min(1e-30).log()


@dataclass(frozen=True)
class MaskingPlan:
    """What the checks found and which answers to apply: ``eot_samples`` (0: no EOT),
    ``bpda_stage`` (leading children of the model run straight-through; 0: no BPDA) and
    ``log_outputs`` (attack ``log`` of probability outputs)."""

    findings: tuple[MaskingFinding, ...]
    eot_samples: int = 0
    bpda_stage: int = 0
    log_outputs: bool = False

    @property
    def active(self) -> bool:
        return bool(self.eot_samples or self.bpda_stage or self.log_outputs)

    def wrap(self, model: nn.Module, inner: type[nn.Module] | None = None) -> nn.Module:
        """The model the gradient attacks see. ``inner`` (e.g. ``CountingModel``) wraps the
        (BPDA-split) model before EOT repeats it, so its counts include every EOT sample."""
        wrapped = bpda_model(model, self.bpda_stage) if self.bpda_stage else model
        if inner is not None:
            wrapped = inner(wrapped)
        if self.log_outputs:
            wrapped = LogOutputs(wrapped)
        if self.eot_samples:
            wrapped = EOT(wrapped, self.eot_samples)
        return wrapped

    def describe(self) -> list[str]:
        """The answers in words, e.g. ``["BPDA through 1 input module", "EOT over 10 samples"]``."""
        words = []
        if self.bpda_stage:
            words.append(f"BPDA through {self.bpda_stage} leading input module(s)")
        if self.log_outputs:
            words.append("log of the probability outputs")
        if self.eot_samples:
            words.append(f"EOT over {self.eot_samples} samples")
        return words

    def to_dict(self) -> dict[str, Any]:
        return {
            "findings": [f.to_dict() for f in self.findings],
            "eot_samples": self.eot_samples,
            "bpda_stage": self.bpda_stage,
            "log_outputs": self.log_outputs,
            "answers": self.describe(),
        }


@contextmanager
def _same_randomness(seed: int) -> Iterator[None]:
    """Run a block with the global RNG seeded, restoring its state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def randomness_check(model: nn.Module, x: Tensor, *, repeats: int = 3, tolerance: float = 1e-5) -> MaskingFinding:
    """Fires when ``repeats`` evaluations of ``model`` on the same ``x`` (eval mode) differ by
    more than ``tolerance`` relative to the outputs' scale."""
    with torch.no_grad(), eval_mode(model):
        outs = [model(x) for _ in range(max(2, int(repeats)))]
    scale = max(float(outs[0].abs().max()), 1.0)
    spread = max(float((o - outs[0]).abs().max()) for o in outs[1:]) / scale
    fired = spread > tolerance
    meaning = (
        f"the same input gave outputs differing by {spread:.3g} (relative): the model is randomized, "
        "so a single gradient is one noisy draw. Answer: EOT, attacking the mean over many draws."
        if fired else "the same input always gives the same output: the model is deterministic."
    )
    return MaskingFinding("randomness", fired, meaning, "eot" if fired else None,
                          {"relative_spread": spread, "repeats": len(outs)})


def probability_check(model: nn.Module, x: Tensor, *, tolerance: float = 1e-3) -> MaskingFinding:
    """Fires when every output row is non-negative and sums to 1 within ``tolerance``."""
    with torch.no_grad(), eval_mode(model):
        out = model(x).double()
    sums = out.sum(dim=1)
    fired = bool((out >= 0).all()) and bool(((sums - 1).abs() <= tolerance).all())
    meaning = (
        "the model outputs probabilities, not logits: cross-entropy and margin losses saturate and "
        "their gradients vanish. Answer: attack the logarithm of the outputs (same prediction)."
        if fired else "the model outputs logits (rows are not probability vectors)."
    )
    return MaskingFinding("probabilities", fired, meaning, "log-outputs" if fired else None,
                          {"max_row_sum_error": float((sums - 1).abs().max()) if len(sums) else 0.0})


def _margin_gradients(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.enable_grad(), eval_mode(model):
        x_var = x.detach().clone().requires_grad_(True)
        margin = logit_margin(model(x_var), y)
        (grad,) = torch.autograd.grad(margin.sum(), x_var, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad.detach()


def gradient_check(model: nn.Module, x: Tensor, y: Tensor, *, share: float = 0.05) -> MaskingFinding:
    """Fires when the input gradient of the logit margin ``z_y - max_{j != y} z_j`` is exactly
    zero or non-finite on more than ``share`` of the points. (The margin, unlike cross-entropy,
    does not saturate on confident points, so a zero gradient means a locally flat model.)"""
    grad = _margin_gradients(model, x, y).flatten(1)
    bad = ~torch.isfinite(grad).all(dim=1) | (grad == 0).all(dim=1)
    fraction = float(bad.float().mean()) if len(bad) else 0.0
    fired = fraction > share
    meaning = (
        f"the input gradient is zero or non-finite on {100 * fraction:.0f}% of the points: the "
        "gradient does not point anywhere (shattered gradients, e.g. a non-differentiable input "
        "stage). Answer: BPDA through that stage where one is found, and the score-based attack."
        if fired else f"the input gradient is informative (zero or non-finite on {100 * fraction:.0f}% of the points)."
    )
    return MaskingFinding("zero-gradients", fired, meaning, "bpda" if fired else None,
                          {"share_zero_or_nonfinite": fraction, "threshold": share, "points": len(bad)})


def score_attack_check(broken: int, n: int, *, attack: str, alpha: float = 0.002) -> MaskingFinding:
    """Fires when the score-based ``attack`` broke more than ``alpha * n`` of ``n`` points that
    every gradient attack before it had missed (AutoAttack's ``check_square_sr``)."""
    return _late_breaks("score-attack", broken, n, alpha, attack=attack, how="which uses only the outputs",
                        missed_by="gradient attacks", why="the gradients are misleading here, so the robust "
                        "accuracy is an upper bound that stronger attacks may lower further.")


def smoothed_gradient_check(broken: int, n: int, *, attack: str, alpha: float = 0.02) -> MaskingFinding:
    """Fires when the smoothed-gradient member ``attack`` (gradients taken under Gaussian input
    noise) broke more than ``alpha * n`` of ``n`` points the plain gradient attacks before it had
    missed: the model's gradient at the image itself is locally uninformative (e.g. an
    input-thresholding first layer), the signature of masking that a noisy gradient sees past.

    ``alpha`` = 2%: the smoothed APGD-CE member breaks 0-1% more points than plain APGD-CE on
    unmasked lenets, and 39-49% on the PGD / TRADES lenets at L2 2.0 (benchmarks/strong_eval.py).
    """
    return _late_breaks("smoothed-gradient", broken, n, alpha,
                        attack=attack, how="which follows the gradient under input noise",
                        missed_by="plain gradient attacks", why="the gradient at the images themselves is "
                        "masked, so gradient-only figures on this model are optimistic and this one is an upper bound.")


def _late_breaks(
    name: str, broken: int, n: int, alpha: float, *, attack: str, how: str, missed_by: str, why: str
) -> MaskingFinding:
    """The finding of a cascade member that broke ``broken`` of ``n`` points the ``missed_by``
    members before it had missed; it fires above ``alpha * n``, and its answer is that member."""
    fraction = broken / n if n else 0.0
    fired = fraction > alpha
    meaning = (
        f"{attack}, {how}, broke {broken} point(s) ({100 * fraction:.1f}%) that the {missed_by} missed: {why}"
        if fired else f"{attack} broke {broken} point(s) the {missed_by} missed: no sign of masking."
    )
    return MaskingFinding(name, fired, meaning, name if fired else None, {"broken": broken, "n": n, "alpha": alpha})


def _children(model: nn.Module) -> list[nn.Module]:
    """The model's children; a counting wrapper is looked through (its counts still apply).

    Children of a traced TorchScript module held in memory refuse to be called; a copy saved
    and loaded again (as from a file) has callable children, so that copy's are used."""
    if isinstance(model, CountingModel):
        model = model.model
    if isinstance(model, torch.jit.ScriptModule) and type(model).__name__ != "RecursiveScriptModule":
        buffer = io.BytesIO()
        torch.jit.save(model, buffer)
        buffer.seek(0)
        model = torch.jit.load(buffer, map_location=model_device(model))
    return list(model.children())


def bpda_model(model: nn.Module, stage: int) -> BPDA:
    """Split ``model`` into its first ``stage`` children (run straight-through) and the rest."""
    children = _children(model)
    if not 0 < stage < len(children):
        raise ConfigError(
            f"cannot run the first {stage} module(s) of a model with {len(children)} children "
            "straight-through; BPDA needs a model built as a sequence (nn.Sequential or TorchScript)"
        )
    return BPDA(nn.Sequential(*children[:stage]), nn.Sequential(*children[stage:]))


def _chain_reproduces(model: nn.Module, children: list[nn.Module], x: Tensor, seed: int = 0) -> bool:
    """Whether calling ``children`` in order gives the model's output (same random draws)."""
    with torch.no_grad(), eval_mode(model):
        with _same_randomness(seed):
            whole = model(x)
        try:
            with _same_randomness(seed):
                z = x
                for child in children:
                    z = child(z)
        except (RuntimeError, TypeError):  # a module whose forward is not the chain of its children
            return False
    return isinstance(z, Tensor) and z.shape == whole.shape and torch.allclose(z, whole, atol=1e-5, rtol=1e-4)


def find_input_stage(model: nn.Module, x: Tensor, *, tolerance: float = 0.25, max_modules: int = 4) -> int:
    """The number of leading children of ``model`` that form non-differentiable input processing
    (0 if none): the shortest prefix whose output has ``x``'s shape, stays within ``tolerance``
    (mean absolute difference, as a fraction of the pixel range) of ``x``, and has a zero or
    non-finite input gradient on most points. Only models whose children, called in order,
    reproduce the model's output qualify (``nn.Sequential``, TorchScript sequences)."""
    children = _children(model)
    if len(children) < 2 or not _chain_reproduces(model, children, x):
        return 0
    span = float(x.max() - x.min()) or 1.0
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype).to(x.device)
    with eval_mode(model), torch.enable_grad():
        for k in range(1, min(max_modules, len(children) - 1) + 1):
            x_var = x.detach().clone().requires_grad_(True)
            z = x_var
            for child in children[:k]:
                z = child(z)
            if not isinstance(z, Tensor) or z.shape != x.shape:
                return 0
            if float((z.detach() - x).abs().mean()) > tolerance * span:
                return 0
            if not z.requires_grad:
                return k
            (grad,) = torch.autograd.grad((z * v).sum(), x_var, allow_unused=True)
            if grad is None:
                return k
            flat = grad.flatten(1)
            flat_or_bad = ~torch.isfinite(flat).all(dim=1) | (flat == 0).all(dim=1)
            if float(flat_or_bad.float().mean()) > 0.5:
                return k
    return 0


def check_masking_mode(masking: str) -> str:
    """``masking`` if it is one of ``MASKING_MODES``, else a ``ConfigError`` naming them."""
    if masking not in MASKING_MODES:
        raise ConfigError(f"unknown masking mode {masking!r}: use one of {', '.join(MASKING_MODES)}")
    return masking


def plan_countermeasures(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    masking: str = "auto",
    eot_samples: int | None = None,
    bpda: bool | None = None,
    gradient_share: float = 0.05,
) -> MaskingPlan:
    """Run the pre-attack checks on a probe batch ``x``, ``y`` and choose the answers.

    ``masking="auto"`` runs the checks and switches EOT / BPDA / log-outputs on where they fire;
    ``"off"`` runs none. ``eot_samples`` (0: never) and ``bpda`` (``True``: required, a
    ``ConfigError`` when no input stage is found; ``False``: never) override the choice.
    """
    check_masking_mode(masking)
    if eot_samples is not None and int(eot_samples) < 0:
        raise ConfigError(f"eot_samples must be >= 0 (0 turns EOT off), got {eot_samples}")
    findings: list[MaskingFinding] = []
    random_fired = probs_fired = grads_fired = False
    if masking == "auto":
        findings.append(randomness_check(model, x))
        findings.append(probability_check(model, x))
        random_fired, probs_fired = findings[0].fired, findings[1].fired
        probe = LogOutputs(model) if probs_fired else model
        findings.append(gradient_check(probe, x, y, share=gradient_share))
        grads_fired = findings[2].fired
    stage = 0
    if bpda or (bpda is None and grads_fired):
        stage = find_input_stage(model, x)
        if stage == 0 and bpda:
            raise ConfigError(
                "BPDA was asked for but the model has no leading input stage with a zero gradient "
                "that can be run straight-through; build the model as nn.Sequential(preprocess, net) "
                "or drop bpda=True"
            )
    if grads_fired and stage == 0:
        findings[2] = replace(
            findings[2], answer="score-attack",
            meaning=findings[2].meaning + (" BPDA is switched off" if bpda is False else
                                           " No leading input stage could be run straight-through")
            + ", so only the score-based attack (which needs no gradient) tests these points.",
        )
    eot = int(eot_samples) if eot_samples is not None else (DEFAULT_EOT_SAMPLES if random_fired else 0)
    return MaskingPlan(tuple(findings), eot_samples=eot, bpda_stage=stage, log_outputs=probs_fired)
