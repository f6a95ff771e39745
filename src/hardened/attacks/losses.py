"""Per-sample attack losses. Higher is better for the attacker.

``ce``: cross-entropy to the true label (untargeted) or its negative to the target (targeted).
``margin``: the Carlini-Wagner logit margin, ``max_{j != y} z_j - z_y`` (untargeted) or
``z_t - max_{j != t} z_j`` (targeted); positive exactly when the attack has succeeded.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from hardened.errors import ConfigError

__all__ = ["LOSSES", "attack_loss", "logit_margin"]

LOSSES = ("ce", "margin")


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """``z_label - max_{j != label} z_j`` per sample (positive: ``label`` wins)."""
    label_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return label_logit - others.amax(dim=1)


def attack_loss(name: str, logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """Per-sample loss to *maximise*; ``labels`` are the targets when ``targeted``."""
    if name == "ce":
        ce = F.cross_entropy(logits, labels, reduction="none")
        return -ce if targeted else ce
    if name == "margin":
        margin = logit_margin(logits, labels)
        return margin if targeted else -margin
    raise ConfigError(f"unknown loss {name!r}: use one of {', '.join(LOSSES)}")


def check_loss(name: str) -> str:
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}: use one of {', '.join(LOSSES)}")
    return name


def is_success(logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
    """Untargeted: prediction differs from the label. Targeted: prediction equals the target."""
    pred = logits.argmax(dim=1)
    if targets is not None:
        return pred == targets
    return pred != labels


