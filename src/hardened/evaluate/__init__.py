"""Evaluation: the cascade evaluator (presets of attacks on the points still robust) with
gradient-masking checks and their answers (EOT, BPDA), robust accuracy sweeps, minimal
perturbations, success rate against norm, transfer, attack comparisons and sanity checks."""

from hardened.evaluate.cascade import (
    PRESETS,
    AttackContribution,
    CascadeResult,
    CascadeStep,
    CascadeSweep,
    cascade_sweep,
    run_cascade,
)
from hardened.evaluate.compare import (
    AttackComparison,
    AttackRun,
    TraceStep,
    compare_attacks,
    default_attack_suite,
    trace_attack,
)
from hardened.evaluate.masking import (
    BPDA,
    EOT,
    MaskingFinding,
    MaskingPlan,
    plan_countermeasures,
)
from hardened.evaluate.sanity import SanityCheck, masking_check, run_sanity_checks
from hardened.evaluate.sweeps import (
    MinimalPerturbation,
    SuccessCurve,
    SweepResult,
    load_result,
    minimal_eps,
    minimal_norm,
    robust_accuracy_sweep,
    save_result,
    success_curve,
)
from hardened.evaluate.transfer import (
    TransferMatrix,
    TransferResult,
    craft_transfer,
    transfer_accuracy,
    transfer_matrix,
    transfer_sweep,
)

__all__ = [
    "PRESETS",
    "AttackContribution",
    "BPDA",
    "CascadeResult",
    "CascadeStep",
    "CascadeSweep",
    "EOT",
    "MaskingFinding",
    "MaskingPlan",
    "cascade_sweep",
    "plan_countermeasures",
    "run_cascade",
    "AttackComparison",
    "AttackRun",
    "SanityCheck",
    "TraceStep",
    "compare_attacks",
    "default_attack_suite",
    "masking_check",
    "run_sanity_checks",
    "trace_attack",
    "MinimalPerturbation",
    "SuccessCurve",
    "SweepResult",
    "TransferResult",
    "craft_transfer",
    "load_result",
    "minimal_eps",
    "minimal_norm",
    "robust_accuracy_sweep",
    "save_result",
    "success_curve",
    "TransferMatrix",
    "transfer_accuracy",
    "transfer_matrix",
    "transfer_sweep",
]
