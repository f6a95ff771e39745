"""The score contract: ``score.fit(data)`` once, then ``score.score(x)`` per input, higher = less reliable.

A score is fitted on the classifier's training data (no OOD data is ever needed) and gives one
float per image. ``BaseScore`` owns the checks every score shares: fitted before use, images
of the fitted shape and inside [0, 1], batching without autograd, and the eval mode of the
networks involved. A subclass writes ``_fit`` and ``_score`` (and its save/load hooks).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor, nn

from hardened._util.batching import batch_slices, eval_mode
from hardened._util.checks import check_images
from hardened._util.device import model_device
from hardened.data.dataset import Dataset
from hardened.errors import ConfigError, InputError, NotFittedError
from hardened.registry import Registry

__all__ = ["SCORES", "Score", "check_score", "BaseScore", "ClassifierScore", "LogitScore", "as_images", "seeded_init"]


@runtime_checkable
class Score(Protocol):
    """What ``GuardedClassifier`` (and the adaptive attack on it) needs from a reliability score.

    A score is fitted before it reaches a guard; a fit-free one (softmax, energy) may come
    unfitted, and the guard's calibration then calls ``fit`` on the held-out images, which only
    records their shape.

    - ``fit(data)``: fit on in-distribution training data; return ``self``.
    - ``name``: the registry name, saved with the guard to rebuild the score.
    - ``differentiable``: ``True`` when ``score_tensor`` carries gradients to the input; the
      adaptive attack descends it, otherwise it only uses ``score``.
    - ``is_fitted`` / ``input_shape``: ready to score, and for which C×H×W (``None`` for a
      fit-free score whose shape the guard binds at calibration).
    - ``check_input(x, allow_empty=)``: images checked against the fitted shape.
    - ``score(x)``: scores (N,) float32 without autograd; higher = less reliable.
    - ``score_tensor(x)``: scores (N,) with autograd to ``x`` (differentiable scores only).
    - ``config()`` / ``state_tensors()``: the JSON record and the named tensors saved with a guard.
    """

    name: str
    differentiable: bool

    def fit(self, data: Dataset | Tensor, *, progress: bool = False) -> Score: ...

    @property
    def is_fitted(self) -> bool: ...

    @property
    def input_shape(self) -> tuple[int, int, int] | None: ...

    def check_input(self, x: object, *, allow_empty: bool = False) -> Tensor: ...

    def score(self, x: Tensor) -> Tensor: ...

    def score_tensor(self, x: Tensor) -> Tensor: ...

    def config(self) -> dict[str, Any]: ...

    def state_tensors(self) -> dict[str, Tensor]: ...


_SCORE_METHODS = ("fit", "check_input", "score", "score_tensor", "config", "state_tensors")
_SCORE_ATTRIBUTES = ("name", "differentiable", "is_fitted", "input_shape")


def check_score(score: object) -> Score:
    """``score`` if it keeps the ``Score`` contract, else ``ConfigError`` naming what it lacks."""
    missing = [m for m in _SCORE_ATTRIBUTES if not hasattr(score, m)]
    missing += [m for m in _SCORE_METHODS if not callable(getattr(score, m, None))]
    if missing or not isinstance(score, Score):
        raise ConfigError(
            f"score must keep the hardened.guard.Score contract, but {type(score).__name__} lacks "
            f"{', '.join(missing)}; build one with hardened.guard.make_score(...) or subclass BaseScore"
        )
    return score


def as_images(data: Dataset | Tensor) -> tuple[Tensor, Tensor | None]:
    """``(images, labels or None)`` from a ``Dataset`` or an image tensor."""
    if isinstance(data, Dataset):
        return data.x, data.y
    if isinstance(data, Tensor):
        return data, None
    raise InputError(f"fit data must be a hardened Dataset or an image tensor, got {type(data).__name__}")


ModuleT = TypeVar("ModuleT", bound=nn.Module)


@torch.no_grad()
def seeded_init(module: ModuleT, generator: torch.Generator) -> ModuleT:
    """Re-initialise every Linear/Conv/ConvTranspose layer of ``module`` from ``generator``.

    Weights and biases are drawn uniformly from ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` (the bound
    of PyTorch's default initialisation), so the result depends only on the generator's seed.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            bound = 1.0 / max(layer.weight[0].numel(), 1) ** 0.5
            fresh = torch.rand(layer.weight.shape, generator=generator) * 2 * bound - bound
            layer.weight.copy_(fresh)
            if layer.bias is not None:
                layer.bias.copy_(torch.rand(layer.bias.shape, generator=generator) * 2 * bound - bound)
    return module


def frozen(module: ModuleT) -> ModuleT:
    """``module`` in eval mode with gradients off for its parameters (a fitted score network)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def optimizer_step(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    """One update: clear the gradients, backpropagate ``loss``, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class BaseScore(ABC):
    """Shared machinery of every score.

    A score registers with ``@SCORES.register(name, aliases=...)`` in its own module and
    declares its capabilities as the class attributes ``differentiable``, ``needs_model`` and
    ``seeded`` (``SCORES.select`` reads them).

    Attributes:
        name: the registry name (``"vae"``, ``"softmax"``...).
        differentiable: ``True`` when ``score_tensor`` carries gradients to the input, which the
            adaptive attack uses; ``False`` for scores defined by a discrete search.
        needs_model: built as ``cls(model, **options)`` from the classifier (``ClassifierScore``).
        seeded: takes a ``seed`` option that fixes its fit (trained networks).
        requires_fit: ``False`` for scores that learn nothing (softmax, energy): usable unfitted,
            of any input shape until ``fit`` or a guard's calibration binds one.
        min_fit_images: the fewest training images ``fit`` accepts (a learned density needs
            more than a handful; fewer is refused rather than fitted to noise).
        input_shape: C×H×W the score was fitted for (``None`` before ``fit``).
        batch_size: images per batch in ``score``.
    """

    name: ClassVar[str] = "score"
    differentiable: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False
    seeded: ClassVar[bool] = False
    requires_fit: ClassVar[bool] = True
    min_fit_images: ClassVar[int] = 1

    def __init__(self, *, batch_size: int = 256) -> None:
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.input_shape: tuple[int, int, int] | None = None
        self.fit_record: dict[str, Any] = {}

    # ---- public API -------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return self.input_shape is not None or not self.requires_fit

    def fit(self, data: Dataset | Tensor, *, progress: bool = False) -> BaseScore:
        """Fit on in-distribution training images (labels are used where a score needs them)."""
        x, y = as_images(data)
        x = check_images(x)
        if x.shape[0] < self.min_fit_images:
            raise InputError(
                f"the {self.name} score needs at least {self.min_fit_images} training images to fit, "
                f"got {x.shape[0]}; give more (e.g. --n-train {self.min_fit_images} or more)"
            )
        if y is not None and y.shape[0] != x.shape[0]:
            raise InputError(f"{x.shape[0]} images but {y.shape[0]} labels")
        shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        self._fit(x, y, progress)
        self.input_shape = shape
        self.fit_record = {"n": int(x.shape[0]), **self.fit_record}
        return self

    def score(self, x: Tensor) -> Tensor:
        """Scores (N,) float32 for images N×C×H×W in [0, 1], without autograd; higher = less reliable.

        Scores are computed per batch of ``batch_size`` and do not depend on the batch they
        come in (streaming one image at a time gives the same values).
        """
        x = self.check_input(x, allow_empty=True)
        if x.shape[0] == 0:
            return torch.zeros(0, device=x.device)
        with self._modes():
            parts = []
            for part in batch_slices(x.shape[0], self.batch_size):
                with torch.no_grad():
                    parts.append(self._score(x[part]).detach().float().reshape(-1))
        return torch.cat(parts)

    def score_tensor(self, x: Tensor) -> Tensor:
        """Scores (N,) with autograd to ``x`` (for attacks); only for ``differentiable`` scores."""
        if not self.differentiable:
            raise ConfigError(f"the {self.name} score is not differentiable; use score() instead")
        self._check_fitted()
        self._check_shape(x)
        with self._modes():
            return self._score(x).reshape(-1)

    def check_input(self, x: object, *, allow_empty: bool = False) -> Tensor:
        """Images in [0, 1] of the fitted shape, else ``InputError``; ``NotFittedError`` before fit."""
        self._check_fitted()
        images = check_images(x, allow_empty=allow_empty)
        self._check_shape(images)
        return images

    def config(self) -> dict[str, Any]:
        """JSON-ready configuration (constructor arguments, fitted shape, fit record)."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "batch_size": self.batch_size,
            "options": self._options(),
            "fit_record": self.fit_record,
        }

    def state_tensors(self) -> dict[str, Tensor]:
        """The fitted weights as named CPU tensors (saved as safetensors)."""
        self._check_fitted()
        return {k: v.detach().cpu().contiguous() for k, v in self._state().items()}

    def load_state(self, config: dict[str, Any], tensors: dict[str, Tensor]) -> BaseScore:
        """Restore a fitted score from ``config()`` and ``state_tensors()``."""
        shape = config.get("input_shape")
        if not shape and not self.requires_fit:
            self.fit_record = dict(config.get("fit_record") or {})
            return self
        if not shape or len(shape) != 3:
            raise ConfigError("the saved score has no input shape: it was saved before fit")
        self._load(tensors, tuple(int(s) for s in shape))  # type: ignore[arg-type]
        self.input_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self.fit_record = dict(config.get("fit_record") or {})
        return self

    def __repr__(self) -> str:
        state = "fitted" if self.is_fitted else "not fitted"
        args = ", ".join(f"{k}={v!r}" for k, v in self._options().items())
        return f"{type(self).__name__}({args}) [{state}]"

    # ---- subclass hooks ---------------------------------------------------------------------

    @abstractmethod
    def _fit(self, x: Tensor, y: Tensor | None, progress: bool) -> None:
        """Fit on checked images ``x`` (N×C×H×W) and optional labels ``y``."""

    @abstractmethod
    def _score(self, x: Tensor) -> Tensor:
        """Per-sample scores (N,) for a checked batch; differentiable where the score is."""

    def _options(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-ready) that rebuild this score."""
        return {"batch_size": self.batch_size}

    def _state(self) -> dict[str, Tensor]:
        return {}

    def _load(self, tensors: dict[str, Tensor], input_shape: tuple[int, int, int]) -> None:
        return None

    def _networks(self) -> list[nn.Module]:
        """Modules put in eval mode while scoring (restored afterwards)."""
        return []

    # ---- helpers ----------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"the {self.name} score is not fitted: call fit(train_data) first")

    def _check_shape(self, x: Tensor) -> None:
        expected = self.input_shape
        if expected is None:  # a fit-free score not bound to a shape: the model checks it
            return
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            got = "×".join(map(str, x.shape[1:])) if x.dim() == 4 else f"shape {tuple(x.shape)}"
            want = "×".join(map(str, expected or ()))
            raise InputError(
                f"the {self.name} score was fitted for images of shape {want} (C×H×W) but got {got}; "
                "convert the input to the classifier's format (see hardened.guard.probes.to_format)"
            )

    def _modes(self) -> _EvalModes:
        return _EvalModes(self._networks())


class _EvalModes:
    """Put several modules in eval mode and restore each one's mode on exit."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self._contexts = [eval_mode(m) for m in modules]

    def __enter__(self) -> None:
        for context in self._contexts:
            context.__enter__()

    def __exit__(self, *exc: object) -> None:
        for context in reversed(self._contexts):
            context.__exit__(*exc)


class ClassifierScore(BaseScore):
    """A score computed from the classifier itself (softmax, energy, Mahalanobis, delta_z)."""

    needs_model = True

    def __init__(self, model: nn.Module, *, batch_size: int = 256) -> None:
        super().__init__(batch_size=batch_size)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"the {self.name} score needs the classifier (an nn.Module), got {type(model).__name__}")
        self.model = model

    def _networks(self) -> list[nn.Module]:
        return [self.model]

    def score_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scores (N,) and the classifier's logits (N×K, float32) for images ``x``, without autograd.

        A guarded prediction needs both, from one classifier pass: a score that computes them
        together (``_score_with_logits``: softmax, energy, Mahalanobis) does; otherwise, where
        ``_score`` calls the classifier on the batch it was given, the logits are read from that
        pass by a hook, and failing that (a ScriptModule takes no hooks) the classifier runs once
        more. Batching and checks are those of ``score``.
        """
        x = self.check_input(x, allow_empty=True).to(model_device(self.model))
        together = _scores_with_logits(type(self))
        scores, logits = [], []
        with self._modes(), torch.no_grad():
            for part in batch_slices(x.shape[0], self.batch_size) if x.shape[0] else [slice(0, 0)]:
                batch = x[part] if part.stop - part.start < x.shape[0] else x  # one batch: no view
                if together and batch.shape[0]:
                    score, out = self._score_with_logits(batch)
                else:
                    seen: list[Tensor] = []
                    with _outputs_on(self.model, batch, seen):
                        score = self._score(batch) if batch.shape[0] else torch.zeros(0, device=x.device)
                    out = seen[0] if seen else self.model(batch)
                scores.append(score.detach().float().reshape(-1))
                logits.append(out.detach().float())
        if len(scores) == 1:  # one batch (a served request): no copy
            return scores[0], logits[0]
        return torch.cat(scores), torch.cat(logits)

    def _score_with_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``_score(x)`` and the classifier's logits on ``x`` from the same pass; a score that can
        give both overrides it (a served one-image request is bound by the count of operations
        and hooks, not by their arithmetic)."""
        raise NotImplementedError


@functools.cache  # a property of the class: looked up on every served batch
def _scores_with_logits(cls: type) -> bool:
    """Whether ``cls``'s ``_score_with_logits`` belongs with its ``_score``: defined in the class
    that defines the ``_score`` in use, or below it (a subclass that overrides only ``_score``
    gets the generic path, so the two never disagree)."""
    for klass in cls.__mro__:
        if "_score_with_logits" in vars(klass):
            return klass is not ClassifierScore
        if "_score" in vars(klass):
            return False
    return False


class LogitScore(ClassifierScore):
    """A classifier score that is a function of the logits alone (softmax, energy)."""

    def _score(self, x: Tensor) -> Tensor:
        return self._from_logits(self.model(x))

    def _score_with_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(x)
        return self._from_logits(logits), logits

    @abstractmethod
    def _from_logits(self, logits: Tensor) -> Tensor:
        """Per-sample scores (N,) from the classifier's logits (N×K)."""


@contextmanager
def _outputs_on(model: nn.Module, batch: Tensor, seen: list[Tensor]) -> Iterator[None]:
    """Record into ``seen`` what ``model`` returns when it is called on exactly ``batch`` (the
    same tensor object, so a concurrent call on other inputs is never mistaken for it)."""

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not seen and inputs and inputs[0] is batch and isinstance(output, Tensor):
            seen.append(output)

    try:
        handle = model.register_forward_hook(hook)
    except (RuntimeError, AttributeError):  # ScriptModules take no Python hooks
        yield
        return
    try:
        yield
    finally:
        handle.remove()


SCORES: Registry[BaseScore] = Registry(
    "score",
    group="hardened.scores",
    base=BaseScore,
    capabilities=("differentiable", "needs_model", "seeded"),
)
