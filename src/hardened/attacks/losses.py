"""Per-sample attack losses. Higher is better for the attacker.

``ce``: cross-entropy to the true label (untargeted) or its negative to the target (targeted).
``margin``: the Carlini-Wagner logit margin, ``max_{j != y} z_j - z_y`` (untargeted) or
``z_t - max_{j != t} z_j`` (targeted); positive exactly when the attack has succeeded.
``dlr``: the difference of logits ratio of Croce & Hein 2020 (see ``dlr`` and ``targeted_dlr``),
invariant to shifting and positively scaling the logits, so saturated softmax outputs and
rescaled logits do not flatten it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from hardened.errors import ConfigError, InputError

__all__ = ["ALL_LOSSES", "LOSSES", "attack_loss", "dlr", "logit_margin", "targeted_dlr"]

LOSSES = ("ce", "margin")  # the losses of the PGD family
ALL_LOSSES = ("ce", "margin", "dlr")
_TINY = 1e-12


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """``z_label - max_{j != label} z_j`` per sample (positive: ``label`` wins)."""
    label_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return label_logit - others.amax(dim=1)


def _sorted_logits(logits: Tensor, least: int, name: str) -> Tensor:
    if logits.shape[1] < least:
        raise InputError(
            f"the {name} loss needs a model with at least {least} classes, this one has "
            f"{logits.shape[1]}; use loss='ce' or 'margin' instead"
        )
    return logits.sort(dim=1, descending=True).values


def dlr(logits: Tensor, labels: Tensor) -> Tensor:
    """Untargeted DLR loss (Croce & Hein 2020, eq. 5), per sample, to maximise.

    ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)`` where ``z_pi1 >= z_pi2 >= ...`` are the
    sorted logits. Positive exactly when the attack has succeeded; needs K >= 3 classes.
    """
    ranked = _sorted_logits(logits, 3, "DLR")
    return -logit_margin(logits, labels) / (ranked[:, 0] - ranked[:, 2] + _TINY)


def targeted_dlr(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Targeted DLR loss (Croce & Hein 2020, eq. 6), per sample, to maximise.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` with ``y`` the true label and ``t`` the
    target. With K = 3 classes ``z_pi4`` does not exist and ``z_pi3`` stands in for it.
    """
    ranked = _sorted_logits(logits, 3, "targeted DLR")
    fourth = ranked[:, min(3, logits.shape[1] - 1)]
    gap = logits.gather(1, labels[:, None]).squeeze(1) - logits.gather(1, targets[:, None]).squeeze(1)
    return -gap / (ranked[:, 0] - 0.5 * (ranked[:, 2] + fourth) + _TINY)


def attack_loss(
    name: str, logits: Tensor, labels: Tensor, targeted: bool, *, true_labels: Tensor | None = None
) -> Tensor:
    """Per-sample loss to *maximise*; ``labels`` are the targets when ``targeted``.

    The targeted DLR loss also needs the true labels (``true_labels``).
    """
    if name == "ce":
        ce = F.cross_entropy(logits, labels, reduction="none")
        return -ce if targeted else ce
    if name == "margin":
        margin = logit_margin(logits, labels)
        return margin if targeted else -margin
    if name == "dlr":
        if not targeted:
            return dlr(logits, labels)
        if true_labels is None:
            raise ConfigError("the targeted DLR loss needs the true labels: pass true_labels=")
        return targeted_dlr(logits, true_labels, labels)
    raise ConfigError(f"unknown loss {name!r}: use one of {', '.join(ALL_LOSSES)}")


def check_loss(name: str, allowed: tuple[str, ...] = LOSSES) -> str:
    """Return ``name`` if it is one of ``allowed``, else raise ``ConfigError`` naming them."""
    if name not in allowed:
        raise ConfigError(f"unknown loss {name!r}: use one of {', '.join(allowed)}")
    return name


def is_success(logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
    """Untargeted: prediction differs from the label. Targeted: prediction equals the target."""
    pred = logits.argmax(dim=1)
    if targets is not None:
        return pred == targets
    return pred != labels
