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

__all__ = [
    "MinimalPerturbation",
    "SuccessCurve",
    "SweepResult",
    "load_result",
    "minimal_eps",
    "robust_accuracy_sweep",
    "save_result",
    "success_curve",
]
