"""Evaluation: robust accuracy sweeps, minimal perturbations, success rate against norm."""

from hardened.evaluate.sweeps import (
    MinimalPerturbation,
    SuccessCurve,
    SweepResult,
    load_result,
    minimal_eps,
    robust_accuracy_sweep,
    save_result,
    success_curve,
)
from hardened.evaluate.transfer import (
    TransferResult,
    craft_transfer,
    transfer_accuracy,
    transfer_sweep,
)

__all__ = [
    "MinimalPerturbation",
    "SuccessCurve",
    "SweepResult",
    "TransferResult",
    "craft_transfer",
    "load_result",
    "minimal_eps",
    "robust_accuracy_sweep",
    "save_result",
    "success_curve",
    "transfer_accuracy",
    "transfer_sweep",
]
