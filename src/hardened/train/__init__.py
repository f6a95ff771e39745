"""Training: ``Trainer``/``train`` (metrics log, atomic checkpoints, exact resume) and methods.

Methods: ``standard``, ``pgd`` (Madry), ``fgsm`` (fast AT, Wong), ``trades`` (Zhang), ``noise``
(Gaussian), ``ensemble`` (Tramèr), ``semi-supervised`` (robust self-training, Carmon).
"""

from hardened.train.config import TrainConfig
from hardened.train.loop import (
    CHECKPOINT_NAME,
    EpochRecord,
    Trainer,
    TrainResult,
    accuracy,
    load_checkpoint,
    train,
)
from hardened.train.methods import (
    METHODS,
    TRADES,
    CollapseGuard,
    Ensemble,
    FastFGSM,
    GaussianNoise,
    Method,
    PGDTraining,
    SemiSupervised,
    Standard,
    StepContext,
    StepLoss,
    TrainingMethod,
    make_method,
    split_unlabeled,
)

__all__ = [
    "CHECKPOINT_NAME",
    "METHODS",
    "TRADES",
    "CollapseGuard",
    "Ensemble",
    "EpochRecord",
    "FastFGSM",
    "GaussianNoise",
    "Method",
    "PGDTraining",
    "SemiSupervised",
    "Standard",
    "StepContext",
    "StepLoss",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingMethod",
    "accuracy",
    "load_checkpoint",
    "make_method",
    "split_unlabeled",
    "train",
]
