"""Spatial attacks over a ``TransformSet`` (rotations, translations, scaling, brightness).

Engstrom, Tran, Tsipras, Schmidt & Madry 2019, "Exploring the landscape of spatial robustness"
(ICML). Three searches for the transformation maximising the attack loss (the logit margin by
default, which is positive exactly when the image is misclassified, so the worst point of a
search is adversarial whenever any point it tried is):

- ``spatial-grid``: exhaustive search over a grid of the set (the exact worst case over the
  grid), evaluated in batches of images × grid points;
- ``spatial-random``: the worst of ``k`` uniform draws (Engstrom et al.'s worst-of-10);
- ``spatial-pgd``: signed gradient ascent on the parameters themselves, projected onto the set
  (gradients flow through ``grid_sample``), keeping the worst iterate.

The perturbation set is not an Lp ball, so these attacks declare the norm ``"spatial"``;
``worst_transforms`` returns the chosen parameters (N×5, ``TRANSFORM_PARAMETERS`` order), always
inside the set.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from hardened._util.batching import eval_mode
from hardened._util.checks import check_images
from hardened._util.seeding import make_generator
from hardened._util.validate import check_flag, check_int, check_real, check_seed
from hardened.attacks.base import ATTACKS, Attack, Model, Oracle
from hardened.attacks.losses import attack_loss, check_loss
from hardened.threat import TransformSet

__all__ = ["SpatialGrid", "SpatialPGD", "SpatialRandom"]

_IMAGES_PER_CALL = 4096  # images per model call of the grid search


class _Spatial(Attack):
    """Shared configuration: the transformation set and the loss; subclasses write ``_search``."""

    norms = ("spatial",)
    targeted = True

    def _configure(
        self,
        rotation: float,
        translation: float,
        scale: tuple[float, float],
        brightness: float,
        loss: str,
        bounds: tuple[float, float],
    ) -> None:
        self._set = TransformSet(rotation, translation, tuple(scale), brightness, bounds)  # type: ignore[arg-type]
        self.rotation, self.translation = self._set.rotation, self._set.translation
        self.scale, self.brightness = self._set.scale_range, self._set.brightness
        self.bounds = self._set.bounds
        self.loss = check_loss(loss)

    @property
    def transforms(self) -> TransformSet:
        """The set of transformations searched."""
        return self._set

    def _loss(self, logits: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        goal = y if targets is None else targets
        return attack_loss(self.loss, logits, goal, targets is not None)

    def _search(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        return self._set.apply(x, self._search(oracle, x, y, targets))

    def worst_transforms(self, model: Model, x: Tensor, y: Tensor, *, targets: Tensor | None = None) -> Tensor:
        """The parameters (N×5) the attack picks for ``x``; ``attack(model, x, y).x_adv`` is
        ``transforms.apply(x, worst_transforms(model, x, y))``."""
        x = check_images(x, self.bounds)
        with eval_mode(model) if isinstance(model, torch.nn.Module) else nullcontext():
            with torch.no_grad():
                classes = int(model(x[:1]).shape[1])
            return self._search(Oracle(model, classes, x.shape[0]), x, y, targets)

    def _keep_worst(
        self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None, candidates: Tensor
    ) -> Tensor:
        """The worst of ``candidates`` (N×G×5) per image, by batched evaluation (queries counted)."""
        n, g = candidates.shape[:2]
        best = self._set.identity(n, x)
        best_loss = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
        per_call = max(1, _IMAGES_PER_CALL // max(n, 1))
        rows = torch.arange(n, device=x.device)
        for start in range(0, g, per_call):
            chunk = candidates[:, start : start + per_call]  # N×c×5
            c = chunk.shape[1]
            index = rows.repeat_interleave(c)
            logits = oracle.query(self._set.apply(x[index], chunk.reshape(-1, 5)), index)
            goal_t = None if targets is None else targets[index]
            loss = self._loss(logits, y[index], goal_t).view(n, c)
            value, which = loss.max(dim=1)
            better = value > best_loss
            best[better] = chunk[rows[better], which[better]]
            best_loss[better] = value[better].to(best_loss.dtype)
        return best


@ATTACKS.register("spatial-grid", aliases=("spatial",))
class SpatialGrid(_Spatial):
    """Exhaustive grid search over the transformation set (the exact worst case on the grid).

    Args:
        rotation: largest rotation in degrees; translation: largest shift in pixels;
        scale: ``(low, high)`` scale range; brightness: largest additive brightness change.
        points: grid values per free parameter (both ends included; odd keeps the identity).
        loss: ``"margin"`` (default) or ``"ce"``; bounds: the pixel box.
    """

    name = "spatial-grid"
    needs_gradients = False
    scores_only = True

    def __init__(
        self,
        *,
        rotation: float = 30.0,
        translation: float = 3.0,
        scale: tuple[float, float] = (1.0, 1.0),
        brightness: float = 0.0,
        points: int = 7,
        loss: str = "margin",
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self._configure(rotation, translation, scale, brightness, loss, bounds)
        self.points = check_int(points, "points", minimum=1)

    def _search(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        grid = self._set.grid(self.points, x)
        return self._keep_worst(oracle, x, y, targets, grid.expand(x.shape[0], -1, -1))


@ATTACKS.register("spatial-random", aliases=("worst-of-k",))
class SpatialRandom(_Spatial):
    """Worst of ``k`` transformations drawn uniformly from the set (Engstrom et al.'s worst-of-k).

    Args: as ``SpatialGrid``, with ``k`` draws per image instead of a grid and a ``seed``.
    """

    name = "spatial-random"
    needs_gradients = False
    scores_only = True
    seeded = True

    def __init__(
        self,
        *,
        rotation: float = 30.0,
        translation: float = 3.0,
        scale: tuple[float, float] = (1.0, 1.0),
        brightness: float = 0.0,
        k: int = 10,
        loss: str = "margin",
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        self._configure(rotation, translation, scale, brightness, loss, bounds)
        self.k = check_int(k, "k", minimum=1)
        self.seed = check_seed(seed)

    def _search(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        generator = make_generator(self.seed, x.device)
        draws = self._set.random(x.shape[0] * self.k, x, generator).view(x.shape[0], self.k, 5)
        return self._keep_worst(oracle, x, y, targets, draws)


@ATTACKS.register("spatial-pgd", aliases=("spatial-first-order",))
class SpatialPGD(_Spatial):
    """First-order attack on the transformation parameters: signed gradient ascent, projected.

    Each step moves every free parameter by ``step_size`` times its half-range (default
    ``2.5 / steps``) in the direction of its gradient's sign, then clamps onto the set; the
    iterate with the highest loss is kept.

    Args: as ``SpatialGrid``, plus ``steps``, ``step_size``, ``random_start`` (a uniform start
    in the set instead of the identity) and ``seed``.
    """

    name = "spatial-pgd"
    seeded = True

    def __init__(
        self,
        *,
        rotation: float = 30.0,
        translation: float = 3.0,
        scale: tuple[float, float] = (1.0, 1.0),
        brightness: float = 0.0,
        steps: int = 20,
        step_size: float | None = None,
        random_start: bool = True,
        loss: str = "margin",
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        self._configure(rotation, translation, scale, brightness, loss, bounds)
        self.steps = check_int(steps, "steps", minimum=1)
        self.step_size = 2.5 / self.steps if step_size is None else check_real(step_size, "step_size", minimum=0.0)
        self.random_start = check_flag(random_start, "random_start")
        self.seed = check_seed(seed)

    def _search(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        n = x.shape[0]
        low = torch.tensor(self._set.low, dtype=x.dtype, device=x.device)
        high = torch.tensor(self._set.high, dtype=x.dtype, device=x.device)
        step = self.step_size * (high - low) / 2
        if self.random_start:
            params = self._set.random(n, x, make_generator(self.seed, x.device))
        else:
            params = self._set.identity(n, x)
        best, best_loss = params.clone(), torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
        for _ in range(self.steps + 1):
            with torch.enable_grad():
                theta = params.detach().requires_grad_(True)
                moved = self._set.apply(x, theta)
                _, loss, grad_image = oracle.objective_and_grad(
                    moved.detach(), lambda logits: self._loss(logits, y, targets)
                )
                (grad,) = torch.autograd.grad(moved, theta, grad_outputs=grad_image)
            better = loss > best_loss
            best[better], best_loss[better] = params[better], loss[better].to(best_loss.dtype)
            params = self._set.clamp(params + step * grad.sign())
        return best
