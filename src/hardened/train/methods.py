"""Training methods: each a small object that gives the loss of one batch.

A method turns a clean batch ``(x, y)`` into one or more optimiser updates (``StepLoss``): the
loss to minimise and a learning-rate factor. Methods that craft adversarial examples use the
library's attack kernel (``hardened.attacks.kernel``) and ``ThreatModel`` geometry; their randomness
comes only from what the trainer passes in (pure functions of the seed and the step or image), so
a resumed run repeats the uninterrupted one exactly. The built-in methods draw every random number
(random starts, noise, pool picks) from per-image streams seeded by (seed, epoch, image index)
(``StepContext.streams``), so a rank that trains on a slice of the global batch draws for its
images what one process draws for them.

==================  ===========================================================================
``standard``        cross-entropy on clean inputs
``pgd``             Madry et al. 2018: cross-entropy on PGD examples (Linf or L2)
``fgsm``            Wong et al. 2020 ("fast is better than free"): one FGSM step of 1.25·eps from
                    a random start, with a catastrophic-overfitting detector; options N-FGSM
                    (de Jorge et al. 2022) and GradAlign (Andriushchenko & Flammarion 2020)
``trades``          Zhang et al. 2019: CE(f(x), y) + beta · KL(f(x) || f(x'))
``noise``           Gaussian noise augmentation x + N(0, sigma²) (Cohen et al. 2019)
``ensemble``        Tramèr et al. 2018: half own adversarial examples, half crafted on one of
                    several fixed pre-trained source models
``semi-supervised`` Carmon et al. 2019 (robust self-training): pseudo-labels from a non-robust
                    model on an unlabeled pool; alternates standard training on the labelled
                    batch with adversarial training on a pseudo-labelled pool batch (lower LR)
==================  ===========================================================================
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardened._util.batching import eval_mode, predict_logits
from hardened._util.device import model_device
from hardened._util.seeding import ImageStreams, draw_per_image
from hardened._util.validate import check_int, check_real
from hardened.attacks.base import Oracle
from hardened.attacks.kernel import attack_objective, iterate, rows, start_point, steepest
from hardened.attacks.options import warn_if_vacuous
from hardened.data.dataset import Dataset
from hardened.errors import ConfigError
from hardened.registry import Registry
from hardened.threat import ThreatModel
from hardened.train.config import FitFunction, TrainConfig

__all__ = [
    "GUARD_ACTIONS",
    "METHODS",
    "CollapseGuard",
    "Ensemble",
    "FastFGSM",
    "GaussianNoise",
    "Method",
    "PGDTraining",
    "SemiSupervised",
    "Standard",
    "StepContext",
    "StepLoss",
    "TRADES",
    "TrainingMethod",
    "as_method",
    "grad_align_penalty",
    "nfgsm_noise",
    "make_method",
    "split_unlabeled",
]


GUARD_ACTIONS = ("stop", "lower", "report")


class TrainingMethod(Protocol):
    """The minimal protocol: the batch loss to minimise (may craft adversarial inputs first)."""

    name: str

    def batch_loss(self, model: nn.Module, x: Tensor, y: Tensor, generator: Any) -> Tensor: ...

    def config(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StepContext:
    """What the trainer tells a method about the current step.

    ``step`` is the 0-based global step; ``generator`` is seeded from ``(seed, step)`` (and the
    rank, on ranks other than 0); ``streams`` holds one stream per image of ``x``, seeded from
    ``(seed, epoch, image index)``. ``offset`` is the place of ``x``'s first image in the global
    batch of ``global_batch`` images (0 and ``None`` = ``len(x)`` in one process).
    """

    epoch: int
    step: int
    generator: torch.Generator
    lr: float
    total_steps: int = 0
    streams: ImageStreams | None = None
    offset: int = 0
    global_batch: int | None = None

    def randomness(self, per_image: bool) -> torch.Generator | ImageStreams:
        """The per-image ``streams`` when asked for and given, else the step ``generator``."""
        return self.streams if per_image and self.streams is not None else self.generator


@dataclass(frozen=True)
class StepLoss:
    """One optimiser update: minimise ``loss`` with the learning rate times ``lr_scale``."""

    loss: Tensor
    lr_scale: float = 1.0
    kind: str = "main"


@dataclass(frozen=True)
class CollapseGuard:
    """Catastrophic-overfitting detector (Wong et al. 2020 section 5.1; Andriushchenko &
    Flammarion 2020 section 3).

    The trainer measures, on ``n`` held-out images every ``every`` steps (0: at the end of each
    epoch), the accuracy under plain FGSM and under PGD (``steps`` iterations) at the method's
    full threat model. Catastrophic overfitting has one signature: the model still resists the
    single-step attack it is trained on while multi-step PGD breaks it. The guard fires when

    - ``fgsm - pgd > gap`` and ``pgd < floor`` (FGSM accuracy far above a PGD accuracy near
      chance: the signature, also when PGD accuracy never rose), or
    - ``pgd < best - drop`` (PGD accuracy fell far below the best seen so far),

    and only once the eps warm-up is over and the fraction ``start`` of the steps has run (the
    published fast-MNIST recipe, no warm-up, passed FGSM 76% / PGD 6% after its first epoch of
    ten, with the cyclic lr still rising). The floor keeps a model that is still learning
    robustness from firing: in issue 18's runs a healthy lenet at Linf 0.3 on MNIST passed
    FGSM 68% / PGD 16% right after the warm-up and rose to 73% / 34%. ``action``: ``"stop"`` restores the best weights
    and stops; ``"lower"`` restores the best weights, multiplies the method's step size by
    ``lower_factor`` and goes on; ``"report"`` records the event (log and warning) and goes on.
    """

    drop: float = 0.3
    every: int = 0
    n: int = 128
    steps: int = 10
    action: str = "stop"
    gap: float = 0.3
    lower_factor: float = 0.5
    floor: float = 0.1
    start: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 < self.drop <= 1.0:
            raise ConfigError(f"guard drop must be in (0, 1], got {self.drop}")
        if not 0.0 < self.gap <= 1.0:
            raise ConfigError(f"guard gap must be in (0, 1], got {self.gap}")
        if not 0.0 < self.floor <= 1.0:
            raise ConfigError(f"guard floor must be in (0, 1], got {self.floor}")
        if not 0.0 <= self.start < 1.0:
            raise ConfigError(f"guard start must be a fraction of the training in [0, 1), got {self.start}")
        if self.every < 0 or self.n < 1 or self.steps < 1:
            raise ConfigError("guard every must be >= 0, n >= 1 and steps >= 1")
        if self.action not in GUARD_ACTIONS:
            raise ConfigError(f"guard action must be one of {', '.join(GUARD_ACTIONS)}, got {self.action!r}")
        if not 0.0 < self.lower_factor < 1.0:
            raise ConfigError(f"guard lower_factor must be in (0, 1), got {self.lower_factor}")

    def collapsed(self, accuracy: float, best: float) -> bool:
        """True when the PGD ``accuracy`` lies more than ``drop`` below ``best``."""
        return accuracy < best - self.drop

    def diagnose(self, fgsm: float, pgd: float, best: float) -> str | None:
        """Why the accuracies ``fgsm``, ``pgd`` (and the best PGD so far) show a collapse; ``None``: healthy."""
        if fgsm - pgd > self.gap and pgd < self.floor:
            return (f"FGSM accuracy {fgsm:.3f} is {fgsm - pgd:.3f} above PGD accuracy {pgd:.3f} "
                    f"(gap > {self.gap:g}, PGD accuracy below {self.floor:g})")
        if self.collapsed(pgd, best):
            return f"PGD accuracy fell to {pgd:.3f} from {best:.3f} (drop > {self.drop:g})"
        return None


class Method:
    """Base class of the library's methods: hooks with defaults, counters, resumable state.

    Subclasses set ``name`` and write ``batch_loss`` (one update) or ``updates`` (several).
    ``counters`` record what a method consumed (adversarial examples per source, pool samples),
    so tests and reports can check that extra inputs are really used. A method registers with
    ``@METHODS.register(name, aliases=...)``; its capability ``adversarial`` says whether it
    trains on crafted adversarial examples. ``per_image`` (the built-ins): ``batch_loss`` gets the
    per-image ``ImageStreams`` (draw with ``draw_per_image``) instead of the step's generator.
    """

    name: ClassVar[str] = "method"
    adversarial: ClassVar[bool] = False
    per_image: ClassVar[bool] = False
    threat: ThreatModel | None = None
    guard: CollapseGuard | None = None

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    def _count(self, key: str, amount: int) -> None:
        self.counters[key] = self.counters.get(key, 0) + int(amount)

    def prepare(
        self, model: nn.Module, data: Dataset, *, config: TrainConfig | None = None, fit: FitFunction | None = None
    ) -> None:
        """Validate against the model and data and set up; runs once before training.

        ``config`` is the run's ``TrainConfig`` and ``fit`` the trainer's standard training of a
        helper model (both ``None`` outside a trainer).
        """

    def batch_loss(self, model: nn.Module, x: Tensor, y: Tensor, generator: Any) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement batch_loss or updates")

    def updates(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> Iterator[StepLoss]:
        """The optimiser updates of one step; each is applied before the next is computed."""
        yield StepLoss(self.batch_loss(model, x, y, ctx.randomness(self.per_image)))

    def params(self) -> dict[str, Any]:
        return {}

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.name, **self.params()}
        if self.threat is not None:
            out |= {"norm": self.threat.norm, "eps": self.threat.eps}
        if self.guard is not None:
            out["guard"] = asdict(self.guard)
        return out

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (plain types and tensors only)."""
        return {"counters": dict(self.counters)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counters = {str(k): int(v) for k, v in dict(state.get("counters", {})).items()}


METHODS: Registry[Method] = Registry(
    "training method", group="hardened.methods", base=Method, capabilities=("adversarial",)
)


class _Wrapped(Method):
    """Adapts any object with ``batch_loss``/``config`` (the ``TrainingMethod`` protocol)."""

    def __init__(self, inner: TrainingMethod) -> None:
        super().__init__()
        self.inner = inner
        self.name = str(getattr(inner, "name", type(inner).__name__))  # type: ignore[misc]

    def batch_loss(self, model: nn.Module, x: Tensor, y: Tensor, generator: Any) -> Tensor:
        return self.inner.batch_loss(model, x, y, generator)

    def config(self) -> dict[str, Any]:
        return dict(self.inner.config())


def as_method(method: Method | TrainingMethod | None) -> Method:
    """``None`` -> ``Standard()``; a protocol object -> wrapped; a ``Method`` -> itself."""
    if method is None:
        return Standard()
    if isinstance(method, Method):
        return method
    if not callable(getattr(method, "batch_loss", None)):
        raise ConfigError(f"{type(method).__name__} is not a training method: it needs batch_loss()")
    return _Wrapped(method)


def _check_threat(
    eps: float, norm: str, steps: int, step_size: float | None, random_start: bool,
    bounds: tuple[float, float], default_factor: float,
) -> tuple[ThreatModel, int, float]:
    """Validate an adversarial method's settings; return (threat, steps, step size).

    The step size defaults to ``default_factor * eps / steps``.
    Warns (``BudgetWarning``) for a Linf eps that allows any image.
    """
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps > 0):
        raise ConfigError(
            f"eps must be > 0 for an adversarial training method, got {eps!r}; "
            "use --method standard to train without adversarial examples"
        )
    threat = ThreatModel(norm, eps, bounds)
    warn_if_vacuous(threat)
    steps = check_int(steps, "steps", minimum=1)
    default = default_factor * threat.eps / steps
    step = check_real(default if step_size is None else step_size, "step size", minimum=0.0, open_below=True)
    if step > threat.eps and not random_start:
        raise ConfigError(
            f"step size {step:g} is larger than eps {threat.eps:g} with no random start: every "
            "step would jump to the boundary of the ball; lower the step size or enable the "
            "random start"
        )
    return threat, steps, step


def craft(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    steps: int,
    step_size: float,
    random_start: bool,
    generator: torch.Generator | ImageStreams,
) -> tuple[Tensor, int]:
    """Training-time PGD examples: the attack kernel, all ``steps`` run, model in eval mode.

    Cross-entropy ascent with the norm's steepest direction (PGD without early stopping).
    Returns ``(x_adv, gradient evaluations)``. Randomness comes only from ``generator`` (one,
    or ``ImageStreams``: each image's start from its own stream); no
    input check or extra measurement forward passes (the trainer calls this every batch).
    """
    oracle = Oracle(model, 0)
    x = x.detach()
    start = draw_per_image(lambda rows, g: start_point(threat, rows, random_start, g), x, generator)
    with eval_mode(model):
        x_adv = iterate(
            oracle, x, start, threat=threat, steps=steps,
            step_size=step_size, objective=attack_objective("ce", y), direction=steepest(threat.norm),
        )
    return x_adv.detach(), oracle.gradient_count


@METHODS.register("standard")
class Standard(Method):
    """Plain cross-entropy on clean inputs."""

    name = "standard"
    per_image = True

    def batch_loss(self, model: nn.Module, x: Tensor, y: Tensor, generator: Any) -> Tensor:
        return F.cross_entropy(model(x), y)


class _Adversarial(Method):
    """Shared settings of the PGD-based methods."""

    adversarial = True
    per_image = True

    def __init__(
        self, *, eps: float, norm: str, steps: int, step_size: float | None, random_start: bool,
        bounds: tuple[float, float], default_factor: float = 2.5, eps_warmup: float = 0.0,
    ) -> None:
        super().__init__()
        self.threat, self.steps, self.step_size = _check_threat(
            eps, norm, steps, step_size, random_start, bounds, default_factor
        )
        self.random_start = bool(random_start)
        if not 0.0 <= float(eps_warmup) < 1.0:
            raise ConfigError(f"eps_warmup must be a fraction of the training in [0, 1), got {eps_warmup}")
        self.eps_warmup = float(eps_warmup)
        self._scale = 1.0
        self.step_factor = 1.0  # lowered by the collapse guard's "lower" action; checkpointed

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": self.steps, "step_size": self.step_size,
                               "random_start": self.random_start}
        return out | ({"eps_warmup": self.eps_warmup} if self.eps_warmup else {})

    def _begin(self, ctx: StepContext) -> None:
        """Set this step's eps factor: ``min(1, (step + 1) / (eps_warmup · total_steps))``."""
        ramp = self.eps_warmup * ctx.total_steps
        self._scale = min(1.0, (ctx.step + 1) / ramp) if ramp >= 1 else 1.0

    @property
    def warming_up(self) -> bool:
        """True while the eps warm-up still scales the threat model down."""
        return self._scale < 1.0

    def lower_step(self, factor: float) -> float:
        """Multiply the step size by ``factor`` from now on (the guard's "lower"); return the new step."""
        self.step_factor *= float(factor)
        return self.step_size * self.step_factor

    def _current(self) -> tuple[ThreatModel, float]:
        """The threat model and step size of the current step (scaled during the eps warm-up)."""
        assert self.threat is not None
        step = self.step_size * self.step_factor
        if self._scale >= 1.0:
            return self.threat, step
        threat = ThreatModel(self.threat.norm, self.threat.eps * self._scale, self.threat.bounds)
        return threat, step * self._scale

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"step_factor": self.step_factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.step_factor = float(state.get("step_factor", 1.0))

    def updates(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> Iterator[StepLoss]:
        self._begin(ctx)
        yield from super().updates(model, x, y, ctx)

    def _trades_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | ImageStreams, beta: float
    ) -> Tensor:
        """TRADES (Zhang et al. 2019): CE(f(x), y) + beta · KL(softmax f(x) || softmax f(x')), batch mean.

        x' maximises the KL term by ``steps`` ascent steps from ``x + 0.001·N(0, I)``.
        """
        threat, step_size = self._current()
        oracle = Oracle(model, 0)
        with eval_mode(model):
            with torch.no_grad():
                p_clean = model(x).float().softmax(1)
            noise = draw_per_image(_gaussian, x, generator)

            def kl(logits: Tensor, index: Tensor | None) -> Tensor:
                return F.kl_div(logits.float().log_softmax(1), rows(p_clean, index), reduction="none").sum(1)

            x_adv = iterate(
                oracle, x, threat.clip(x + 0.001 * noise), threat=threat, steps=self.steps,
                step_size=step_size, objective=kl, direction=steepest(threat.norm),
            )
        self._count("adversarial_examples", x.shape[0])
        self._count("gradient_evaluations", oracle.gradient_count)
        logits = model(torch.cat([x, x_adv.detach()]))
        clean, adv = logits[: len(x)], logits[len(x):]
        robust = F.kl_div(adv.float().log_softmax(1), clean.float().softmax(1), reduction="batchmean")
        return F.cross_entropy(clean, y) + beta * robust

    def _adversarial(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | ImageStreams) -> Tensor:
        threat, step_size = self._current()
        x_adv, grads = craft(
            model, x, y, threat, steps=self.steps, step_size=step_size,
            random_start=self.random_start, generator=generator,
        )
        self._count("adversarial_examples", x.shape[0])
        self._count("gradient_evaluations", grads)
        return x_adv


@METHODS.register("pgd")
class PGDTraining(_Adversarial):
    """Madry et al. 2018: minimise CE(f(x'), y) with x' = PGD(x) in the ``norm`` ball of ``eps``.

    Step size defaults to ``2.5 · eps / steps``.
    """

    name = "pgd"

    def __init__(
        self, *, eps: float, norm: str = "linf", steps: int = 10, step_size: float | None = None,
        random_start: bool = True, eps_warmup: float = 0.0,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps, step_size=step_size,
                         random_start=random_start, bounds=bounds, eps_warmup=eps_warmup)

    def batch_loss(self, model: nn.Module, x: Tensor, y: Tensor, generator: Any) -> Tensor:
        return F.cross_entropy(model(self._adversarial(model, x, y, generator)), y)


def grad_align_penalty(model: nn.Module, x: Tensor, x_noisy: Tensor, y: Tensor) -> Tensor:
    """GradAlign (Andriushchenko & Flammarion 2020, eq. 6): ``1 - mean_i cos(g_i, g̃_i)``.

    ``g_i = ∇x CE(f(x_i), y_i)`` (a constant) and ``g̃_i = ∇x CE(f(x̃_i), y_i)`` at the noisy
    points ``x_noisy`` (built with ``create_graph``, so the penalty back-propagates to the
    weights: double backprop). Shapes: ``x``, ``x_noisy`` N×C×H×W, ``y`` N; returns a scalar.
    """
    clean = x.detach().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(clean), y, reduction="sum"), clean)[0].detach()
    noisy = x_noisy.detach().requires_grad_(True)
    grad_noisy = torch.autograd.grad(
        F.cross_entropy(model(noisy), y, reduction="sum"), noisy, create_graph=True
    )[0]
    cos = F.cosine_similarity(grad.flatten(1), grad_noisy.flatten(1), dim=1, eps=1e-12)
    return 1.0 - cos.mean()


def nfgsm_noise(x: Tensor, eps: float, k: float, generator: torch.Generator | None) -> Tensor:
    """N-FGSM's noise (de Jorge et al. 2022): η ~ U[-k·eps, k·eps]^d, independent per pixel."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (2.0 * u - 1.0) * (k * eps)


@METHODS.register("fgsm")
class FastFGSM(_Adversarial):
    """Fast single-step adversarial training, with the published fixes for catastrophic overfitting.

    - default (Wong et al. 2020, RS-FGSM): x' = clip(Π_ball(x + δ0 + α·sign(∇))), δ0 ~ U(ball),
      ``α = 1.25 · eps``; train with the cyclic learning rate (the CLI's default for fgsm). As in
      the authors' MNIST code, the start x + δ0 is *not* clipped to the pixel box: clipping it
      sends every saturated pixel (most of an MNIST digit's) to the same corner as plain FGSM
      would, and on mnist-5k at Linf 0.3 (lenet, lr 5e-3) PGD-40 accuracy was 32.3% unclipped
      against 15.7% clipped. ``clip_start=True`` restores the clipped start.
    - ``noise=k`` (N-FGSM, de Jorge et al. 2022, Linf): x̃ = clip(x + η), η ~ U[-k·eps, k·eps],
      x' = clip(x̃ + α·sign(∇ CE(f(x̃), y))) with ``α = eps`` by default and *no* projection
      onto the eps ball (‖x' - x‖∞ <= k·eps + α); the paper uses k = 2.
    - ``grad_align=λ`` (Andriushchenko & Flammarion 2020): adds ``λ · grad_align_penalty`` with
      x̃ drawn uniformly from the eps ball (clipped to the box); the paper's λ grows with eps
      (0.2 for CIFAR-10 at 8/255), so tune it for other settings.

    The default ``CollapseGuard`` watches FGSM against PGD accuracy for catastrophic overfitting.
    """

    name = "fgsm"
    noise: float | None
    grad_align: float
    clip_start: bool

    def __init__(
        self, *, eps: float, norm: str = "linf", step_size: float | None = None,
        random_start: bool = True, guard: CollapseGuard | None = CollapseGuard(),
        eps_warmup: float = 0.0, bounds: tuple[float, float] = (0.0, 1.0),
        noise: float | None = None, grad_align: float = 0.0, clip_start: bool = False,
    ) -> None:
        if noise is not None and not (isinstance(noise, numbers.Real) and math.isfinite(noise) and noise > 0):
            raise ConfigError(f"N-FGSM noise must be a multiple of eps > 0 (the paper: 2), got {noise!r}")
        if noise is not None and norm != "linf":
            raise ConfigError(f"N-FGSM noise is defined for the linf norm, not {norm!r}; use --norm linf")
        if not (isinstance(grad_align, numbers.Real) and math.isfinite(grad_align) and grad_align >= 0):
            raise ConfigError(f"grad_align must be a weight >= 0 (e.g. 0.2), got {grad_align!r}")
        super().__init__(eps=eps, norm=norm, steps=1, step_size=step_size,
                         random_start=random_start or noise is not None, bounds=bounds,
                         default_factor=1.25 if noise is None else 1.0, eps_warmup=eps_warmup)
        self.guard = guard
        self.noise = None if noise is None else float(noise)
        self.grad_align = float(grad_align)
        self.clip_start = bool(clip_start)

    def params(self) -> dict[str, Any]:
        out = {k: v for k, v in super().params().items() if k != "steps"}
        if self.clip_start and self.noise is None and self.random_start:
            out["clip_start"] = True
        if self.noise is not None:
            out = {k: v for k, v in out.items() if k != "random_start"} | {"noise": self.noise}
        return out | ({"grad_align": self.grad_align} if self.grad_align else {})

    def batch_loss(self, model: nn.Module, x: Tensor, y: Tensor, generator: Any) -> Tensor:
        x_adv = self._rs_fgsm(model, x, y, generator) if self.noise is None else self._nfgsm(model, x, y, generator)
        loss = F.cross_entropy(model(x_adv), y)
        if self.grad_align:
            threat, _ = self._current()
            noisy = draw_per_image(threat.random_start, x, generator)
            loss = loss + self.grad_align * grad_align_penalty(model, x, noisy, y)
        return loss

    def _rs_fgsm(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | ImageStreams) -> Tensor:
        """RS-FGSM's example: one step from the random start (unclipped unless ``clip_start``),
        then projected onto the ball and clipped to the box."""
        if self.clip_start or not self.random_start:
            return self._adversarial(model, x, y, generator)
        threat, step_size = self._current()
        oracle = Oracle(model, 0)
        start = draw_per_image(lambda rows, g: threat.random_start(rows, g, clip=False), x, generator)
        with eval_mode(model):
            x_adv = iterate(
                oracle, x, start, threat=threat, steps=1, step_size=step_size,
                objective=attack_objective("ce", y), direction=steepest(threat.norm),
            )
        self._count("adversarial_examples", x.shape[0])
        self._count("gradient_evaluations", oracle.gradient_count)
        return x_adv.detach()

    def _nfgsm(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | ImageStreams) -> Tensor:
        """N-FGSM's example: one signed step from the noisy point, clipped to the box only."""
        threat, step_size = self._current()
        assert self.noise is not None
        oracle = Oracle(model, 0)
        noise = self.noise
        start = threat.clip(x + draw_per_image(lambda rows, g: nfgsm_noise(rows, threat.eps, noise, g), x, generator))
        with eval_mode(model):
            x_adv = iterate(
                oracle, x, start, threat=threat, steps=1, step_size=step_size,
                objective=attack_objective("ce", y), direction=steepest("linf"),
                project=lambda x_new, _: threat.clip(x_new),
            )
        self._count("adversarial_examples", x.shape[0])
        self._count("gradient_evaluations", oracle.gradient_count)
        return x_adv.detach()


def _check_beta(beta: object) -> float:
    """TRADES' weight of the KL term: a finite number >= 0, else ``ConfigError``."""
    if not (isinstance(beta, numbers.Real) and math.isfinite(beta) and float(beta) >= 0):
        raise ConfigError(f"beta must be a finite number >= 0, got {beta!r}")
    return float(beta)


@METHODS.register("trades")
class TRADES(_Adversarial):
    """Zhang et al. 2019: CE(f(x), y) + beta · KL(softmax f(x) || softmax f(x')), batch mean.

    x' maximises the KL term by ``steps`` ascent steps from ``x + 0.001·N(0, I)``.
    """

    name = "trades"

    def __init__(
        self, *, eps: float, beta: float = 6.0, norm: str = "linf", steps: int = 10,
        step_size: float | None = None, eps_warmup: float = 0.0,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps, step_size=step_size,
                         random_start=True, bounds=bounds, eps_warmup=eps_warmup)
        self.beta = _check_beta(beta)

    def params(self) -> dict[str, Any]:
        out = {k: v for k, v in super().params().items() if k != "random_start"}
        return {"beta": self.beta, **out}

    def batch_loss(self, model: nn.Module, x: Tensor, y: Tensor, generator: Any) -> Tensor:
        return self._trades_loss(model, x, y, generator, self.beta)


@METHODS.register("noise")
class GaussianNoise(Method):
    """Gaussian data augmentation: CE(f(x + sigma·N(0, I)), y), not clipped to the pixel box.

    The training randomized smoothing needs (Cohen et al. 2019): certify with the same sigma.
    """

    name = "noise"
    per_image = True

    def __init__(self, *, sigma: float) -> None:
        super().__init__()
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ConfigError(f"sigma must be > 0 for noise training, got {sigma!r}")
        self.sigma = float(sigma)

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def batch_loss(self, model: nn.Module, x: Tensor, y: Tensor, generator: Any) -> Tensor:
        noise = draw_per_image(_gaussian, x, generator)
        self._count("noisy_examples", x.shape[0])
        return F.cross_entropy(model(x + self.sigma * noise), y)


def _gaussian(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise of ``x``'s shape, device and dtype."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _check_compatible(other: nn.Module, model: nn.Module, data: Dataset, what: str) -> nn.Module:
    """Check ``other`` takes ``data``'s images and has ``model``'s classes; return it on the device."""
    device = model_device(model)
    other_device = model_device(other, default=device)
    if other_device != device:
        other = copy.deepcopy(other).to(device)
    probe = data.x[:2].to(device)
    try:
        with eval_mode(other), torch.no_grad():
            out = other(probe)
    except RuntimeError as error:
        raise ConfigError(
            f"{what} cannot take images of shape {'×'.join(map(str, data.input_shape))} "
            f"(C×H×W) of {data.name}: {str(error).splitlines()[0]}; use a model trained on this data"
        ) from error
    with eval_mode(model), torch.no_grad():
        expected = model(probe).shape[1]
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] != expected:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(
            f"{what} returns outputs of shape {shape} but the model being trained has "
            f"{expected} classes; use a model with the same classes"
        )
    return other


@METHODS.register("ensemble")
class Ensemble(_Adversarial):
    """Ensemble adversarial training (Tramèr et al. 2018).

    Each batch: loss = ½·CE(f(x), y) + ½·CE(f(x'), y), where the first half of x' is crafted
    on the model being trained and the second half on fixed source model ``step mod m``
    (round robin); the halves are those of the global batch, so an image keeps its half on any
    rank. Examples use the PGD loop (default: one step of 1.25·eps from a random start, i.e.
    R+FGSM). ``counters["source_k"]`` counts the examples crafted on source k.
    """

    name = "ensemble"

    def __init__(
        self, sources: Sequence[nn.Module], *, eps: float, norm: str = "linf", steps: int = 1,
        step_size: float | None = None, random_start: bool = True,
        source_names: Sequence[str] | None = None, eps_warmup: float = 0.0,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        default = 1.25 if steps == 1 else 2.5  # R+FGSM's 1.25 * eps for one step
        super().__init__(eps=eps, norm=norm, steps=steps, step_size=step_size,
                         random_start=random_start, bounds=bounds, default_factor=default,
                         eps_warmup=eps_warmup)
        self.sources = list(sources)
        if not self.sources:
            raise ConfigError("ensemble training needs at least one source model (--source-model)")
        if source_names is not None and len(source_names) != len(self.sources):
            raise ConfigError(f"{len(self.sources)} source models but {len(source_names)} names")
        self.source_names = [str(s) for s in source_names] if source_names else [
            f"source_{k}" for k in range(len(self.sources))
        ]

    def params(self) -> dict[str, Any]:
        return super().params() | {"sources": list(self.source_names)}

    def prepare(
        self, model: nn.Module, data: Dataset, *, config: TrainConfig | None = None, fit: FitFunction | None = None
    ) -> None:
        self.sources = [
            _check_compatible(source, model, data, f"source model {name}")
            for source, name in zip(self.sources, self.source_names, strict=True)
        ]

    def batch_loss(self, model: nn.Module, x: Tensor, y: Tensor, generator: Any) -> Tensor:
        raise NotImplementedError("Ensemble uses updates(); it needs the step index")

    def updates(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> Iterator[StepLoss]:
        self._begin(ctx)
        threat, step_size = self._current()
        total = ctx.global_batch or len(x)
        half = min(max((total + 1) // 2 - ctx.offset, 0), len(x))  # this slice's share of the first half
        k = ctx.step % len(self.sources)
        random = ctx.randomness(self.per_image)
        own, other = (random[:half], random[half:]) if isinstance(random, ImageStreams) else (random, random)
        parts = [self._adversarial(model, x[:half], y[:half], own)] if half else []  # a slice may hold none
        self._count("own", half)
        if len(x) > half:
            crafted, grads = craft(
                self.sources[k], x[half:], y[half:], threat, steps=self.steps,
                step_size=step_size, random_start=self.random_start, generator=other,
            )
            parts.append(crafted)
            self._count(f"source_{k}", len(x) - half)
            self._count("source_gradient_evaluations", grads)
        logits = model(torch.cat([x, *parts]))
        loss = 0.5 * F.cross_entropy(logits[: len(x)], y) + 0.5 * F.cross_entropy(logits[len(x):], y)
        yield StepLoss(loss)


def split_unlabeled(data: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Tensor]:
    """Split ``data`` into a labelled part and an unlabeled pool (images only, labels dropped).

    A seeded permutation puts ``round(fraction · N)`` samples in the pool.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"the unlabeled fraction must be in (0, 1), got {fraction}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(int(seed)))
    cut = int(round(fraction * len(data)))
    if cut == 0 or cut == len(data):
        raise ConfigError(
            f"an unlabeled fraction of {fraction} leaves an empty part of {len(data)} samples"
        )
    labelled = data.subset(order[cut:], f"{data.name}:labelled")
    return labelled, data.x[order[:cut]]


SEMI_ROBUST_LOSSES = ("pgd", "trades")
"""The robust losses of ``SemiSupervised`` (``robust_loss=``)."""


@METHODS.register("semi-supervised", aliases=("rst", "semi", "semisupervised"))
class SemiSupervised(_Adversarial):
    """Robust self-training (Carmon et al. 2019) with pseudo-labels on an unlabeled pool.

    Before training, a non-robust ``labeler`` (given, or a copy of the initial model trained
    with standard training on the labelled data for ``labeler_epochs``) labels ``pool``. Each
    step then makes two updates: standard CE on the labelled batch (learning rate × 1), then
    robust training on a pool batch of the same size with its pseudo-labels (learning rate ×
    ``adversarial_lr_scale``). The robust loss is ``robust_loss="pgd"`` (CE on PGD examples) or
    ``"trades"`` (the TRADES loss with ``beta``, as Carmon et al. use). ``labelled="adversarial"``
    trains the labelled batch with the same robust loss too. ``counters["pool_samples"]``
    counts pool images used.
    """

    name = "semi-supervised"

    def __init__(
        self, pool: Tensor, *, eps: float, norm: str = "linf", steps: int = 10,
        step_size: float | None = None, random_start: bool = True,
        labeler: nn.Module | None = None, labeler_epochs: int | None = None,
        adversarial_lr_scale: float = 0.5, labelled: str = "standard", eps_warmup: float = 0.0,
        bounds: tuple[float, float] = (0.0, 1.0), robust_loss: str = "pgd", beta: float = 6.0,
    ) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps, step_size=step_size,
                         random_start=random_start, bounds=bounds, eps_warmup=eps_warmup)
        if robust_loss not in SEMI_ROBUST_LOSSES:
            raise ConfigError(f"robust_loss must be one of {', '.join(SEMI_ROBUST_LOSSES)}, got {robust_loss!r}")
        if not isinstance(pool, Tensor) or pool.dim() != 4:
            raise ConfigError("the unlabeled pool must be an N×C×H×W image tensor")
        if pool.shape[0] == 0:
            raise ConfigError(
                "the unlabeled pool is empty: give unlabeled images (e.g. --unlabeled-fraction "
                "0.5 to hold out half of the training set as the pool)"
            )
        if not (math.isfinite(adversarial_lr_scale) and adversarial_lr_scale > 0):
            raise ConfigError(f"adversarial_lr_scale must be > 0, got {adversarial_lr_scale}")
        if labelled not in ("standard", "adversarial"):
            raise ConfigError(f"labelled must be 'standard' or 'adversarial', got {labelled!r}")
        if labeler_epochs is not None and int(labeler_epochs) < 1:
            raise ConfigError(f"labeler_epochs must be >= 1, got {labeler_epochs}")
        self.pool = pool
        self.labeler = labeler
        self.labeler_epochs = None if labeler_epochs is None else int(labeler_epochs)
        self.adversarial_lr_scale = float(adversarial_lr_scale)
        self.labelled = labelled
        self.robust_loss = robust_loss
        self.beta = _check_beta(beta)
        self.pseudo_labels: Tensor | None = None

    def params(self) -> dict[str, Any]:
        return super().params() | {
            "pool_size": int(self.pool.shape[0]),
            "labeler": "given" if self.labeler is not None else "standard",
            "labeler_epochs": self.labeler_epochs,
            "adversarial_lr_scale": self.adversarial_lr_scale,
            "labelled": self.labelled,
            "robust_loss": self.robust_loss,
        } | ({"beta": self.beta} if self.robust_loss == "trades" else {})

    def prepare(
        self, model: nn.Module, data: Dataset, *, config: TrainConfig | None = None, fit: FitFunction | None = None
    ) -> None:
        if tuple(self.pool.shape[1:]) != data.input_shape:
            raise ConfigError(
                f"the unlabeled pool has images of shape {'×'.join(map(str, self.pool.shape[1:]))} "
                f"but {data.name} has {'×'.join(map(str, data.input_shape))}"
            )
        lo, hi = self.threat.bounds if self.threat else (0.0, 1.0)
        if float(self.pool.min()) < lo or float(self.pool.max()) > hi:
            raise ConfigError(f"the unlabeled pool's pixel values must lie in [{lo}, {hi}]")
        device = model_device(model)
        self.pool = self.pool.to(device)
        if self.pseudo_labels is not None:
            self.pseudo_labels = self.pseudo_labels.to(device)
            return
        labeler = self.labeler
        if labeler is None:
            if fit is None:
                raise ConfigError(
                    "SemiSupervised needs a pseudo-labelling model: pass labeler= or pseudo_labels=, "
                    "or train through hardened.train.train / Trainer, which trains one"
                )
            base = config if isinstance(config, TrainConfig) else TrainConfig()
            labeler = copy.deepcopy(model)
            epochs = self.labeler_epochs or base.epochs
            fit(labeler, data, dataclasses.replace(
                base, epochs=epochs, seed=base.seed + 7919, eval_n=0, checkpoint_every=0,
            ))
        labeler = _check_compatible(labeler, model, data, "the pseudo-labelling model")
        self.pseudo_labels = predict_logits(labeler, self.pool).argmax(1)
        self._count("pseudo_labelled", len(self.pseudo_labels))

    def batch_loss(self, model: nn.Module, x: Tensor, y: Tensor, generator: Any) -> Tensor:
        raise NotImplementedError("SemiSupervised uses updates(); it makes two updates per step")

    def updates(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> Iterator[StepLoss]:
        if self.pseudo_labels is None:
            raise ConfigError("SemiSupervised.prepare() must run before training (the trainer does it)")
        self._begin(ctx)
        random = ctx.randomness(self.per_image)
        self._count("labelled_samples", len(x))
        labelled = self._robust(model, x, y, random) if self.labelled == "adversarial" else F.cross_entropy(model(x), y)
        yield StepLoss(labelled, 1.0, "labelled")
        size = len(self.pool)

        def pick(rows: Tensor, g: torch.Generator | None) -> Tensor:  # one pool image per labelled image
            return torch.randint(size, (len(rows),), generator=g, device=g.device if g is not None else rows.device)

        index = draw_per_image(pick, x, random).to(self.pool.device)
        pool_x, pool_y = self.pool[index], self.pseudo_labels[index]
        self._count("pool_samples", len(index))
        yield StepLoss(self._robust(model, pool_x, pool_y, random), self.adversarial_lr_scale, "pool")

    def _robust(self, model: nn.Module, x: Tensor, y: Tensor, random: torch.Generator | ImageStreams) -> Tensor:
        """The robust loss on a batch: CE on PGD examples, or the TRADES loss."""
        if self.robust_loss == "trades":
            return self._trades_loss(model, x, y, random, self.beta)
        return F.cross_entropy(model(self._adversarial(model, x, y, random)), y)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.pseudo_labels is not None:
            state["pseudo_labels"] = self.pseudo_labels.detach().cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        labels = state.get("pseudo_labels")
        if isinstance(labels, Tensor):
            if labels.shape[0] != self.pool.shape[0]:
                raise ConfigError(
                    f"the checkpoint has {labels.shape[0]} pseudo-labels but the pool has "
                    f"{self.pool.shape[0]} images; resume with the same unlabeled pool"
                )
            self.pseudo_labels = labels


def make_method(name: str, **options: Any) -> Method:
    """Build a method by name (one of ``METHODS.names()`` or an alias); ``None`` options are dropped
    (the method's default applies), except ``guard=None``, which switches the detector off.

    ``ensemble`` takes ``sources=[...]`` (modules); ``semi-supervised`` takes ``pool=`` (images).
    """
    key = METHODS.canonical(name)
    kwargs = {k: v for k, v in options.items() if v is not None or k == "guard"}
    if key in ("ensemble", "semi-supervised"):
        extra = "sources" if key == "ensemble" else "pool"
        if extra not in kwargs:
            what = "source models (--source-model)" if key == "ensemble" else "unlabeled images"
            raise ConfigError(f"the {key} method needs {extra}= ({what})")
        return METHODS.make(key, kwargs.pop(extra), **kwargs)
    return METHODS.make(key, **kwargs)
