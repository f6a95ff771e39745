"""``explain_images(model, x, target=None, method="lrp") -> Attribution``: a relevance map per image.

LRP (Bach et al. 2015) starts from the explained logit ``f_t(x)`` and redistributes it layer by
layer onto the pixels with the composite's rules, so ``sum(relevance) ~= f_t(x)``
(conservation; exact for the epsilon rule at eps -> 0 without biases). The gradient methods
of ``hardened.explain.gradients`` are the baselines.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hardened._util.batching import batch_slices, eval_mode, predict_logits
from hardened._util.checks import (
    check_images,
    check_labels,
    check_logits,
    check_model_output,
    forward_error,
)
from hardened._util.seeding import make_generator
from hardened.errors import ConfigError, HardenedWarning
from hardened.explain import gradients
from hardened.explain.canonizers import fold_pairs
from hardened.explain.composites import Composite, make_composite
from hardened.models.io import ExportedModule

__all__ = [
    "Attribution",
    "Explainer",
    "METHODS",
    "canonical_method",
    "explain_images",
    "lrp",
    "conservation_error",
    "check_finite",
    "lrp_unsupported",
]

METHODS = (
    "lrp",
    "gradient",
    "saliency",
    "gradient-x-input",
    "integrated-gradients",
    "smoothgrad",
    "random",
)
_ALIASES = {
    "grad": "gradient",
    "gxi": "gradient-x-input",
    "gradient*input": "gradient-x-input",
    "ig": "integrated-gradients",
}


@dataclass(frozen=True)
class Attribution:
    """Relevance of each input element for the explained class.

    Attributes:
        relevance: N×C×H×W, same shape as the input; positive = evidence for ``target``.
        target: int64 (N,): the explained class per image.
        output: (N,): the explained logit ``f_target(x)`` (what LRP's relevance sums to).
        prediction: int64 (N,): the model's predicted class.
        method: ``"lrp"``, ``"gradient"``...; params: the method's settings.
    """

    relevance: Tensor
    target: Tensor
    output: Tensor
    prediction: Tensor
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def relevance_sum(self) -> Tensor:
        """Total relevance per image (N,)."""
        return self.relevance.flatten(1).sum(dim=1)

    def to_dict(self, include_relevance: bool = False) -> dict[str, Any]:
        """JSON-ready summary; ``include_relevance=True`` adds the maps as nested lists."""
        out: dict[str, Any] = {
            "method": self.method,
            "params": self.params,
            "n": int(self.target.numel()),
            "shape": list(self.relevance.shape[1:]),
            "target": self.target.tolist(),
            "prediction": self.prediction.tolist(),
            "output": self.output.tolist(),
            "relevance_sum": self.relevance_sum.tolist(),
            "relevance_abs_max": self.relevance.flatten(1).abs().amax(dim=1).tolist()
            if self.relevance.numel()
            else [],
        }
        if include_relevance:
            out["relevance"] = self.relevance.tolist()
        return out


def lrp(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None,
    composite: str | Composite = "epsilon-gamma-box",
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[Tensor, Tensor]:
    """``(logits, relevance)``: one forward and one modified backward pass, no input checks.

    The relevance starts as ``onehot(target) * logits`` at the output; ``target=None`` explains
    the predicted class (the argmax of this same forward pass, so no extra pass is needed).
    """
    rules = make_composite(composite)
    with rules.context(model, bounds), torch.enable_grad():
        x_var = x.detach().requires_grad_(True)
        logits = model(x_var)
        goal = logits.detach().argmax(dim=1) if target is None else target
        chosen = logits.gather(1, goal[:, None])
        (relevance,) = torch.autograd.grad(chosen, x_var, grad_outputs=chosen.detach())
    return logits.detach(), relevance.detach()


def lrp_unsupported(model: object, composite: str | Composite = "epsilon-gamma-box") -> str | None:
    """Why LRP cannot explain ``model`` (``None`` when it can): a TorchScript module takes no
    hooks, an outputs-only callable has no layers (nor gradients), and a layer without a rule
    in ``composite`` stops the relevance."""
    if not isinstance(model, nn.Module):
        return f"{type(model).__name__} is an outputs-only model (no layers, no gradients)"
    if isinstance(model, torch.jit.ScriptModule):
        return "a TorchScript module does not take the forward hooks LRP rules need"
    if isinstance(model, ExportedModule):
        return "a torch.export program calls operators, not the layers LRP rules are hooked on"
    try:
        make_composite(composite).assign(model, identities=_foldable(model))
    except ConfigError as error:
        return str(error)
    return None


def _foldable(model: nn.Module) -> set[nn.Module]:
    """BatchNorms that the default folding turns into identities (so they need no rule)."""
    return {bn for _, bn in fold_pairs(model)}


def check_finite(relevance: Tensor, method: str) -> None:
    """Raise ``ConfigError`` naming the images whose relevance has NaN or Inf values."""
    bad = ~torch.isfinite(relevance.flatten(1)).all(dim=1)
    if bool(bad.any()):
        index = bad.nonzero().flatten().tolist()
        raise ConfigError(
            f"{method} relevance is not finite (NaN or Inf) for {len(index)} of "
            f"{relevance.shape[0]} images (indices {index[:10]}): a rule divided by a zero "
            "denominator or the model produced non-finite values; use a stabiliser > 0 "
            "(e.g. composite epsilon with epsilon=1e-6) and check the model's weights, or pass "
            "allow_nonfinite=True to get the raw maps"
        )


def canonical_method(method: str) -> str:
    """The canonical name of an explanation method or alias; ``ConfigError`` when unknown."""
    key = str(method).lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise ConfigError(f"unknown explanation method {method!r}: use one of {', '.join(METHODS)}")
    return key


def _method_function(
    key: str,
    model: nn.Module,
    rules: Composite | None,
    bounds: tuple[float, float],
    steps: int,
    baseline: Tensor | float | None,
    samples: int,
    sigma: float,
    generator: torch.Generator,
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(x_batch, target_batch) -> (logits, relevance)`` for one method."""
    if rules is not None:
        return lambda xb, tb: lrp(model, xb, tb, rules, bounds=bounds)
    if key == "integrated-gradients":
        return lambda xb, tb: gradients.integrated_gradients(
            model, xb, tb, baseline=baseline, steps=steps
        )
    if key == "smoothgrad":
        return lambda xb, tb: gradients.smoothgrad(
            model, xb, tb, samples=samples, sigma=sigma, bounds=bounds, generator=generator
        )
    if key == "random":

        def random_map(xb: Tensor, tb: Tensor) -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                out = model(xb)
            noise = torch.rand(xb.shape, generator=generator, device=xb.device, dtype=xb.dtype)
            return out, noise

        return random_map
    function = {
        "gradient": gradients.gradient,
        "saliency": gradients.saliency,
        "gradient-x-input": gradients.gradient_x_input,
    }[key]
    return lambda xb, tb: function(model, xb, tb)


def explain_images(
    model: nn.Module,
    x: Tensor,
    target: Tensor | int | None = None,
    method: str = "lrp",
    *,
    composite: str | Composite = "epsilon-gamma-box",
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 256,
    steps: int = 32,
    baseline: Tensor | float | None = None,
    samples: int = 16,
    sigma: float = 0.15,
    seed: int | None = 0,
    allow_nonfinite: bool = False,
    fallback: str | None = None,
) -> Attribution:
    """Explain ``model``'s logit for ``target`` (default: the predicted class) on images ``x``.

    Args:
        x: N×C×H×W in ``bounds``.
        target: int64 (N,), one int for all images, or ``None`` for the prediction.
        method: one of ``METHODS`` (``lrp``, ``gradient``, ``saliency``, ``gradient-x-input``,
            ``integrated-gradients``, ``smoothgrad``, ``random``).
        composite: LRP rules per layer: a name from ``COMPOSITES`` or a ``Composite``.
        steps, baseline: integrated gradients; samples, sigma, seed: SmoothGrad and random.
        allow_nonfinite: return NaN/Inf relevance instead of raising ``ConfigError``.
        fallback: a gradient method to use, with a ``HardenedWarning`` that says why, where
            LRP cannot apply (``lrp_unsupported``: TorchScript, unknown layers); ``None``
            raises ``ConfigError`` there. The result's params record ``fallback_from``.

    The model's mode is restored and its parameters are left untouched.
    """
    key = canonical_method(method)
    x = check_images(x, bounds, allow_empty=True)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{type(model).__name__} is an outputs-only model: it has no gradients, so neither LRP "
            "nor gradient explanations apply; load an ONNX file with --backend torch (onnx2torch) "
            "to explain it"
        )
    reason = lrp_unsupported(model, composite) if key == "lrp" else None
    if reason is not None:
        if fallback is None:
            raise ConfigError(f"LRP cannot explain this model: {reason} (or explain it with a gradient "
                              "method: fallback='gradient-x-input')")
        key = canonical_method(fallback)
        if key in ("lrp", "random"):
            raise ConfigError(f"fallback must be a gradient method, got {fallback!r}")
        warnings.warn(HardenedWarning(f"LRP cannot explain this model ({reason}); using {key} instead"),
                      stacklevel=2)
    rules = make_composite(composite) if key == "lrp" else None
    generator = make_generator(seed, x.device)
    n = x.shape[0]
    with eval_mode(model):
        # Check once, compute once: each batch's own pass gives the logits (no full forward
        # over the images for the checks). Only given targets need the class count up front,
        # from one probe image, so that an out-of-range index never reaches the model's gather.
        given: Tensor | None = None
        if isinstance(target, int) and not isinstance(target, bool):
            given = torch.full((n,), int(target), dtype=torch.long)
        elif target is not None:
            given = target  # type: ignore[assignment]
        if given is not None:
            num_classes = int(check_model_output(model, x[:1]).shape[1]) if n else None
            given = check_labels(given, n, num_classes, name="targets").to(x.device)
        compute = _method_function(key, model, rules, bounds, steps, baseline, samples, sigma, generator)
        parts, outputs, goals, predictions = [], [], [], []
        for s in batch_slices(n, batch_size):
            xb = x[s]
            try:
                if given is None and rules is not None:
                    out, relevance = lrp(model, xb, None, rules, bounds=bounds)
                    goal = out.argmax(dim=1)
                else:
                    goal = given[s] if given is not None else predict_logits(model, xb, len(xb)).argmax(dim=1)
                    out, relevance = compute(xb, goal)
            except RuntimeError as error:
                check_model_output(model, xb[:1])  # a model that cannot run or returns no logits
                raise forward_error(model, xb, error) from error
            check_logits(out, len(xb))
            parts.append(relevance)
            goals.append(goal)
            predictions.append(out.argmax(dim=1))
            outputs.append(out.gather(1, goal[:, None]).squeeze(1))
    relevance = _joined(parts, torch.zeros_like(x))
    output = _joined(outputs, torch.zeros(0, device=x.device))
    empty = torch.zeros(0, dtype=torch.long, device=x.device)
    goal_all = _joined(goals, empty)
    if not allow_nonfinite:
        check_finite(relevance, key)
    params: dict[str, Any] = {}
    if rules is not None:
        params = {"composite": rules.name}
    elif key == "integrated-gradients":
        params = {"steps": steps, "baseline": "zeros" if baseline is None else "given"}
    elif key == "smoothgrad":
        params = {"samples": samples, "sigma": sigma, "seed": seed}
    elif key == "random":
        params = {"seed": seed}
    if reason is not None:
        params = {**params, "fallback_from": "lrp", "reason": reason}
    return Attribution(
        relevance=relevance,
        target=goal_all,
        output=output.detach(),
        prediction=_joined(predictions, empty),
        method=key,
        params=params,
    )


def _joined(parts: list[Tensor], empty: Tensor) -> Tensor:
    """The batches' tensors concatenated (no copy for a single batch), ``empty`` for none."""
    if not parts:
        return empty
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class Explainer:
    """``explain_images`` with its settings fixed at construction: ``Explainer("lrp")(model, x)``."""

    def __init__(self, method: str = "lrp", **options: Any) -> None:
        self.method = canonical_method(method)
        self.options = options
        if self.method == "lrp":
            make_composite(options.get("composite", "epsilon-gamma-box"))

    def __call__(self, model: nn.Module, x: Tensor, target: Tensor | int | None = None) -> Attribution:
        return explain_images(model, x, target, self.method, **self.options)


def conservation_error(attribution: Attribution) -> Tensor:
    """Per-image relative conservation error ``|sum(R) - f_t(x)| / max(|f_t(x)|, 1e-12)``.

    Near 0 for LRP with the epsilon rule at small eps on bias-free models; biases, the
    stabiliser and the gamma/alpha-beta rules make it grow (the relevance they absorb).
    """
    output = attribution.output.double()
    total = attribution.relevance.double().flatten(1).sum(dim=1)
    return (total - output).abs() / output.abs().clamp(min=1e-12)

