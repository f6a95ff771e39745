"""Guard: reliability scores that refuse to predict on inputs the model was not made for.

``score = make_score("vae").fit(train)``; ``guard = GuardedClassifier(model, score)``;
``guard.calibrate(x_heldout, fpr=0.05)``; ``guard.predict(x)`` returns the class or raises
``NotReliableClassification``.
"""

from hardened.guard.base import BaseScore, ClassifierScore, LogitScore, Score
from hardened.guard.baselines import Energy, Mahalanobis, MaxSoftmax, penultimate_features
from hardened.guard.calibrate import (
    Calibration,
    ScoreSummary,
    calibrate_threshold,
    summarize_scores,
)
from hardened.guard.guarded import GuardedClassifier, GuardedPrediction, guarded_predict
from hardened.guard.registry import SCORES, make_score, score_from_state
from hardened.guard.vae import VAEScore
from hardened.guard.wgan_inverter import WGANInverterScore

__all__ = [
    "BaseScore",
    "Calibration",
    "ClassifierScore",
    "LogitScore",
    "Energy",
    "GuardedClassifier",
    "GuardedPrediction",
    "Mahalanobis",
    "MaxSoftmax",
    "SCORES",
    "Score",
    "ScoreSummary",
    "VAEScore",
    "WGANInverterScore",
    "calibrate_threshold",
    "guarded_predict",
    "make_score",
    "penultimate_features",
    "score_from_state",
    "summarize_scores",
]
