"""Scores by name: ``make_score("vae")``, ``make_score("energy", model)``; rebuilding saved scores."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from hardened.errors import ConfigError
from hardened.guard.base import BaseScore, ClassifierScore
from hardened.guard.baselines import Energy, Mahalanobis, MaxSoftmax
from hardened.guard.vae import VAEScore
from hardened.guard.wgan_inverter import WGANInverterScore

__all__ = ["SCORES", "make_score", "score_from_state"]

SCORES: dict[str, type[BaseScore]] = {
    "softmax": MaxSoftmax,
    "energy": Energy,
    "mahalanobis": Mahalanobis,
    "vae": VAEScore,
    "wgan-inverter": WGANInverterScore,
}


def _lookup(name: str) -> type[BaseScore]:
    key = name.lower().replace("_", "-")
    if key in ("msp", "max-softmax"):
        key = "softmax"
    if key in ("wgan", "wgan-gp"):
        key = "wgan-inverter"
    if key not in SCORES:
        raise ConfigError(f"unknown score {name!r}: use one of {', '.join(SCORES)}")
    return SCORES[key]


def make_score(name: str, model: nn.Module | None = None, **options: Any) -> BaseScore:
    """Build an unfitted score; ``model`` (the classifier) is needed by all but ``vae``."""
    cls = _lookup(name)
    try:
        if issubclass(cls, ClassifierScore):
            if model is None:
                raise ConfigError(f"the {cls.name} score needs the classifier: pass model=")
            return cls(model, **options)
        return cls(**options)
    except TypeError as error:
        raise ConfigError(f"bad options for the {cls.name} score: {error}") from error


def score_from_state(
    config: dict[str, Any], tensors: dict[str, Tensor], model: nn.Module | None = None
) -> BaseScore:
    """Rebuild a fitted score from ``score.config()`` and ``score.state_tensors()``."""
    name = config.get("name")
    if not isinstance(name, str):
        raise ConfigError("the saved score record has no name")
    score = make_score(name, model, **dict(config.get("options") or {}))
    return score.load_state(config, tensors)
