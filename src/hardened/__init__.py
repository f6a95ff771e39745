"""hardened: attack, explain, defend, certify and guard PyTorch image classifiers.

Images are float32 N×C×H×W tensors in [0, 1]; normalisation lives inside the model; an attack
is configured once and called as ``attack(model, x, y) -> AttackResult``.
"""

from hardened.attacks import BIM, FGM, FGSM, MIFGSM, PGD, Attack, AttackResult, make_attack
from hardened.data import Dataset, load_dataset, load_splits
from hardened.errors import (
    ConfigError,
    DataError,
    HardenedError,
    InputError,
    ModelLoadError,
    NotFittedError,
    NotReliableClassification,
)
from hardened.models import build_model, load_model, save_model
from hardened.threat import ThreatModel

__version__ = "0.1.0"

__all__ = [
    "Attack",
    "AttackResult",
    "BIM",
    "ConfigError",
    "DataError",
    "Dataset",
    "FGM",
    "FGSM",
    "HardenedError",
    "InputError",
    "MIFGSM",
    "ModelLoadError",
    "NotFittedError",
    "NotReliableClassification",
    "PGD",
    "ThreatModel",
    "__version__",
    "build_model",
    "load_dataset",
    "load_model",
    "load_splits",
    "make_attack",
    "save_model",
]
