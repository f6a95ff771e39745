"""A classifier that refuses to predict when its reliability score crosses a calibrated threshold.

``guarded_predict`` is the pure function; ``GuardedClassifier`` holds the model, the fitted score
and the threshold, predicts one input at a time (raising ``NotReliableClassification``) or a batch
(never raising for refusals), and saves/loads itself as a folder::

    guard_dir/
      guard.json            classifier fingerprint (and, for display, where it came from), score
                            config, threshold, calibration record, input shape, sha256 of the weights
      score.safetensors     the score's fitted tensors (no pickle anywhere)
      classifier.safetensors  the classifier's weights
      classifier.json       its sidecar, when it is a zoo architecture (``hardened.models``)

Trust model: every file of a guard folder is data. Loading one never imports or runs anything it
names: a zoo classifier is rebuilt from ``classifier.json`` (checked against its schema), and a
classifier of the user's own code (a ``package.module:factory`` or a TorchScript file, recorded in
``classifier.reference``) is only loaded with ``trust_factory=True`` (CLI ``--trust-factory``),
after every other check of the folder, and its weights then must match the fingerprint.

An input whose score is NaN or infinite is refused (batch) or an ``InputError`` (single): the
guard never accepts an input it could not score.
"""

from __future__ import annotations

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
from hardened._util.digests import model_digest, tensor_digest
from hardened._util.records import RecordReader, read_json_object
from hardened._util.tensorfile import digest_matches, save_tensors
from hardened.errors import (
    ConfigError,
    InputError,
    ModelLoadError,
    NotFittedError,
    NotReliableClassification,
)
from hardened.guard.base import ClassifierScore, Score, check_score
from hardened.guard.calibrate import Calibration, calibrate_threshold
from hardened.guard.registry import score_from_state
from hardened.models.io import ModelInfo, load_model, save_model
from hardened.models.zoo import ARCHITECTURES

__all__ = ["GuardedPrediction", "GuardedClassifier", "guarded_predict"]

FORMAT = "hardened-guard"
FORMAT_VERSION = 2
GUARD_JSON = "guard.json"
SCORE_FILE = "score.safetensors"
CLASSIFIER_FILE = "classifier.safetensors"


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
        probabilities: float32 (N, K): the classifier's softmax probabilities.
    """

    predictions: Tensor
    accepted: Tensor
    scores: Tensor
    confidence: Tensor
    scored: Tensor
    threshold: float
    probabilities: Tensor | None = None

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
    if isinstance(score, ClassifierScore) and score.model is model:
        scores, logits = score.score_and_logits(x)  # checks x; one classifier pass for both
    else:
        x = score.check_input(x, allow_empty=True)
        logits = predict_logits(model, x.to(model_device(model)), batch_size).float()
        scores = score.score(x).float()
    probabilities = logits.softmax(dim=1)
    confidence, predictions = probabilities.max(dim=1)
    scores = scores.to(predictions.device)
    scored = torch.isfinite(scores)
    accepted = scored & (scores <= limit)
    return GuardedPrediction(predictions, accepted, scores, confidence, scored, limit, probabilities)


class GuardedClassifier:
    """``model`` + reliability ``score`` + ``threshold``: predict or refuse.

    Args:
        model: the classifier (logits N×K).
        score: a fitted score (``hardened.guard.make_score(...).fit(train)``), or an unfitted
            fit-free one (``make_score("energy", model)``), checked against the ``Score`` contract.
        threshold: a float, a ``Calibration``, or ``None`` to calibrate later with ``calibrate``.
        model_ref: where the classifier came from (a path or factory string), recorded with the
            guard; a factory or TorchScript reference is only loaded with ``trust_factory=True``.
        model_info: the classifier's ``ModelInfo`` (from ``load_model``); with a zoo architecture
            the guard saves the classifier as weights plus sidecar and loads it with no code.
        classes: class names, for display.
    """

    def __init__(
        self,
        model: nn.Module,
        score: Score,
        threshold: float | Calibration | None = None,
        *,
        model_ref: str | None = None,
        model_info: ModelInfo | None = None,
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
        self.model_info = model_info
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
                "file": CLASSIFIER_FILE,
                "arch": self._zoo_arch(),
            },
            "classes": list(self.classes) if self.classes else None,
            "input_shape": list(self.input_shape),
            "score": self.score.config(),
            "threshold": self.threshold,
            "calibration": self.calibration.to_dict() if self.calibration else None,
        }

    def _zoo_arch(self) -> str | None:
        info = self.model_info
        return info.arch if info is not None and info.arch in ARCHITECTURES else None

    def _save_classifier(self, target: Path) -> None:
        """The classifier as weights (plus sidecar for a zoo architecture): data, never code."""
        info = self.model_info
        arch = self._zoo_arch()
        if info is not None and arch is not None:
            save_model(self.model, target / CLASSIFIER_FILE, arch=arch, arch_kwargs=info.arch_kwargs,
                       input_shape=info.input_shape, classes=info.classes)
            return
        # cloned one by one: safetensors refuses tensors that share memory (tied weights)
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        save_tensors(state, target / CLASSIFIER_FILE, metadata={"format": FORMAT})

    def save(self, folder: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        """Write the classifier, ``score.safetensors`` and, last, ``guard.json`` into ``folder``
        atomically; return it.

        ``extra`` adds a JSON-ready ``"extra"`` record (e.g. which data calibrated the guard).
        """
        _check_threshold(self.threshold)
        record = self.record()
        tensors = self.score.state_tensors()
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        self._save_classifier(target)
        digest = save_tensors(tensors, target / SCORE_FILE, metadata={"format": FORMAT, "score": self.score.name})
        write_json(target / GUARD_JSON, record | {"score_weights_sha256": digest, "extra": extra or {}})
        return target

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        model: nn.Module | None = None,
        *,
        check_model: bool = True,
        trust_factory: bool = False,
    ) -> GuardedClassifier:
        """Load a saved guard; the classifier is rebuilt from the folder unless ``model`` is given.

        Nothing named in the folder is imported or run: a zoo classifier is rebuilt from its
        weights and sidecar. A classifier of the user's own code (factory or TorchScript
        reference) is loaded only with ``trust_factory=True``, after every other check (the
        stored weights against the fingerprint included), then given the stored weights. With
        ``check_model`` the classifier's weights must match the fingerprint recorded at save
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
        classifier = record["classifier"]
        if model is None:
            model = _load_classifier(classifier, root, trust_factory)
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
    """The parsed ``guard.json`` of a saved guard, every field checked (``ModelLoadError``)."""
    path = Path(folder) / GUARD_JSON
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist: {folder} is not a saved guard (hardened guard fit --out)")
    record = read_json_object(path, ModelLoadError)
    if record.get("format") != FORMAT:
        raise ModelLoadError(f"{path} is not a hardened guard record")
    read = RecordReader(record, str(path), ModelLoadError)
    if (read.integer("format_version", 0, 2**31, optional=True) or 0) > FORMAT_VERSION:
        raise ModelLoadError(f"{path} was written by a newer hardened; upgrade to read it")
    if record.get("threshold") is None:
        raise ModelLoadError(f"{path} has no threshold: the guard was never calibrated")
    threshold = read.number("threshold", finite=False)
    if threshold is None or math.isnan(threshold):
        raise read.fail("threshold", "a number (not NaN)", record.get("threshold"))
    if not isinstance(record.get("score"), dict):
        raise ModelLoadError(f"{path} has no score record")
    shape = read.shape("input_shape")
    read.str_list("classes")
    read.text("score_weights_sha256", optional=True, max_length=64)
    read.mapping("extra")
    calibration = read.mapping("calibration")
    if calibration:
        Calibration.from_dict(calibration)
    score = RecordReader(record["score"], f"{path} (score)", ModelLoadError)
    score.text("name", max_length=64)
    if score.shape("input_shape") != shape:
        raise score.fail("input_shape", f"the guard's input shape {list(shape or ())}", record["score"].get("input_shape"))
    options = score.mapping("options")
    if not all(isinstance(v, str | int | float | bool) or v is None for v in options.values()):
        raise score.fail("options", "an object of numbers, strings and booleans", options)
    score.mapping("fit_record")
    classifier = RecordReader(read.mapping("classifier"), f"{path} (classifier)", ModelLoadError)
    classifier.text("reference", optional=True)
    classifier.text("fingerprint", optional=True, max_length=64)
    classifier.text("arch", optional=True, max_length=64)
    if classifier.get("file") not in (None, CLASSIFIER_FILE):
        raise classifier.fail("file", f"{CLASSIFIER_FILE!r} (a file inside the guard folder)", classifier.get("file"))
    return record | {"classifier": classifier.record}


def _is_weights_reference(reference: str) -> bool:
    """A reference to weights plus sidecar (data); factories and TorchScript files are code."""
    return Path(reference).suffix == ".safetensors"


def _load_classifier(classifier: dict[str, Any], root: Path, trust_factory: bool) -> nn.Module:
    """The classifier of a guard folder, rebuilt without running code unless ``trust_factory``."""
    stored = root / CLASSIFIER_FILE
    if classifier.get("arch") and classifier.get("file"):
        if not stored.is_file():
            raise ModelLoadError(f"{stored} is missing: the guard folder is incomplete")
        return load_model(stored).model
    reference = classifier.get("reference")
    if not reference:
        raise ModelLoadError(
            "the guard records no classifier reference; pass the classifier: GuardedClassifier.load(folder, model)"
        )
    if not trust_factory and not _is_weights_reference(reference):
        raise ModelLoadError(
            f"the guard names its classifier {reference!r}, which is code (a factory or a TorchScript "
            "file) and is never run from a guard folder; pass the classifier yourself "
            "(GuardedClassifier.load(folder, model)) or, if you trust whoever wrote this folder, "
            "load it with trust_factory=True (CLI: --trust-factory)"
        )
    candidate = Path(reference)
    if not candidate.is_absolute() and not candidate.exists() and (root / candidate).exists():
        reference = str(root / candidate)
    if _is_weights_reference(reference) or not (classifier.get("file") and stored.is_file()):
        return load_model(reference).model
    try:
        state = load_file(str(stored))
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(f"cannot read {stored}: {error}") from error
    # the stored weights are checked against the fingerprint before the factory runs
    fingerprint = classifier.get("fingerprint")
    if fingerprint and tensor_digest(state) != fingerprint:
        raise ModelLoadError(f"{stored} does not match the fingerprint in {GUARD_JSON}: the guard folder is corrupt")
    model = load_model(reference).model
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ModelLoadError(f"{stored} does not fit the classifier {reference!r}: {error}") from error
    return model

