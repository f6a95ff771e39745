"""How well a calibrated guard separates in-distribution from out-of-distribution inputs.

For each OOD set (positives = OOD = should be refused):

- ``fnr``: share of OOD inputs *accepted* at the calibrated threshold (false negatives);
- ``auroc``: area under the ROC curve of the score (OOD vs the ID test inputs);
- ``fpr_at_95_tpr``: share of OOD inputs accepted when the threshold accepts 95% of the ID test
  inputs (the convention of Hendrycks & Gimpel 2017 and Liang et al. 2018, where ID is the
  positive class; lower is better);
- ``overconfident``: share of OOD inputs the *bare* classifier labels with max softmax
  probability above each level (0.99, 0.95, 0.75): how wrong it is without the guard.

Scores that are NaN (the guard could not score an input) count as refused: ranked above every
finite score for the AUROC, never accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hardened._util.device import model_device
from hardened.errors import InputError
from hardened.guard.calibrate import ScoreSummary, summarize_scores
from hardened.guard.guarded import GuardedClassifier

__all__ = ["OODResult", "GuardEvaluation", "ood_metrics", "evaluate_guard", "CONFIDENCE_LEVELS"]

CONFIDENCE_LEVELS = (0.99, 0.95, 0.75)


def _finite_for_ranking(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    finite = np.concatenate([id_scores[np.isfinite(id_scores)], ood_scores[np.isfinite(ood_scores)]])
    top = (finite.max() + 1.0) if finite.size else 1.0
    return id_scores, np.where(np.isfinite(ood_scores), ood_scores, top)


def ood_metrics(id_scores: Tensor | np.ndarray, ood_scores: Tensor | np.ndarray, threshold: float) -> dict[str, float]:
    """``fnr``, ``detection_rate``, ``auroc`` and ``fpr_at_95_tpr`` for one OOD set (see module)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    ids = np.asarray(id_scores.cpu() if isinstance(id_scores, Tensor) else id_scores, dtype=np.float64).ravel()
    oods = np.asarray(ood_scores.cpu() if isinstance(ood_scores, Tensor) else ood_scores, dtype=np.float64).ravel()
    if ids.size == 0 or oods.size == 0:
        raise InputError("ood_metrics needs at least one in-distribution and one OOD score")
    if not np.isfinite(ids).all():
        raise InputError("some in-distribution scores are NaN or infinite; the score failed on ID inputs")
    accepted = np.isfinite(oods) & (oods <= threshold)
    ids, oods = _finite_for_ranking(ids, oods)
    labels = np.concatenate([np.zeros(ids.size), np.ones(oods.size)])
    values = np.concatenate([ids, oods])
    auroc = float(roc_auc_score(labels, values))
    # ID as the positive class, larger "ID-ness" = lower score
    fpr, tpr, _ = roc_curve(1 - labels, -values, drop_intermediate=False)
    at95 = float(fpr[np.searchsorted(tpr, 0.95, side="left")])
    fnr = float(accepted.mean())
    return {"fnr": fnr, "detection_rate": 1.0 - fnr, "auroc": auroc, "fpr_at_95_tpr": at95}


@dataclass(frozen=True)
class OODResult:
    """One OOD set's figures (see the module docstring); ``scores`` are kept for plots."""

    name: str
    n: int
    fnr: float
    detection_rate: float
    auroc: float
    fpr_at_95_tpr: float
    overconfident: dict[str, float]
    summary: ScoreSummary | None
    scores: Tensor = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": self.n,
            "fnr": self.fnr,
            "detection_rate": self.detection_rate,
            "auroc": self.auroc,
            "fpr_at_95_tpr": self.fpr_at_95_tpr,
            "overconfident": self.overconfident,
            "summary": self.summary.to_dict() if self.summary else None,
        }


@dataclass(frozen=True)
class GuardEvaluation:
    """A guard's figures on ID test data and each OOD set.

    Attributes:
        score: the score's name; threshold: the calibrated threshold.
        id_name, id_n: the in-distribution test set; id_fpr: share of it refused (false positives).
        id_summary: its score distribution; id_scores: the scores (for plots).
        ood: one ``OODResult`` per OOD set.
    """

    score: str
    threshold: float
    id_name: str
    id_n: int
    id_fpr: float
    id_summary: ScoreSummary
    id_scores: Tensor = field(repr=False)
    ood: tuple[OODResult, ...] = ()
    calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "threshold": self.threshold,
            "in_distribution": {"name": self.id_name, "n": self.id_n, "fpr": self.id_fpr,
                                "summary": self.id_summary.to_dict()},
            "ood": [r.to_dict() for r in self.ood],
            "calibration": self.calibration,
        }


def _overconfidence(guard: GuardedClassifier, x: Tensor, levels: Sequence[float]) -> dict[str, float]:
    from hardened._util.batching import predict_logits

    logits = predict_logits(guard.model, x.to(model_device(guard.model)), guard.batch_size).float()
    confidence = logits.softmax(dim=1).amax(dim=1).cpu()
    return {f"{level:g}": float((confidence > level).float().mean()) for level in levels}


def evaluate_guard(
    guard: GuardedClassifier,
    id_x: Tensor,
    ood: Mapping[str, Tensor],
    *,
    id_name: str = "in-distribution",
    confidence_levels: Sequence[float] = CONFIDENCE_LEVELS,
) -> GuardEvaluation:
    """Evaluate ``guard`` on held-out ID images ``id_x`` (not used for calibration) and OOD sets."""
    if guard.threshold is None:
        guard.predict_batch(id_x[:1])  # raises the missing-threshold error
    threshold = float(guard.threshold)  # type: ignore[arg-type]
    id_scores = guard.score.score(guard.score.check_input(id_x)).cpu()
    if not bool(torch.isfinite(id_scores).all()):
        raise InputError("the score is NaN on some in-distribution test inputs; the guard cannot be evaluated")
    results = []
    for name, x in ood.items():
        scores = guard.score.score(guard.score.check_input(x)).cpu()
        metrics = ood_metrics(id_scores, scores, threshold)
        finite = scores[torch.isfinite(scores)]
        results.append(OODResult(
            name=name,
            n=int(x.shape[0]),
            fnr=metrics["fnr"],
            detection_rate=metrics["detection_rate"],
            auroc=metrics["auroc"],
            fpr_at_95_tpr=metrics["fpr_at_95_tpr"],
            overconfident=_overconfidence(guard, x, confidence_levels),
            summary=summarize_scores(finite) if finite.numel() else None,
            scores=scores,
        ))
    return GuardEvaluation(
        score=guard.score.name,
        threshold=threshold,
        id_name=id_name,
        id_n=int(id_x.shape[0]),
        id_fpr=float((id_scores > threshold).float().mean()),
        id_summary=summarize_scores(id_scores),
        id_scores=id_scores,
        ood=tuple(results),
        calibration=guard.calibration.to_dict() if guard.calibration else None,
    )
