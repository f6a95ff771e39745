"""A classifier that refuses to predict when its reliability score crosses a calibrated threshold.

``guarded_predict`` is the pure function; ``GuardedClassifier`` holds the model, the fitted score
and the threshold, predicts one input at a time (raising ``NotReliableClassification``) or a batch
(never raising for refusals), and saves/loads itself as a folder::

    guard_dir/
      guard.json            classifier reference and fingerprint, score config, threshold,
                            calibration record, input shape, sha256 of the weights
      score.safetensors     the score's fitted tensors (no pickle anywhere)

An input whose score is NaN or infinite is refused (batch) or an ``InputError`` (single): the
guard never accepts an input it could not score.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from hardened._util.atomic import write_json
from hardened._util.batching import predict_logits
from hardened._util.device import model_device
from hardened._util.digests import model_digest
from hardened._util.tensorfile import digest_matches, save_tensors
from hardened.errors import (
    ConfigError,
    InputError,
    ModelLoadError,
    NotFittedError,
    NotReliableClassification,
)
from hardened.guard.base import Score, check_score
from hardened.guard.calibrate import Calibration, calibrate_threshold
from hardened.guard.registry import score_from_state

__all__ = ["GuardedPrediction", "GuardedClassifier", "guarded_predict"]

FORMAT = "hardened-guard"
FORMAT_VERSION = 1
GUARD_JSON = "guard.json"
SCORE_FILE = "score.safetensors"


@dataclass(frozen=True)
class GuardedPrediction:
    """Guarded predictions for a batch.

    Attributes:
        predictions: int64 (N,): the bare classifier's answers (also for refused inputs).
        accepted: bool (N,): ``score <= threshold`` and the score is finite.
        scores: float32 (N,): reliability scores (higher = less reliable; NaN where unscorable).
        confidence: float32 (N,): the classifier's max softmax probability.
        scored: bool (N,): the score is finite (an unscorable input is always refused).
        threshold: the threshold used.
    """

    predictions: Tensor
    accepted: Tensor
    scores: Tensor
    confidence: Tensor
    scored: Tensor
    threshold: float

    @property
    def refusal_rate(self) -> float:
        return float((~self.accepted).float().mean()) if self.accepted.numel() else 0.0

    def to_dict(self, per_sample: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": int(self.predictions.numel()),
            "threshold": self.threshold,
            "refusal_rate": self.refusal_rate,
            "unscorable": int((~self.scored).sum()),
        }
        if per_sample:
            out["per_sample"] = {
                "prediction": self.predictions.tolist(),
                "accepted": self.accepted.tolist(),
                "score": [None if not math.isfinite(s) else s for s in self.scores.tolist()],
                "confidence": self.confidence.tolist(),
            }
        return out


def _check_threshold(threshold: float | None) -> float:
    if threshold is None:
        raise NotFittedError(
            "the guard has no threshold: calibrate it on held-out data first "
            "(GuardedClassifier.calibrate(x_heldout, fpr=0.05) or hardened.guard.calibrate_threshold)"
        )
    value = float(threshold)
    if math.isnan(value):
        raise ConfigError("the threshold is NaN; calibrate the guard on finite held-out scores")
    return value


def guarded_predict(
    model: nn.Module, score: Score, threshold: float | None, x: Tensor, *, batch_size: int = 256
) -> GuardedPrediction:
    """Predictions, accept mask and scores for images ``x`` (N×C×H×W in [0, 1]); never raises
    for refusals (bad input shapes or values still raise ``InputError``)."""
    limit = _check_threshold(threshold)
    x = score.check_input(x, allow_empty=True)
    device = model_device(model)
    logits = predict_logits(model, x.to(device), batch_size).float()
    probabilities = logits.softmax(dim=1)
    confidence, predictions = probabilities.max(dim=1)
    scores = score.score(x).float().to(predictions.device)
    scored = torch.isfinite(scores)
    accepted = scored & (scores <= limit)
    return GuardedPrediction(predictions, accepted, scores, confidence, scored, limit)


class GuardedClassifier:
    """``model`` + reliability ``score`` + ``threshold``: predict or refuse.

    Args:
        model: the classifier (logits N×K).
        score: a fitted score (``hardened.guard.make_score(...).fit(train)``), or an unfitted
            fit-free one (``make_score("energy", model)``), checked against the ``Score`` contract.
        threshold: a float, a ``Calibration``, or ``None`` to calibrate later with ``calibrate``.
        model_ref: where the classifier can be loaded from (path or factory string), saved with
            the guard so that ``load`` can rebuild it.
        classes: class names, for display.
    """

    def __init__(
        self,
        model: nn.Module,
        score: Score,
        threshold: float | Calibration | None = None,
        *,
        model_ref: str | None = None,
        classes: tuple[str, ...] | None = None,
        batch_size: int = 256,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be an nn.Module, got {type(model).__name__}")
        check_score(score)
        if not score.is_fitted:
            raise NotFittedError(f"the {score.name} score is not fitted: call score.fit(train_data) first")
        self.model = model
        self.score = score
        self.calibration: Calibration | None = None
        self.threshold: float | None = None
        if isinstance(threshold, Calibration):
            self.calibration = threshold
            self.threshold = threshold.threshold
        elif threshold is not None:
            self.threshold = _check_threshold(threshold)
        self.model_ref = model_ref
        self.classes = tuple(classes) if classes is not None else None
        self.batch_size = int(batch_size)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        shape = self.score.input_shape
        if shape is None:
            raise NotFittedError(
                f"the {self.score.name} score is bound to no input shape yet: calibrate the guard on "
                "held-out images (guard.calibrate(x_heldout)) or fit the score first"
            )
        return shape

    def calibrate(self, x_heldout: Tensor, *, fpr: float | None = 0.05, method: str = "fpr") -> Calibration:
        """Set the threshold from held-out in-distribution images (see ``calibrate_threshold``).

        A fit-free score not yet bound to an input shape is fitted on them (recording the shape).
        """
        images = self.score.check_input(x_heldout)
        if self.score.input_shape is None:
            self.score.fit(images)
        self.calibration = calibrate_threshold(self.score.score(images), fpr=fpr, method=method)
        self.threshold = self.calibration.threshold
        return self.calibration

    def predict_batch(self, x: Tensor) -> GuardedPrediction:
        """Guarded predictions for a batch; refusals are marked, never raised."""
        return guarded_predict(self.model, self.score, self.threshold, x, batch_size=self.batch_size)

    def predict(self, x: Tensor) -> int:
        """The class of one image (C×H×W or 1×C×H×W), or ``NotReliableClassification``.

        Raises ``InputError`` when the image cannot be scored (NaN score): it is never accepted.
        """
        if isinstance(x, Tensor) and x.dim() == 3:
            x = x.unsqueeze(0)
        if isinstance(x, Tensor) and x.dim() == 4 and x.shape[0] != 1:
            raise InputError(f"predict takes one image, got a batch of {x.shape[0]}; use predict_batch")
        result = self.predict_batch(x)
        prediction, value = int(result.predictions[0]), float(result.scores[0])
        if not bool(result.scored[0]):
            raise InputError(
                f"the {self.score.name} score of this input is {value} (not finite), so the guard "
                f"refuses it (the bare classifier would answer class {prediction}); check the input"
            )
        if not bool(result.accepted[0]):
            raise NotReliableClassification(prediction, value, result.threshold)
        return prediction

    def __call__(self, x: Tensor) -> GuardedPrediction:
        return self.predict_batch(x)

    # ---- persistence ------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """The JSON part of the saved guard (without the weights' hash)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "classifier": {
                "reference": self.model_ref,
                "fingerprint": model_digest(self.model),
            },
            "classes": list(self.classes) if self.classes else None,
            "input_shape": list(self.input_shape),
            "score": self.score.config(),
            "threshold": self.threshold,
            "calibration": self.calibration.to_dict() if self.calibration else None,
        }

    def save(self, folder: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        """Write ``guard.json`` and ``score.safetensors`` into ``folder`` atomically; return it.

        ``extra`` adds a JSON-ready ``"extra"`` record (e.g. which data calibrated the guard).
        """
        _check_threshold(self.threshold)
        record = self.record()
        tensors = self.score.state_tensors()
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        digest = save_tensors(tensors, target / SCORE_FILE, metadata={"format": FORMAT, "score": self.score.name})
        write_json(target / GUARD_JSON, record | {"score_weights_sha256": digest, "extra": extra or {}})
        return target

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], model: nn.Module | None = None, *, check_model: bool = True
    ) -> GuardedClassifier:
        """Load a saved guard; the classifier is loaded from the recorded reference unless given.

        With ``check_model`` the classifier's weights must match the fingerprint recorded at save
        time (the score was fitted on that exact classifier).
        """
        record = read_guard_record(folder)
        root = Path(folder)
        weights = root / SCORE_FILE
        if not weights.is_file():
            raise ModelLoadError(f"{weights} is missing: the guard folder is incomplete")
        try:
            tensors = load_file(str(weights))
        except (SafetensorError, OSError) as error:
            raise ModelLoadError(f"{weights} is corrupt or unreadable: {error}") from error
        expected = record.get("score_weights_sha256")
        if expected and not digest_matches(tensors, weights, expected):
            raise ModelLoadError(f"{weights} is corrupt: its tensors' sha256 does not match {GUARD_JSON}")
        classifier = record.get("classifier") or {}
        if model is None:
            model = _load_classifier(classifier.get("reference"), root)
        if check_model and classifier.get("fingerprint"):
            if model_digest(model) != classifier["fingerprint"]:
                raise ModelLoadError(
                    "the classifier's weights differ from those the guard was fitted with; pass the "
                    "original model, or load with check_model=False if you know what you are doing"
                )
        score = score_from_state(record["score"], tensors, model)
        calibration = Calibration.from_dict(record["calibration"]) if record.get("calibration") else None
        threshold: float | Calibration | None = calibration
        if calibration is None or record.get("threshold") != calibration.threshold:
            threshold = record.get("threshold")
        guard = cls(model, score, threshold, model_ref=classifier.get("reference"),
                    classes=tuple(record["classes"]) if record.get("classes") else None)
        if calibration is not None:
            guard.calibration = calibration
        return guard


def read_guard_record(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``guard.json`` of a saved guard, checked for format and completeness."""
    path = Path(folder) / GUARD_JSON
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist: {folder} is not a saved guard (hardened guard fit --out)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"cannot read {path}: {error}") from error
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ModelLoadError(f"{path} is not a hardened guard record")
    if int(record.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelLoadError(f"{path} was written by a newer hardened; upgrade to read it")
    if record.get("threshold") is None:
        raise ModelLoadError(f"{path} has no threshold: the guard was never calibrated")
    if not isinstance(record.get("score"), dict):
        raise ModelLoadError(f"{path} has no score record")
    return record


def _load_classifier(reference: str | None, root: Path) -> nn.Module:
    from hardened.models import load_model

    if not reference:
        raise ModelLoadError(
            "the guard records no classifier reference; pass the classifier: GuardedClassifier.load(folder, model)"
        )
    candidate = Path(reference)
    if not candidate.is_absolute() and not candidate.exists() and (root / candidate).exists():
        reference = str(root / candidate)
    return load_model(reference).model
