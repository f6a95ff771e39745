"""The iterative-gradient kernel: the one loop behind PGD, BIM, MI-FGSM, FGSM, LRP-grad, the
guard-aware attack, TRADES' inner maximisation and adversarial training.

For ``t = 0 .. steps - 1``, on the samples still attacked (all of them without ``stop``)::

    logits, values = f(x_t), objective(f(x_t))          # per sample, to maximise
    g              = d values.sum() / d x_t             # one forward + one backward (Oracle)
    retire the samples that ``stop(logits, index)`` says are done (their iterate is frozen)
    x_{t+1}        = project(x_t + step_size(t) * direction(StepView), x)

and the final iterate of every sample is returned. Hooks (all plain callables):

``objective(logits, index) -> (N',)``
    Per-sample values to *maximise* for the rows ``index`` of the batch (``None``: all rows, in
    order). ``attack_objective`` gives the attack losses (``ce``, ``margin``); TRADES passes a KL
    divergence to the clean softmax (``rows(p_clean, index)`` gathers per-sample data).
``direction(view) -> N'×C×H×W``
    The step direction from a ``StepView`` (iteration, current iterates, logits, values, gradient
    and ``index``, after retirement). ``steepest(norm)``: the unit steepest-ascent direction of the
    norm (sign for Linf, ``g / ||g||_2`` for L2, sparse sign for L1, ``threat.normalize_direction``);
    ``Momentum``: MI-FGSM's accumulated L1-normalised gradient, then ``steepest``. A stateful
    direction (momentum, best-iterate tracking) is made afresh for each run. ``view.x`` may be the
    kernel's own iterate: copy what you keep.
``stop(logits, index) -> bool (N',)``
    Samples that are done before their step (``success_stop``: the attack's goal is met). They
    cost no further gradients. ``None``: every sample runs every step.
``step_size``
    A float, or ``step_schedule(base, steps, name)`` (constant, cosine, step).
``project(x_adv, x)``
    Defaults to ``threat.project`` (ball, then box).

``start_point`` gives the usual starts (the image, uniform in the ball, radial); ``BestIterate``
keeps each sample's best iterate by (rank, value), as PGD's restarts and the guard-aware attack
do. Both paths of the loop (whole batch while nobody has retired, gathered rows afterwards)
compute the same values; a test pins PGD against a literal re-implementation, bit for bit.

Writing a new attack on the kernel: keep per-sample state in the hooks' closure, indexed by
``view.index`` (``rows``); a direction may return any step vector, so per-sample step sizes
(APGD's halving) are ``return eta[idx].view(-1, 1, 1, 1) * steepest(norm)(view)`` with
``step_size=1.0``, and a heavy-ball update ``x + a (z - x) + (1 - a)(x - x_prev)`` is the
direction ``(that - view.x)`` with ``step_size=1.0``; a ``BestIterate`` updated in the direction
(``best.update(view.x, rank, view.values, view.index)``) keeps each sample's best point. What the
kernel does not do: move an iterate anywhere but ``project(x_t + step)`` (a restart from the best
point is a new ``iterate`` call from ``best.x``), or take several gradients per step.

Example: targeted L2 PGD with a margin loss and early stopping::

    x_adv = iterate(oracle, x, start_point(threat, x, True, generator), threat=threat, steps=40,
                    step_size=step_schedule(0.1, 40, "cosine"),
                    objective=attack_objective("margin", targets, targeted=True),
                    direction=steepest("l2"), stop=success_stop(labels, targets))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from hardened.attacks.base import Oracle
from hardened.attacks.losses import attack_loss, is_success
from hardened.errors import ConfigError
from hardened.threat import ThreatModel, normalize_direction

__all__ = [
    "SCHEDULES",
    "BestIterate",
    "Direction",
    "Momentum",
    "Objective",
    "StepView",
    "Stop",
    "attack_objective",
    "check_schedule",
    "iterate",
    "rows",
    "step_schedule",
    "start_point",
    "steepest",
    "step_size_at",
    "success_stop",
]

SCHEDULES = ("constant", "cosine", "step")


@dataclass(frozen=True)
class StepView:
    """What a direction hook sees at one iteration (rows: the samples still attacked).

    Attributes:
        step: 0-based iteration.
        x: current iterates of the rows, N'×C×H×W (read-only; may alias the kernel's iterate).
        logits: N'×K model outputs at ``x``; values: N' objective values; grad: N'×C×H×W
            gradient of the objective at ``x``.
        index: the rows' positions in the batch, or ``None`` when every row is attacked.
    """

    step: int
    x: Tensor
    logits: Tensor
    values: Tensor
    grad: Tensor
    index: Tensor | None


Objective = Callable[[Tensor, Tensor | None], Tensor]
Direction = Callable[[StepView], Tensor]
Stop = Callable[[Tensor, Tensor | None], Tensor]


def rows(t: Tensor, index: Tensor | None) -> Tensor:
    """``t[index]``, or ``t`` itself for ``index=None`` (every row)."""
    return t if index is None else t[index]


def attack_objective(loss: str, goal: Tensor, targeted: bool = False) -> Objective:
    """The attack loss ``loss`` (``ce``, ``margin``; see ``losses``) to labels or targets ``goal``."""

    def objective(logits: Tensor, index: Tensor | None) -> Tensor:
        return attack_loss(loss, logits, rows(goal, index), targeted)

    return objective


def success_stop(labels: Tensor, targets: Tensor | None = None) -> Stop:
    """Stop a sample once it is adversarial (untargeted) or classified as its target."""

    def stop(logits: Tensor, index: Tensor | None) -> Tensor:
        return is_success(logits, rows(labels, index), None if targets is None else rows(targets, index))

    return stop


def steepest(norm: str) -> Direction:
    """The unit steepest-ascent direction of ``norm`` for the gradient (PGD's direction)."""

    def direction(view: StepView) -> Tensor:
        return normalize_direction(view.grad, norm)

    return direction


class Momentum:
    """MI-FGSM (Dong et al. 2018): ``m <- decay * m + g / ||g||_1``, then ``then`` of ``m``.

    Args:
        x: the batch (for the accumulator's shape, dtype and device); make one per run.
        decay: the momentum factor (1.0 in the paper).
        norm: the norm of the final steepest direction (default ``then``).
        then: a direction hook applied to the accumulated gradient instead of ``steepest(norm)``.
    """

    def __init__(self, x: Tensor, decay: float, norm: str = "linf", then: Direction | None = None) -> None:
        self.decay = float(decay)
        self.accumulated = torch.zeros_like(x)
        self.then = steepest(norm) if then is None else then

    def __call__(self, view: StepView) -> Tensor:
        grad = view.grad
        l1 = grad.abs().flatten(1).sum(dim=1).clamp(min=1e-12)
        if view.index is None:
            grad = self.decay * self.accumulated + grad / l1.view(-1, 1, 1, 1)
            self.accumulated = grad
        else:
            grad = self.decay * self.accumulated[view.index] + grad / l1.view(-1, 1, 1, 1)
            self.accumulated[view.index] = grad
        return self.then(StepView(view.step, view.x, view.logits, view.values, grad, view.index))


def step_size_at(base: float, step: int, steps: int, schedule: str) -> float:
    """Step size of iteration ``step`` (0-based) out of ``steps`` under ``schedule``.

    constant: ``base``; cosine: ``base * (1 + cos(pi * step / steps)) / 2``;
    step: ``base`` halved at 50% and again at 75% of the iterations.
    """
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * step / steps))
    return base * (0.5 ** (int(step >= steps // 2) + int(step >= (3 * steps) // 4)))


def check_schedule(name: str) -> str:
    """``name`` if it is one of ``SCHEDULES``, else a ``ConfigError`` listing them."""
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}: use one of {', '.join(SCHEDULES)}")
    return name


def step_schedule(base: float, steps: int, name: str = "constant") -> float | Callable[[int], float]:
    """A ``step_size`` for ``iterate``: ``base`` itself when constant, else ``step -> size``."""
    if check_schedule(name) == "constant":
        return base
    return lambda step: step_size_at(base, step, steps, name)


def start_point(
    threat: ThreatModel, x: Tensor, random_start: bool | str, generator: torch.Generator | None
) -> Tensor:
    """A fresh start: ``x`` itself (``False``), uniform in the ball (``True`` / ``"uniform"``) or
    with a uniform radius (``"radial"``; see ``ThreatModel.random_start``)."""
    if not random_start:
        return x.clone()
    return threat.random_start(x, generator, radial=random_start == "radial")


def iterate(
    oracle: Oracle,
    x: Tensor,
    start: Tensor,
    *,
    threat: ThreatModel,
    steps: int,
    step_size: float | Callable[[int], float],
    objective: Objective,
    direction: Direction,
    stop: Stop | None = None,
    project: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Run the loop (module docstring) from ``start`` around the clean images ``x``.

    ``start`` (N×C×H×W, inside the threat model) becomes the iterate and is updated in place;
    pass a fresh tensor (``start_point`` does). Gradients and forwards are counted by ``oracle``;
    a graph it was primed with (``Oracle.prime``) serves the first step when ``start`` equals the
    primed input. Returns the final iterates, N×C×H×W; retired samples keep the iterate at which
    they were retired.
    """
    project = threat.project if project is None else project
    size = step_size if callable(step_size) else (lambda _: step_size)
    x_adv = start
    active: Tensor | None = None  # rows still attacked; None: all of them (no gathers)
    for step in range(steps):
        current = x_adv if active is None else x_adv[active]
        logits, values, grad = oracle.objective_and_grad(current, partial(_rows_objective, objective, active))
        if stop is not None:
            done = stop(logits, active)
            if bool(done.any()):
                keep = ~done
                active = keep.nonzero().squeeze(1) if active is None else active[keep]
                current, logits, values, grad = current[keep], logits[keep], values[keep], grad[keep]
                if active.numel() == 0:
                    break
        step_vector = size(step) * direction(StepView(step, current, logits, values, grad, active))
        if active is None:
            x_adv = project(x_adv.add_(step_vector), x)
        else:
            x_adv[active] = project(current + step_vector, x[active])
    return x_adv


def _rows_objective(objective: Objective, index: Tensor | None, logits: Tensor) -> Tensor:
    return objective(logits, index)


class BestIterate:
    """Each sample's best candidate so far: a higher ``rank`` wins, then a higher ``value``.

    PGD's restarts rank by success (0/1) and value by loss; the guard-aware attack ranks
    adversarial-and-accepted above adversarial and values a lower guard score. Starts at ``x``
    with rank 0 and value ``-inf`` (so the first candidate of equal rank replaces it).
    """

    def __init__(self, x: Tensor) -> None:
        n = x.shape[0]
        self.x = x.clone()
        self.rank = torch.zeros(n, dtype=torch.float64, device=x.device)
        self.value = torch.full((n,), float("-inf"), dtype=torch.float64, device=x.device)

    def update(self, candidate: Tensor, rank: Tensor, value: Tensor, index: Tensor | None = None) -> Tensor:
        """Keep ``candidate`` rows that beat the best of their samples; return that mask.

        ``index``: the samples the candidate rows belong to (``None``: all, in order).
        """
        rank, value = rank.double(), value.double()
        best_rank, best_value = rows(self.rank, index), rows(self.value, index)
        better = (rank > best_rank) | ((rank == best_rank) & (value > best_value))
        chosen = better if index is None else index[better]
        self.x[chosen] = candidate[better]
        self.rank[chosen] = rank[better]
        self.value[chosen] = value[better]
        return better
