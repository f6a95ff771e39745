"""The library's exception tree.

Every error the library raises on purpose is a ``HardenedError``::

    HardenedError
    ├── InputError        bad tensors: shape, dtype, range, NaN/Inf, labels, empty batch
    ├── ConfigError       bad settings: negative eps, unknown norm/attack/method, bad budgets
    ├── DataError         missing, corrupt or inconsistent data files
    │   └── TargetError   a black-box target answered garbage, an error, or the wrong shape
    ├── ModelLoadError    missing, corrupt or unknown model files and factories
    ├── NotFittedError    a score, guard or calibrator used before ``fit``
    ├── QueryBudgetExceeded
    │                     a black-box target's hard query budget is spent
    ├── DistributedError  a rank of a torchrun job died, timed out or could not join
    └── NotReliableClassification
                          a guard refused to predict; carries the prediction and the score

Warnings the library issues on purpose are ``HardenedWarning`` (a ``UserWarning``)::

    HardenedWarning
    └── BudgetWarning     an attack budget that constrains nothing (the ball contains the box)

``InputError`` and ``ConfigError`` also derive from ``ValueError`` so that code written
against plain Python conventions keeps working. Messages say what was wrong and what to do.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "HardenedError",
    "InputError",
    "ConfigError",
    "DataError",
    "ModelLoadError",
    "NotFittedError",
    "TargetError",
    "QueryBudgetExceeded",
    "DistributedError",
    "NotReliableClassification",
    "HardenedWarning",
    "BudgetWarning",
]


class HardenedError(Exception):
    """Base class of every error raised on purpose by ``hardened``."""


class InputError(HardenedError, ValueError):
    """A tensor argument is unusable (shape, dtype, range, non-finite values, labels)."""


class ConfigError(HardenedError, ValueError):
    """A setting is invalid or inconsistent (e.g. ``eps < 0``, an unknown norm)."""


class DataError(HardenedError):
    """Data files are missing, corrupt or inconsistent."""


class ModelLoadError(HardenedError):
    """A model file or factory cannot be loaded."""


class NotFittedError(HardenedError):
    """An object that needs ``fit`` was used before it was fitted."""


class TargetError(DataError):
    """A black-box target (callable, ONNX session, HTTP endpoint) answered unusably.

    ``partial`` holds what was found before the failure (an ``AttackResult`` of the batches
    already finished, set by ``hardened.models.blackbox.attack_target``), else ``None``.
    """

    partial: Any = None


class QueryBudgetExceeded(HardenedError):
    """A black-box target refused a query that would exceed its hard budget (nothing was sent).

    Attributes:
        spent: images answered so far; budget: the hard limit; asked: images in the refused query.
        partial: what was found before (see ``TargetError.partial``), else ``None``.
    """

    def __init__(self, spent: int, budget: int, asked: int) -> None:
        self.spent, self.budget, self.asked = int(spent), int(budget), int(asked)
        self.partial: Any = None
        super().__init__(
            f"the query budget of {self.budget} images is spent ({self.spent} answered, a query "
            f"of {self.asked} refused); raise budget= or attack fewer images (finished batches "
            "are in .partial)"
        )


class DistributedError(HardenedError):
    """A ``torch.distributed`` collective failed: a rank died, timed out or could not join."""


class NotReliableClassification(HardenedError):
    """A guard refused to classify an input it scores as unreliable.

    Attributes:
        prediction: the class the bare classifier would have answered.
        score: the reliability score (higher = less reliable).
        threshold: the calibrated threshold the score exceeded.
    """

    def __init__(self, prediction: int, score: float, threshold: float) -> None:
        self.prediction = int(prediction)
        self.score = float(score)
        self.threshold = float(threshold)
        super().__init__(
            f"refused to classify: reliability score {self.score:.4g} exceeds the threshold "
            f"{self.threshold:.4g} (the bare classifier would answer class {self.prediction})"
        )


class HardenedWarning(UserWarning):
    """Base class of every warning issued on purpose by ``hardened``."""


class BudgetWarning(HardenedWarning):
    """A perturbation budget is so large that it cannot be meaningful (e.g. Linf eps 5 in [0, 1])."""
