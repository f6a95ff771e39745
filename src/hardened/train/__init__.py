"""Training: one loop (``train``) and training methods that give the batch loss."""

from hardened.train.loop import EpochRecord, TrainConfig, TrainResult, accuracy, train
from hardened.train.methods import Standard, TrainingMethod

__all__ = ["EpochRecord", "Standard", "TrainConfig", "TrainResult", "TrainingMethod", "accuracy", "train"]
