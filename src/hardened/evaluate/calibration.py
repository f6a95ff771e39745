"""Confidence calibration: reliability diagram bins and expected calibration error (ECE).

ECE = sum_b (n_b / N) * |accuracy_b - confidence_b| over equal-width confidence bins
(Guo et al. 2017, "On Calibration of Modern Neural Networks").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hardened._util.batching import predict_logits
from hardened.errors import ConfigError

__all__ = ["CalibrationResult", "calibration", "calibration_from_probabilities"]


@dataclass(frozen=True)
class CalibrationResult:
    """Accuracy, ECE and the per-bin statistics of a reliability diagram."""

    accuracy: float
    ece: float
    bin_edges: list[float]
    bin_confidence: list[float | None]
    bin_accuracy: list[float | None]
    bin_count: list[int]
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_from_probabilities(probabilities: Tensor, labels: Tensor, bins: int = 15) -> CalibrationResult:
    """Calibration statistics of softmax outputs N×K against labels (N,)."""
    if bins < 1:
        raise ConfigError(f"bins must be >= 1, got {bins}")
    confidence, prediction = probabilities.float().max(dim=1)
    correct = (prediction == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    index = torch.clamp(torch.bucketize(confidence, edges[1:-1], right=True), 0, bins - 1)
    n = len(labels)
    ece = 0.0
    bin_conf: list[float | None] = []
    bin_acc: list[float | None] = []
    counts: list[int] = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        counts.append(count)
        if count == 0:
            bin_conf.append(None)
            bin_acc.append(None)
            continue
        conf_b, acc_b = float(confidence[members].mean()), float(correct[members].mean())
        bin_conf.append(conf_b)
        bin_acc.append(acc_b)
        ece += count / n * abs(acc_b - conf_b)
    return CalibrationResult(
        accuracy=float(correct.mean()) if n else float("nan"),
        ece=ece,
        bin_edges=edges.tolist(),
        bin_confidence=bin_conf,
        bin_accuracy=bin_acc,
        bin_count=counts,
        n=n,
    )


def calibration(model: nn.Module, x: Tensor, y: Tensor, bins: int = 15, batch_size: int = 512) -> CalibrationResult:
    """Calibration statistics of ``model`` on images ``x`` with labels ``y``."""
    probabilities = predict_logits(model, x, batch_size).softmax(dim=1).cpu()
    return calibration_from_probabilities(probabilities, y.cpu(), bins)
