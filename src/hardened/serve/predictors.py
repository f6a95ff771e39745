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
from hardened.errors import ConfigError
from hardened.guard import GuardedClassifier

__all__ = ["Predictor", "GuardPredictor", "ModelPredictor", "SmoothedPredictor"]

Answer = dict[str, Any]


class Predictor(Protocol):
    """``kind``, the ``input_shape`` C×H×W it takes, and ``predict(x) -> one answer per image``."""

    kind: str
    input_shape: tuple[int, int, int]

    def predict(self, x: Tensor) -> list[Answer]: ...


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

    def predict(self, x: Tensor) -> list[Answer]:
        result = self.guard.predict_batch(x)
        probabilities = result.probabilities
        if probabilities is None:  # guarded_predict always fills it; a subclass might not
            raise ConfigError("the guard's predict_batch returned no probabilities")
        answers = []
        for i, (label, score, scored, accepted) in enumerate(zip(
                result.predictions.tolist(), result.scores.tolist(), result.scored.tolist(),
                result.accepted.tolist(), strict=True)):
            reason = None
            if not scored:
                reason = f"the {self.guard.score.name} score of this image is not finite: it cannot be scored"
            elif not accepted:
                reason = (f"unreliable input: {self.guard.score.name} score {score:.4g} exceeds the "
                          f"threshold {result.threshold:.4g} (out of distribution or adversarial)")
            answers.append(_answer(i, label, self.guard.classes, probabilities[i].tolist(), accepted=accepted,
                                   reason=reason, score=score if math.isfinite(score) else None,
                                   threshold=result.threshold))
        return answers


class ModelPredictor:
    """A bare classifier: label and probabilities, never refused (no reliability score)."""

    kind = "model"

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int],
                 classes: tuple[str, ...] | None = None, batch_size: int = 256) -> None:
        self.model, self.classes, self.batch_size = model, classes, batch_size
        self.input_shape = input_shape

    def predict(self, x: Tensor) -> list[Answer]:
        logits = predict_logits(self.model, x.to(model_device(self.model)), self.batch_size).float()
        probabilities = logits.softmax(dim=1).cpu()
        labels = probabilities.argmax(dim=1).tolist()
        return [_answer(i, label, self.classes, probabilities[i].tolist(), accepted=True)
                for i, label in enumerate(labels)]


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
