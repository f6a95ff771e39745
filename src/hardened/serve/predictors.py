"""What the service runs on a batch: images N×C×H×W in [0, 1] in, one JSON-ready answer per image out.

``GuardPredictor`` (a ``GuardedClassifier``: accept or refuse by the reliability score),
``ModelPredictor`` (a bare classifier: always accepted) and ``SmoothedPredictor`` (Cohen et
al. 2019 CERTIFY per image: the smoothed class and its certified L2 radius, or an abstention,
which is a refusal). All run on the caller's thread (the batcher's worker), under ``no_grad``.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from hardened._util.batching import predict_logits
from hardened._util.device import model_device
from hardened.certify.smoothing import SmoothedClassifier, check_certify_settings
from hardened.guard import GuardedClassifier
from hardened.guard.base import ClassifierScore
from hardened.serve.tracing import TracedBatch, trace_batch

__all__ = ["Predictor", "GuardPredictor", "ModelPredictor", "SmoothedPredictor"]

Answer = dict[str, Any]


class Predictor(Protocol):
    """``kind``, the ``input_shape`` C×H×W it takes, ``predict(x) -> one answer per image``, and
    ``prepare(max_batch)``, called once before serving (it may trace the batch function and says
    what it did)."""

    kind: str
    input_shape: tuple[int, int, int]

    def predict(self, x: Tensor) -> list[Answer]: ...

    def prepare(self, max_batch: int, *, trace: bool = True) -> str: ...


_EAGER = TracedBatch(None, 0, "served eager")


def _answer(index: int, label: int | None, classes: tuple[str, ...] | None, probabilities: list[float],
            *, accepted: bool, reason: str | None = None, **fields: Any) -> Answer:
    name = classes[label] if classes and label is not None and label < len(classes) else None
    return {"index": index, "status": "accepted" if accepted else "refused", "accepted": accepted,
            "label": label, "class_name": name, "probabilities": probabilities,
            "score": fields.pop("score", None), "threshold": fields.pop("threshold", None),
            "reason": reason, **fields}


class GuardPredictor:
    """A guarded classifier: label, probabilities, score and threshold; refused above the threshold."""

    kind = "guard"

    def __init__(self, guard: GuardedClassifier) -> None:
        self.guard = guard
        self.input_shape = guard.input_shape
        self.traced = _EAGER
        self._traced_threshold: float | None = None

    def _outputs(self, x: Tensor) -> tuple[Tensor, ...]:
        """Labels, accepted, scores, scored and probabilities (N×K) of a batch, as tensors."""
        r = self.guard.predict_batch(x)
        assert r.probabilities is not None
        return r.predictions, r.accepted, r.scores, r.scored, r.probabilities

    def prepare(self, max_batch: int, *, trace: bool = True) -> str:
        """Trace the whole guarded pass, scores to accept flags at the current threshold (a
        classifier score read from the guard's own model); a later threshold runs eager."""
        score = self.guard.score
        if not trace:
            return _EAGER.reason
        if not (isinstance(score, ClassifierScore) and score.model is self.guard.model):
            return f"the {score.name} score is served eager (only scores read from the classifier are traced)"
        self._traced_threshold = self.guard.threshold
        self.traced = trace_batch(self._outputs, [score.model], self.input_shape,
                                  min(max_batch, score.batch_size), device=model_device(score.model))
        return self.traced.reason

    def predict(self, x: Tensor) -> list[Answer]:
        guard = self.guard
        if self.traced.covers(x.shape[0]) and guard.threshold == self._traced_threshold:
            x = guard.score.check_input(x).to(model_device(guard.model))  # the eager path's checks
            outputs = self.traced(x)
            assert outputs is not None
        else:
            outputs = self._outputs(x)
        # whole tensors to lists at once: per-image indexing would be one tensor operation per image
        labels, accepted, scores, scored, probabilities = (t.tolist() for t in outputs)
        threshold = float(guard.threshold) if guard.threshold is not None else math.nan
        answers = []
        for i, (label, score, ok, keep) in enumerate(zip(labels, scores, scored, accepted, strict=True)):
            reason = None
            if not ok:
                reason = f"the {guard.score.name} score of this image is not finite: it cannot be scored"
            elif not keep:
                reason = (f"unreliable input: {guard.score.name} score {score:.4g} exceeds the "
                          f"threshold {threshold:.4g} (out of distribution or adversarial)")
            answers.append(_answer(i, label, guard.classes, probabilities[i], accepted=keep, reason=reason,
                                   score=score if math.isfinite(score) else None, threshold=threshold))
        return answers


class ModelPredictor:
    """A bare classifier: label and probabilities, never refused (no reliability score)."""

    kind = "model"

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int],
                 classes: tuple[str, ...] | None = None, batch_size: int = 256) -> None:
        self.model, self.classes, self.batch_size = model, classes, batch_size
        self.input_shape = input_shape
        self.traced = _EAGER

    def _outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Labels and probabilities (N×K) of a batch."""
        probabilities = predict_logits(self.model, x, self.batch_size).float().softmax(dim=1)
        return probabilities.argmax(dim=1), probabilities

    def prepare(self, max_batch: int, *, trace: bool = True) -> str:
        """Trace the classifier's forward and softmax for batches up to ``max_batch``."""
        if trace:
            self.traced = trace_batch(self._outputs, [self.model], self.input_shape, min(max_batch, self.batch_size),
                                      device=model_device(self.model))
        return self.traced.reason

    def predict(self, x: Tensor) -> list[Answer]:
        x = x.to(model_device(self.model))
        outputs = self.traced(x) or self._outputs(x)
        labels, probabilities = (t.tolist() for t in outputs)
        return [_answer(i, label, self.classes, probabilities[i], accepted=True) for i, label in enumerate(labels)]


class SmoothedPredictor:
    """Randomized smoothing: CERTIFY per image (n0 selection, n estimation samples, level alpha).

    An abstention is a refusal with ``abstained: true`` and radius 0; ``probabilities`` are the
    class frequencies of the ``n`` noisy samples.
    """

    kind = "smoothed"

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int], sigma: float, *,
                 n0: int = 100, n: int = 1000, alpha: float = 0.001, seed: int = 0,
                 classes: tuple[str, ...] | None = None, batch_size: int | None = None) -> None:
        # refuse bad settings now, not at the first request after the service started
        _, self.n0, self.n, self.alpha, _ = check_certify_settings(sigma, n0, n, alpha)
        self.smoothed = SmoothedClassifier(model, sigma, seed=seed, batch_size=batch_size)
        self.input_shape, self.classes = input_shape, classes

    def prepare(self, max_batch: int, *, trace: bool = True) -> str:
        """Nothing to trace: CERTIFY draws its noise per image (served eager)."""
        return "served eager (randomized smoothing samples noise per image)"

    def predict(self, x: Tensor) -> list[Answer]:
        answers = []
        device = model_device(self.smoothed.model)
        with torch.no_grad():
            for i in range(x.shape[0]):
                cert = self.smoothed.certify(x[i].to(device), n0=self.n0, n=self.n, alpha=self.alpha)
                frequencies = [c / cert.n for c in cert.counts]
                reason = None if not cert.abstained else (
                    f"the smoothed classifier abstained: no class has probability above 1/2 under "
                    f"Gaussian noise sigma={cert.sigma:g} at confidence {1 - cert.alpha:g}")
                answers.append(_answer(i, cert.prediction, self.classes, frequencies, accepted=not cert.abstained,
                                       reason=reason, radius=cert.radius, abstained=cert.abstained))
        return answers
