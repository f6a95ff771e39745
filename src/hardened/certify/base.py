"""The certificate contract: ``certifier.radii(model, x, y)`` -> certified radius per image.

A certifier is configured at construction and proves, for each image, that the model's answer
is its label everywhere in a ball of the returned radius (in the certifier's ``norm``). It
registers with ``@CERTIFIERS.register(name)`` and declares its capabilities as class
attributes: ``norms`` (the norms it certifies) and ``deterministic`` (``True``: a sound bound;
``False``: a guarantee that holds with probability at least ``1 - alpha``, for the smoothed
classifier). Other packages add certifiers through the ``hardened.certificates`` entry points.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor, nn

from hardened.registry import Registry

__all__ = ["CERTIFIERS", "Certifier"]


class Certifier(ABC):
    """Base class of certification methods (see the module docstring).

    Attributes:
        name: the registry name.
        norms: the norms the method certifies; ``norm`` is the one an instance uses.
        deterministic: a sound bound (``True``) or a probabilistic guarantee (``False``).
    """

    name: ClassVar[str] = "certifier"
    norms: ClassVar[tuple[str, ...]] = ()
    deterministic: ClassVar[bool] = True
    norm: str

    @abstractmethod
    def radii(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Certified radii (N,) float64 for images ``x`` (N×C×H×W) and labels ``y`` (N,).

        0 where nothing is certified (a wrong prediction, an abstain, a failed bound).
        """


CERTIFIERS: Registry[Certifier] = Registry(
    "certificate",
    group="hardened.certificates",
    base=Certifier,
    capabilities=("norms", "deterministic"),
)
