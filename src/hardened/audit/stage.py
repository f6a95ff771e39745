"""The typed stage: what a stage declares, what it is given, what it returns.

A stage is a class with ``name``, ``title``, ``position`` (its place in the report),
``requires`` (earlier stages whose results it reads), ``budget_type`` (its slice of the
``AuditBudget``), ``summary_type`` (the typed summary the verdict reads) and
``run(ctx) -> StageOutput``; ``sharded`` stages split their per-image work over the ranks of
a torchrun job (every rank runs them; the others run on rank 0 alone). Decorating it with ``@register_stage`` adds it to ``AUDIT_STAGES``
and so to every audit: adding a stage is one new module in ``hardened/audit/stages/``. Other
packages add stages through the entry-point group ``hardened.audit_stages``.

Raise ``StageSkipped`` (a ``HardenedError``) when the stage cannot apply to this model or data:
it is reported as "skipped" with the reason. Any other exception marks the stage "failed" and
its traceback is kept in ``audit.json``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from hardened.audit.access import FULL_ACCESS, ModelAccess
from hardened.audit.tables import Table
from hardened.data.dataset import Dataset, Splits
from hardened.errors import ConfigError, HardenedError
from hardened.registry import Registry

if TYPE_CHECKING:
    from hardened.audit.result import StageResult

__all__ = [
    "AUDIT_STAGES",
    "NoBudget",
    "Stage",
    "StageContext",
    "StageOutput",
    "StageSkipped",
    "Summary",
    "register_stage",
    "registered_stages",
]

B = TypeVar("B")
S = TypeVar("S", bound="type[Stage[Any]]")


class StageSkipped(HardenedError):
    """Raised inside a stage when it cannot apply to this model or data (reported as skipped)."""


@dataclass(frozen=True)
class Summary(ABC):
    """A stage's headline numbers, typed; ``sentence()`` is its part of the verdict."""

    @abstractmethod
    def sentence(self) -> str:
        """One or two sentences for the verdict paragraph."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Summary:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class NoBudget:
    """The budget slice of a stage that reads no budget knob."""


@dataclass(frozen=True)
class StageOutput:
    """What ``Stage.run`` returns: summary, tables, figures (caption -> PNG path), notes, data."""

    summary: Summary | None = None
    tables: tuple[Table, ...] = ()
    figures: Mapping[str, Path] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageContext(Generic[B]):
    """What a stage may use: the model, the data (test split on the model's device), its budget
    slice, the seed, where figures go, the results of the stages before it, ``work_dir``: a
    folder for resumable intermediate state, kept while the stage is unfinished (a killed or
    failed stage resumes from it) and removed once its result is cached. ``access`` says what
    the model allows (gradients, LRP: see ``hardened.audit.access``); ``surrogate`` is a
    white-box model for transfer attacks on an outputs-only one (``None``: none given), and
    ``batch_size``: images per batch for gradient work, sized to memory once per audit
    (``fit_batch_size``)."""

    model: nn.Module
    splits: Splits
    test: Dataset
    budget: B
    seed: int
    figures_dir: Path
    device: torch.device
    earlier: Mapping[str, StageResult] = field(default_factory=dict)
    work_dir: Path | None = None
    access: ModelAccess = FULL_ACCESS
    surrogate: nn.Module | None = None
    batch_size: int = 256

    def figure(self, name: str) -> Path:
        """Where the figure ``name`` is written: ``figures_dir/name.png``."""
        return self.figures_dir / f"{name}.png"

    def requirement(self, name: str) -> StageResult:
        """The result of the earlier stage ``name`` (one of the stage's ``requires``)."""
        if name not in self.earlier:
            raise ConfigError(f"stage {name!r} is not among this stage's requirements")
        return self.earlier[name]


class Stage(ABC, Generic[B]):
    """One section of the audit; subclasses set the class attributes and write ``run``."""

    name: ClassVar[str]
    title: ClassVar[str]
    position: ClassVar[int] = 1_000
    requires: ClassVar[tuple[str, ...]] = ()
    budget_type: ClassVar[type[Any]] = NoBudget
    summary_type: ClassVar[type[Summary] | None] = None
    weight: ClassVar[float] = 1.0  # share of the progress bar
    # True: run() splits its per-image work over the ranks of a torchrun job (the sharded
    # cascade, the sharded certification), so every rank runs it and rank 0's output is kept
    sharded: ClassVar[bool] = False

    @abstractmethod
    def run(self, ctx: StageContext[B]) -> StageOutput:
        """Measure, write figures under ``ctx.figures_dir``, return the output."""

    def __repr__(self) -> str:
        return f"<stage {self.name}>"


AUDIT_STAGES: Registry[Stage[Any]] = Registry(
    "audit stage", group="hardened.audit_stages", base=Stage,
    capabilities=("name", "title", "position", "requires", "budget_type", "summary_type"),
    builtins="hardened.audit.stages",  # its modules register themselves, on first lookup
)


def register_stage(stage: S) -> S:
    """Class decorator: register the stage in ``AUDIT_STAGES`` under its ``name``, so every
    audit runs it (in ``position`` order)."""
    return AUDIT_STAGES.register(stage.name)(stage)


def registered_stages() -> tuple[type[Stage[Any]], ...]:
    """The registered stage classes (built-in and plugins), in report order."""
    return tuple(sorted((AUDIT_STAGES.get(n) for n in AUDIT_STAGES.names()), key=lambda s: s.position))
