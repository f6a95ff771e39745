"""Attack options checked once: the threat model, the iteration budget and the budget warning.

Every attack constructor validates through these (and the typed checks of
``hardened._util.validate``), so ``PGD(steps=1.5)``, ``PGD(eps='0.1')`` and ``LRPGrad(steps=True)``
all fail the same way, with a ``ConfigError`` that names the option. ``warn_if_vacuous`` is called
by ``Attack.__call__`` for every attack with a threat model: a ball that contains the whole pixel
box (Linf eps 5 in [0, 1], L2 eps 1e30) constrains nothing, which is almost always a unit mistake
(eps given in 0..255 pixels) rather than an experiment.
"""

from __future__ import annotations

import warnings

from hardened._util.validate import check_int, check_real
from hardened.errors import BudgetWarning, ConfigError
from hardened.threat import ThreatModel, check_norm

__all__ = ["check_threat", "check_iterations", "warn_if_vacuous"]


def check_threat(
    norm: str,
    eps: object,
    bounds: tuple[float, float],
    *,
    norms: tuple[str, ...] | None = None,
    attack: str = "this attack",
) -> ThreatModel:
    """The attack's ``ThreatModel``; ``norms`` limits the norms the attack supports."""
    if norms is not None and check_norm(norm) not in norms:
        raise ConfigError(f"{attack} supports norm {' or '.join(norms)}, got {norm!r}")
    return ThreatModel(norm, eps, bounds)  # type: ignore[arg-type]  # ThreatModel checks eps' type


def check_iterations(
    threat: ThreatModel, steps: object, step_size: object, *, default_factor: float = 2.5
) -> tuple[int, float]:
    """``(steps, step_size)``: an integer ``steps >= 1`` and a finite ``step_size >= 0``.

    ``step_size=None`` takes the usual default ``default_factor * eps / steps`` (2.5, Madry et
    al. 2018: the iterate can cross the ball and come back).
    """
    steps = check_int(steps, "steps", minimum=1)
    if step_size is None:
        return steps, default_factor * threat.eps / steps
    return steps, check_real(step_size, "step_size", minimum=0.0)


def warn_if_vacuous(threat: ThreatModel, dim: int | None = None, *, stacklevel: int = 3) -> bool:
    """Warn (``BudgetWarning``) when the ball contains the whole box; return whether it does.

    ``dim`` is the number of values per image; without it only Linf (whose diameter does not
    depend on it) can be decided.
    """
    if dim is None:
        if threat.norm != "linf":
            return False
        dim = 1
    if dim < 1:
        return False
    diameter = threat.diameter(dim)
    if threat.eps < diameter:
        return False
    lo, hi = threat.bounds
    extent = "width" if threat.norm == "linf" else f"{threat.norm} diameter"
    images = "" if threat.norm == "linf" else f" for images of {dim} values"
    warnings.warn(
        f"{threat.norm} eps {threat.eps:g} is at least the {extent} {diameter:.4g} of the pixel box "
        f"[{lo:g}, {hi:g}]{images}: the ball contains every image, so the attack is unconstrained; "
        "give eps in the units of the bounds (e.g. 8/255, not 8)",
        BudgetWarning,
        stacklevel=stacklevel,
    )
    return True
