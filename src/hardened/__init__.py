"""hardened: attack, explain, defend, certify and guard PyTorch image classifiers.

Images are float32 N×C×H×W tensors in [0, 1]; normalisation lives inside the model; an attack
is configured once and called as ``attack(model, x, y) -> AttackResult``.
"""

from hardened._util.allocator import keep_freed_memory
from hardened.attacks import BIM, FGM, FGSM, MIFGSM, PGD, Attack, AttackResult, make_attack
from hardened.certify import Certificate, SmoothedClassifier, certify_ibp
from hardened.data import Dataset, load_dataset, load_splits
from hardened.errors import (
    BudgetWarning,
    ConfigError,
    DataError,
    DistributedError,
    HardenedError,
    HardenedWarning,
    InputError,
    ModelLoadError,
    NotFittedError,
    NotReliableClassification,
)
from hardened.explain import Attribution, conservation_error, explain_images
from hardened.guard import GuardedClassifier, make_score
from hardened.models import build_model, load_model, save_model
from hardened.threat import ThreatModel
from hardened.train import TrainConfig, Trainer, make_method

__version__ = "0.1.0"

__all__ = [
    "Attack",
    "Attribution",
    "AttackResult",
    "BIM",
    "BudgetWarning",
    "Certificate",
    "ConfigError",
    "DataError",
    "Dataset",
    "FGM",
    "FGSM",
    "GuardedClassifier",
    "DistributedError",
    "HardenedError",
    "HardenedWarning",
    "InputError",
    "MIFGSM",
    "ModelLoadError",
    "NotFittedError",
    "NotReliableClassification",
    "PGD",
    "SmoothedClassifier",
    "ThreatModel",
    "conservation_error",
    "explain_images",
    "keep_freed_memory",
    "TrainConfig",
    "Trainer",
    "__version__",
    "build_model",
    "certify_ibp",
    "load_dataset",
    "load_model",
    "load_splits",
    "make_attack",
    "make_method",
    "make_score",
    "save_model",
]
