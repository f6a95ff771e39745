"""What the audit can do with a model: gradients, LRP, outputs only. Stages read it to choose
their measurement or its substitute, and say which (``substitute_note``).

- ``module``: an ``nn.Module`` with known layers: every stage as it is;
- ``torchscript`` / ``exported`` / a module with layers LRP has no rule for: gradients, but no
  LRP (gradient explanations and the saliency-guided attacks instead), and for TorchScript no
  forward hooks (no feature taps: no Mahalanobis score, no IBP layer walk);
- ``outputs-only`` (an onnxruntime model, an HTTP endpoint, any callable): scores only, no
  gradients: score-based and transfer attacks, smoothing on the callable, output-based guards.

``audited_model`` turns an outputs-only model into an ``OutputsOnly`` module (counted queries;
an HTTP endpoint's inputs clamped into [0, 1], since it takes images, not smoothing's noise);
``model_fingerprint`` is its cache digest (its source and its answers on a few probe images,
since an outputs-only model has no weights to hash).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hardened._util.digests import model_digest, sha256_hex
from hardened.models.blackbox import BlackBox, HttpTarget, OutputsOnly, as_target

__all__ = ["FINGERPRINT_IMAGES", "SQUARE_QUERIES", "ModelAccess", "audited_model", "model_access", "model_fingerprint",
           "substitute_note"]

FINGERPRINT_IMAGES = 8  # probe images whose answers identify an outputs-only model in the cache key
SQUARE_QUERIES = 300  # per image: Square in place of a gradient attack on an outputs-only model
NO_GRADIENTS = "outputs-only model ({source}): it gives scores, not gradients"


@dataclass(frozen=True)
class ModelAccess:
    """``kind``: module, torchscript, exported or outputs-only; ``gradients``: input gradients
    exist; ``lrp``: why LRP cannot apply (``None``: it can); ``source``: the model in words."""

    kind: str
    gradients: bool
    lrp: str | None
    source: str
    clipped: bool = False  # inputs are clamped into [0, 1] before they are sent (an HTTP endpoint)

    @property
    def outputs_only(self) -> bool:
        return not self.gradients

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL_ACCESS = ModelAccess("module", True, None, "model")


def audited_model(model: nn.Module | BlackBox | Callable[[Tensor], Any], *, num_classes: int | None = None,
                  source: str = "") -> nn.Module:
    """``model`` itself when it is an ``nn.Module``; otherwise (an ``OnnxRuntimeModel``, any
    ``BlackBox``, a function ``x -> scores``) an ``OutputsOnly`` module around it."""
    if isinstance(model, nn.Module):
        return model
    options = {} if num_classes is None else {"num_classes": num_classes}
    target = model if isinstance(model, BlackBox) else as_target(model, **options)
    bounds = (0.0, 1.0) if isinstance(target, HttpTarget) else None  # an endpoint takes images, not noise
    return OutputsOnly(target, source=source or repr(model), bounds=bounds)


def model_access(model: nn.Module) -> ModelAccess:
    """What ``model`` (as returned by ``audited_model``) allows."""
    from hardened.explain.attribute import lrp_unsupported
    from hardened.models.io import ExportedModule

    if isinstance(model, OutputsOnly):
        reason = NO_GRADIENTS.format(source=model.source)
        return ModelAccess("outputs-only", False, reason, model.source, model.bounds is not None)
    kind = ("torchscript" if isinstance(model, torch.jit.ScriptModule)
            else "exported" if isinstance(model, ExportedModule) else "module")
    return ModelAccess(kind, True, lrp_unsupported(model), type(model).__name__)


def model_fingerprint(model: nn.Module, probe: Tensor) -> str:
    """The cache digest: the weights' ``model_digest``, or for an outputs-only model its source
    and its answers (rounded to 1e-4) on ``probe`` (the first ``FINGERPRINT_IMAGES`` test images)."""
    if not isinstance(model, OutputsOnly):
        return model_digest(model)
    with torch.no_grad():
        answers = model(probe[:FINGERPRINT_IMAGES]).double().cpu()
    rounded = torch.round(answers.log_softmax(1) * 1e4).to(torch.int64).numpy().tobytes()
    return sha256_hex(model.source.encode() + b"\0" + rounded)[:16]


def substitute_note(what: str, reason: str, instead: str) -> str:
    """The one sentence a stage writes where it substitutes: "<what> not applicable: <reason>;
    <instead>"."""
    return f"{what} not applicable: {reason}; {instead}."
