"""The audit: typed stages that call the library's API and collect one report.

``run_audit(model, splits, out_dir=...)`` runs every registered stage (``stages/``, one module
each) in the order their requirements allow, caches each stage's result (``cache``) and writes
``index.html`` and ``audit.json`` (schema ``AUDIT_SCHEMA_VERSION``). Layout:

- ``budget``: ``AuditBudget`` and each stage's slice of it;
- ``stage``: the ``Stage`` contract, ``StageOutput``, ``Summary``, ``register_stage``;
- ``pipeline``: ordering, running, caching, the report; ``verdict``: the summary paragraph;
- ``default_lenet``: ``default_model()``, the ``lenet`` audited when no model is given (the module
  is not named after the function, which would shadow it).
"""

from hardened.audit.budget import BUDGETS, AuditBudget, budget_slice, check_budget
from hardened.audit.default_lenet import default_model, default_model_path
from hardened.audit.pipeline import all_stages, check_output_dir, order_stages, run_audit
from hardened.audit.result import AUDIT_SCHEMA_VERSION, AuditResult, StageResult
from hardened.audit.stage import (
    AUDIT_STAGES,
    NoBudget,
    Stage,
    StageContext,
    StageOutput,
    StageSkipped,
    Summary,
    register_stage,
    registered_stages,
)
from hardened.audit.tables import Table

__all__ = [
    "AUDIT_SCHEMA_VERSION",
    "AUDIT_STAGES",
    "BUDGETS",
    "AuditBudget",
    "AuditResult",
    "NoBudget",
    "Stage",
    "StageContext",
    "StageOutput",
    "StageResult",
    "StageSkipped",
    "Summary",
    "Table",
    "all_stages",
    "budget_slice",
    "check_budget",
    "check_output_dir",
    "default_model",
    "default_model_path",
    "order_stages",
    "register_stage",
    "registered_stages",
    "run_audit",
]
