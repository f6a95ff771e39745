"""Scores by name: ``make_score("vae")``, ``make_score("energy", model)``; rebuilding saved scores.

The scores register themselves in ``SCORES`` (``hardened.guard.base``) with a decorator in
their own modules; other packages add scores through the ``hardened.scores`` entry-point group.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from hardened.errors import ConfigError
from hardened.guard.base import SCORES, BaseScore

__all__ = ["SCORES", "make_score", "score_from_state"]


def make_score(name: str, model: nn.Module | None = None, **options: Any) -> BaseScore:
    """Build an unfitted score; ``model`` (the classifier) is needed where ``needs_model`` is set.

    Options that a constructor cannot convert (``temperature="abc"``, ``hidden=inf``, e.g. from
    a saved record) are a ``ConfigError`` too.
    """
    cls = SCORES.get(name)
    try:
        if not cls.needs_model:
            return SCORES.make(name, **options)
        if model is None:
            raise ConfigError(f"the {SCORES.canonical(name)} score needs the classifier: pass model=")
        return SCORES.make(name, model, **options)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError) as error:
        raise ConfigError(f"bad options for the {SCORES.canonical(name)} score: {error}") from error


def score_from_state(
    config: dict[str, Any], tensors: dict[str, Tensor], model: nn.Module | None = None
) -> BaseScore:
    """Rebuild a fitted score from ``score.config()`` and ``score.state_tensors()``."""
    name = config.get("name")
    if not isinstance(name, str):
        raise ConfigError("the saved score record has no name")
    score = make_score(name, model, **dict(config.get("options") or {}))
    return score.load_state(config, tensors)
