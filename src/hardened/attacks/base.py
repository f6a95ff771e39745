"""The attack contract: ``attack(model, x, y) -> AttackResult``.

``Attack.__call__`` is the template method (after foolbox 3): it validates inputs, warns
(``BudgetWarning``) when the threat model's ball contains the whole pixel box, puts the model in
eval mode (restored afterwards), calls the subclass's ``_perturb``, projects the result into the
threat model, and measures success and norms. A subclass writes only ``_perturb``; iterative
gradient attacks write it with the kernel (``hardened.attacks.kernel.iterate``) and validate their
options with ``hardened.attacks.options``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, final

import torch
from torch import Tensor, nn

from hardened._util.batching import batch_slices, eval_mode
from hardened._util.checks import check_images, check_labels, check_model_output
from hardened._util.progress import ProgressTask
from hardened.attacks.losses import attack_loss, is_success
from hardened.attacks.options import warn_if_vacuous
from hardened.errors import ConfigError
from hardened.registry import Registry
from hardened.threat import ThreatModel, norms_of

__all__ = ["ATTACKS", "Attack", "AttackResult", "Model", "Oracle", "attack_in_batches", "merge_results"]

QUERY_BATCH = 256
"""Most images per model call of a no-grad query. Query attacks ask about thousands of images at
once (a one-pixel generation, a HopSkipJump gradient estimate, a spatial grid); on CPU a
``lenet`` costs about 100 us per image in batches up to 256 and 150-215 us in batches of
512-2,700 (measured, one thread), so larger questions are split."""

Model = nn.Module | Callable[[Tensor], Tensor]
"""A classifier as attacks see it: an ``nn.Module`` or, for attacks that need no gradients, any
function mapping images N×C×H×W to logits N×K."""


@dataclass(frozen=True)
class AttackResult:
    """The outcome of one attack on one batch.

    Attributes:
        x_adv: adversarial images, same shape/dtype/device as the input.
        success: bool (N,): the attack's goal is met (untargeted: prediction != label;
            targeted: prediction == target).
        labels: the true labels (N,).
        targets: the target labels (N,) of a targeted attack, else ``None``.
        pred_clean, pred_adv: predictions on the clean and adversarial images.
        confidence_adv: softmax probability of ``pred_adv``.
        norms: per-sample ``l0``, ``l1``, ``l2``, ``linf`` norms of ``x_adv - x``.
        forward_count: image-level forward evaluations spent (including input checks).
        gradient_count: image-level gradient (or relevance) evaluations spent.
        seconds: wall-clock time of the call.
        attack: the attack's name; params: its configuration.
        queries: int64 (N,): model evaluations each sample cost the attack's search, for
            score-based attacks that count them (``None`` otherwise). The input check and the
            final measurement add one each per sample; they are in ``forward_count``.
    """

    x_adv: Tensor
    success: Tensor
    labels: Tensor
    targets: Tensor | None
    pred_clean: Tensor
    pred_adv: Tensor
    confidence_adv: Tensor
    norms: dict[str, Tensor]
    forward_count: int
    gradient_count: int
    seconds: float
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    queries: Tensor | None = None

    @property
    def total_queries(self) -> int | None:
        """All the search's queries of the batch (``None`` when the attack does not count)."""
        return None if self.queries is None else int(self.queries.sum())

    @property
    def success_rate(self) -> float:
        """Fraction of samples where the attack's goal is met."""
        return float(self.success.float().mean()) if self.success.numel() else 0.0

    @property
    def clean_accuracy(self) -> float:
        return float((self.pred_clean == self.labels).float().mean())

    @property
    def robust_accuracy(self) -> float:
        """Fraction of samples still classified correctly after the attack."""
        return float((self.pred_adv == self.labels).float().mean())

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """A JSON-ready summary; ``per_sample=True`` adds per-sample lists (no images)."""
        out: dict[str, Any] = {
            "attack": self.attack,
            "params": self.params,
            "n": int(self.labels.numel()),
            "success_rate": self.success_rate,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "median_norms_of_successes": {
                k: (float(v[self.success].median()) if bool(self.success.any()) else None)
                for k, v in self.norms.items()
            },
            "forward_count": self.forward_count,
            "gradient_count": self.gradient_count,
            "seconds": self.seconds,
            "queries": self.total_queries,
        }
        if per_sample:
            out["per_sample"] = {
                "label": self.labels.tolist(),
                "target": None if self.targets is None else self.targets.tolist(),
                "pred_clean": self.pred_clean.tolist(),
                "pred_adv": self.pred_adv.tolist(),
                "confidence_adv": self.confidence_adv.tolist(),
                "success": self.success.tolist(),
                **{f"norm_{k}": v.tolist() for k, v in self.norms.items()},
                "queries": None if self.queries is None else self.queries.tolist(),
            }
        return out


class Oracle:
    """The model as an attack sees it: logits and loss gradients w.r.t. the input, counted.

    Gradients are taken with ``torch.autograd.grad`` with respect to the input only, so no
    parameter ``.grad`` is ever accumulated. ``query`` counts score queries per sample of the
    ``n`` attacked images (``queries``, created on the first query).
    """

    def __init__(self, model: Model, num_classes: int, n: int = 0) -> None:
        self.model = model
        self.num_classes = num_classes
        self.n = n
        self.forward_count = 0
        self.gradient_count = 0
        self.queries: Tensor | None = None
        self._primed: tuple[Tensor, Tensor] | None = None

    def prime(self, x_var: Tensor, logits: Tensor) -> None:
        """Keep the graph of a forward pass already made on ``x_var`` (which requires grad).

        The next ``loss_and_grad`` on an input equal to ``x_var`` backpropagates through this
        graph instead of running the model again: a one-step attack that starts at the clean
        image then costs one forward and one backward, like a bare FGSM loop.
        """
        self._primed = (x_var, logits)

    def _take_primed(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        primed, self._primed = self._primed, None
        if primed is not None and torch.equal(primed[0].detach(), x):
            return primed
        return None

    def logits(self, x: Tensor) -> Tensor:
        """Logits without autograd, in model calls of at most ``QUERY_BATCH`` images."""
        self.forward_count += x.shape[0]
        with torch.no_grad():
            if x.shape[0] <= QUERY_BATCH:
                return self.model(x)
            return torch.cat([self.model(x[s]) for s in batch_slices(x.shape[0], QUERY_BATCH)])

    @property
    def module(self) -> nn.Module:
        """The model as an ``nn.Module``: what gradient attacks are given (the base class checks)."""
        if not isinstance(self.model, nn.Module):
            raise ConfigError(f"this attack needs a torch nn.Module, got {type(self.model).__name__}")
        return self.model

    def query(self, x: Tensor, rows: Tensor) -> Tensor:
        """Logits without autograd for the images ``x`` of batch rows ``rows`` (int64, len(x)),
        counted as one query for each of those rows."""
        if self.queries is None:
            self.queries = torch.zeros(self.n, dtype=torch.int64, device=rows.device)
        self.queries.index_add_(0, rows, torch.ones_like(rows))
        return self.logits(x)

    def objective_and_grad(
        self, x: Tensor, objective: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(logits, objective(logits), d objective(logits).sum() / d x)``, detached.

        ``objective`` maps logits N×K to per-sample values N; a primed graph on an equal ``x``
        (``prime``) is reused instead of a new forward pass.
        """
        self.gradient_count += x.shape[0]
        primed = self._take_primed(x)
        with torch.enable_grad():
            if primed is not None:
                x_var, logits = primed
            else:
                self.forward_count += x.shape[0]
                x_var = x.detach().requires_grad_(True)
                logits = self.model(x_var)
            values = objective(logits)
            (grad,) = torch.autograd.grad(values.sum(), x_var)
        return logits.detach(), values.detach(), grad.detach()

    def loss_and_grad(
        self,
        x: Tensor,
        labels: Tensor,
        *,
        loss: str = "ce",
        targeted: bool = False,
        true_labels: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(logits, per-sample loss, d loss / d x)`` for a batch.

        ``true_labels`` are needed by the targeted DLR loss (``labels`` are then the targets).
        """
        return self.objective_and_grad(
            x, lambda logits: attack_loss(loss, logits, labels, targeted, true_labels=true_labels)
        )

    def input_grad(self, x: Tensor, objective: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """Gradient of ``objective(logits).sum()`` w.r.t. ``x``; returns ``(logits, grad)``."""
        logits, _, grad = self.objective_and_grad(x, objective)
        return logits, grad


class Attack(ABC):
    """Base class of all attacks. Configure at construction, call as ``attack(model, x, y)``.

    Subclasses set ``name``, ``self.bounds`` and optionally ``self.threat`` (a ``ThreatModel``
    the result is projected into; ``None`` for attacks bounded otherwise, e.g. pixel budgets),
    and implement ``_perturb``. They register with ``@ATTACKS.register(name, aliases=...)`` and
    declare their capabilities as the class attributes below (``ATTACKS.select`` reads them).

    Capabilities:
        norms: the perturbation norms the attack supports (``"linf"``, ``"l2"``, ``"l1"``, or
            ``"l0"`` for pixel budgets).
        targeted: accepts ``targets=``.
        needs_gradients: uses input gradients (or relevance) of the model.
        scores_only: needs only the model's outputs (logits), no gradients.
        labels_only: needs only the model's predicted labels.
        seeded: draws random numbers from its ``seed`` (the same seed gives the same result).
        minimal: a minimal-norm attack: it searches the smallest adversarial perturbation, so
            ``eps`` is an optional bound (``None``: unbounded) and ``norms`` are per-sample minima.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "supports_targeted" in vars(cls):
            raise TypeError(f"{cls.__qualname__}: supports_targeted is now the capability targeted")

    name: ClassVar[str] = "attack"
    norms: ClassVar[tuple[str, ...]] = ()
    targeted: ClassVar[bool] = False
    needs_gradients: ClassVar[bool] = True
    scores_only: ClassVar[bool] = False
    labels_only: ClassVar[bool] = False
    seeded: ClassVar[bool] = False
    minimal: ClassVar[bool] = False

    threat: ThreatModel | None = None
    bounds: tuple[float, float] = (0.0, 1.0)

    @final
    def __call__(
        self, model: Model, x: Tensor, y: Tensor, *, targets: Tensor | None = None
    ) -> AttackResult:
        """Attack ``model`` on images ``x`` (N×C×H×W in ``bounds``) with true labels ``y``.

        ``targets`` (N,) makes the attack targeted where the attack supports it. ``model`` may be
        a plain function ``x -> logits`` for attacks with ``needs_gradients = False``.
        """
        start = time.perf_counter()
        x = check_images(x, self.bounds)
        if self.threat is not None:
            warn_if_vacuous(self.threat, x[0].numel())
        if targets is not None and not self.targeted:
            raise ConfigError(f"the {self.name} attack has no targeted mode; drop targets=")
        if not isinstance(model, nn.Module):
            if self.needs_gradients:
                raise ConfigError(
                    f"the {self.name} attack needs gradients, so the model must be a torch "
                    f"nn.Module, got {type(model).__name__}; use a score-based attack such as "
                    "'square' for a model given as a function"
                )
            if not callable(model):
                raise ConfigError(f"the model must be callable (x -> logits), got {type(model).__name__}")
        with eval_mode(model) if isinstance(model, nn.Module) else nullcontext():
            x_var = x.detach().requires_grad_(True) if self._first_gradient_at_clean() else None
            clean_graph = check_model_output(model, x if x_var is None else x_var, keep_graph=x_var is not None)
            clean_logits = clean_graph.detach()
            num_classes = clean_logits.shape[1]
            y = check_labels(y, x.shape[0], num_classes).to(x.device)
            if targets is not None:
                targets = check_labels(targets, x.shape[0], num_classes, name="targets")
                targets = targets.to(x.device)
            oracle = Oracle(model, num_classes, n=x.shape[0])
            oracle.forward_count += x.shape[0]
            if x_var is not None:
                oracle.prime(x_var, clean_graph)
            del clean_graph
            x_adv = self._perturb(oracle, x.detach().clone(), y, targets)
            x_adv = x_adv.detach()
            if self.threat is not None:
                x_adv = self.threat.project(x_adv, x)
            else:
                x_adv = x_adv.clamp(*self.bounds)
            x_adv = x_adv.to(dtype=x.dtype)
            adv_logits = oracle.logits(x_adv)
        probabilities = adv_logits.float().softmax(dim=1)
        pred_adv = probabilities.argmax(dim=1)
        return AttackResult(
            x_adv=x_adv,
            success=is_success(adv_logits, y, targets),
            labels=y,
            targets=targets,
            pred_clean=clean_logits.argmax(dim=1),
            pred_adv=pred_adv,
            confidence_adv=probabilities.gather(1, pred_adv[:, None]).squeeze(1),
            norms=norms_of(x_adv - x),
            forward_count=oracle.forward_count,
            gradient_count=oracle.gradient_count,
            seconds=time.perf_counter() - start,
            attack=self.name,
            params=self.params(),
            queries=oracle.queries,
        )

    def _first_gradient_at_clean(self) -> bool:
        """Whether ``_perturb`` first asks for a gradient at the clean images.

        If so, the input check's forward pass keeps its graph and the first gradient reuses it
        (saving one forward pass per call). Only attacks without a random start say yes.
        """
        return False

    @abstractmethod
    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        """Return adversarial images for ``x`` (a copy the subclass may modify)."""

    def params(self) -> dict[str, Any]:
        """The attack's configuration as a JSON-ready dict (tuples become lists)."""
        config = {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "threat"}
        if self.threat is not None:
            config |= {"norm": self.threat.norm, "eps": self.threat.eps}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


ATTACKS: Registry[Attack] = Registry(
    "attack",
    group="hardened.attacks",
    base=Attack,
    capabilities=("norms", "targeted", "needs_gradients", "scores_only", "labels_only", "seeded", "minimal"),
)


def attack_in_batches(
    attack: Attack,
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    targets: Tensor | None = None,
    bar: ProgressTask | None = None,
) -> AttackResult:
    """Run ``attack`` batch by batch over ``x`` and merge the results into one ``AttackResult``.

    Per-sample tensors are concatenated in order; counts and seconds are summed. ``bar``, if
    given, advances by the number of images after each batch. An empty ``x`` is an error of
    the attack itself (its input check).
    """
    parts = []
    for s in batch_slices(len(x), batch_size):
        parts.append(attack(model, x[s], y[s], targets=None if targets is None else targets[s]))
        if bar is not None:
            bar.advance(s.stop - s.start)
    if not parts:
        return attack(model, x, y, targets=targets)
    return merge_results(parts)


def merge_results(parts: list[AttackResult]) -> AttackResult:
    """One ``AttackResult`` from the results of consecutive batches (non-empty list), in order:
    per-sample tensors concatenated, counts and seconds summed."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return AttackResult(
        x_adv=torch.cat([r.x_adv for r in parts]),
        success=torch.cat([r.success for r in parts]),
        labels=torch.cat([r.labels for r in parts]),
        targets=None if first.targets is None else torch.cat([r.targets for r in parts if r.targets is not None]),
        pred_clean=torch.cat([r.pred_clean for r in parts]),
        pred_adv=torch.cat([r.pred_adv for r in parts]),
        confidence_adv=torch.cat([r.confidence_adv for r in parts]),
        norms={k: torch.cat([r.norms[k] for r in parts]) for k in first.norms},
        forward_count=sum(r.forward_count for r in parts),
        gradient_count=sum(r.gradient_count for r in parts),
        seconds=sum(r.seconds for r in parts),
        attack=first.attack,
        params=first.params,
        queries=None if first.queries is None else torch.cat([r.queries for r in parts if r.queries is not None]),
    )
