"""Run the audit: order the stages by their requirements, run or reuse each, write the report.

``run_audit(model, splits, out_dir=...)`` runs each stage, catching errors so that one stage that
cannot apply (``StageSkipped``: "skipped") or breaks (any other exception: "failed", traceback
kept) does not lose the rest. Results are cached under ``out_dir/stages/`` (see ``cache``), so an
interrupted audit resumes where it stopped and a re-run with the same seed gives the same numbers.

Under ``torchrun`` (``hardened audit --nproc N``) rank 0 reads the cache, runs the stages that
are not ``sharded`` and writes every file, while the other ranks wait; a ``sharded`` stage
(robustness, certification) runs on every rank and splits its per-image work through the
sharded cascade and certification, whose merged results equal one process's. Each stage's
result is rank 0's, broadcast to the others (later stages read it), so ``audit.json`` equals a
single-process audit but for the measured seconds.

Any model format is audited: a module, a TorchScript or exported program, or an outputs-only
model (an onnxruntime model, an HTTP endpoint, a function ``x -> scores``), which runs inside an
``OutputsOnly`` module whose queries are counted per stage (``data["queries"]``, a note) and in
all (``AuditResult.queries``). Each stage reads ``ctx.access`` to substitute what the model does
not allow, and says so.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from hardened._util.atomic import write_json, write_text
from hardened._util.device import model_device
from hardened._util.digests import model_digest
from hardened._util.lock import LOCK_NAME, lock_output_dir
from hardened._util.memory import resolve_batch_size
from hardened._util.paths import inside
from hardened._util.progress import progress_bar
from hardened.audit import cache
from hardened.audit.access import ModelAccess, audited_model, model_access, model_fingerprint
from hardened.audit.budget import AuditBudget, budget_slice, check_budget, scale_budget
from hardened.audit.result import AUDIT_SCHEMA_VERSION, AuditResult, StageResult
from hardened.audit.stage import Stage, StageContext, StageSkipped, registered_stages
from hardened.audit.verdict import verdict
from hardened.data.dataset import Splits
from hardened.distributed import WorldInfo, check_same_settings, from_rank0, is_distributed, world
from hardened.errors import ConfigError, DistributedError, InputError
from hardened.models.blackbox import BlackBox, OutputsOnly

__all__ = ["all_stages", "check_output_dir", "order_stages", "run_audit"]


def all_stages() -> tuple[Stage[Any], ...]:
    """The stages of a full audit (every registered stage), in report order."""
    return tuple(stage() for stage in registered_stages())


def order_stages(stages: Sequence[Stage[Any]]) -> list[Stage[Any]]:
    """``stages`` reordered so that each comes after the stages it requires (otherwise in the
    given order); a requirement missing from ``stages`` is left for the stage to report."""
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"audit stage names must be unique, got {names}")
    present = set(names)
    placed: list[Stage[Any]] = []
    waiting = list(stages)
    while waiting:
        done = {s.name for s in placed}
        ready = next((s for s in waiting if all(r in done or r not in present for r in s.requires)), None)
        if ready is None:
            raise ConfigError(f"audit stages require each other in a cycle: {[s.name for s in waiting]}")
        placed.append(ready)
        waiting.remove(ready)
    return placed


def check_output_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Refuse an existing, non-empty folder that is not a previous audit (so nothing is clobbered)."""
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} exists and is a file; give a folder for the report")
    entries = [entry.name for entry in folder.iterdir()] if folder.is_dir() else []
    if [e for e in entries if e != LOCK_NAME] and not (folder / "audit.json").is_file() and not (folder / "stages").is_dir():
        raise ConfigError(
            f"--out {folder} exists and is not a previous audit (no audit.json); choose a new or empty "
            "folder so that nothing in it is overwritten"
        )
    return folder


def run_audit(
    model: nn.Module | BlackBox | Callable[[Tensor], Any],
    splits: Splits,
    *,
    out_dir: str | os.PathLike[str],
    budget: str | AuditBudget = "quick",
    seed: int = 0,
    model_name: str = "model",
    progress: bool = False,
    stages: Sequence[Stage[Any]] | None = None,
    surrogate: nn.Module | None = None,
    batch_size: int | None = None,
) -> AuditResult:
    """Audit ``model`` on ``splits`` and write ``index.html``, ``audit.json`` and PNGs to ``out_dir``.

    ``model`` is an ``nn.Module`` or an outputs-only model (``BlackBox``, ``OnnxRuntimeModel``,
    a function ``x -> scores``). ``surrogate``: a white-box model with the same input and
    classes, for transfer attacks on an outputs-only model (ignored for a white-box one).
    ``stages`` defaults to every registered stage. A named ``budget`` is scaled down for images
    larger than 3×32×32 (``scale_budget``; a custom ``AuditBudget`` is used as given).
    ``batch_size`` (images per batch) defaults to what fits in memory for this model
    (``hardened._util.memory.fit_batch_size``). The model is never modified; its train/eval
    mode is restored after every stage. ``out_dir`` is locked while the audit runs: a second
    audit on the same folder (another process) is refused at once with a ``ConfigError``.
    In a torchrun job every rank calls this with the same arguments (checked: ``ConfigError``
    when they differ) and gets the same result; only rank 0 writes (see the module docstring).
    """
    plan = check_budget(budget)
    if not isinstance(budget, AuditBudget):
        plan = scale_budget(plan, splits.test.input_shape)
    info = world() if is_distributed() else WorldInfo()
    # rank 0 alone checks the folder it writes (another rank could see it half set up)
    folder = check_output_dir(out_dir) if info.is_main else Path(out_dir)
    if len(splits.test) == 0:
        raise InputError(f"{splits.test.name} has no test images to audit")
    chosen = order_stages(all_stages() if stages is None else stages)
    module = audited_model(model, num_classes=splits.test.num_classes, source=model_name)
    access = model_access(module)
    if surrogate is not None and not isinstance(surrogate, nn.Module):
        raise ConfigError(f"the surrogate must be a white-box nn.Module, got {type(surrogate).__name__}")
    helper = surrogate if access.outputs_only else None
    digests = {"model": _model_key(module, splits, helper), "data": cache.data_digest(splits)}
    if info.distributed:
        check_same_settings({"budget": plan, "seed": seed, "stages": [s.name for s in chosen], **digests}, "audit")
    with lock_output_dir(folder) if info.is_main else nullcontext():
        result = _run_stages(module, splits, folder, plan, seed, chosen, progress and info.is_main, model_name,
                             digests, info, access, helper, batch_size)
        if info.is_main:
            from hardened.report.html import render_audit_html

            write_json(folder / "audit.json", result.to_dict())
            write_text(folder / "index.html", render_audit_html(result, folder / "figures"))
    return result


def _model_key(model: nn.Module, splits: Splits, surrogate: nn.Module | None) -> str:
    """The model's part of the cache key: its weights' digest or, outputs-only, its fingerprint
    (and the surrogate's weights, which the transfer attacks read)."""
    key = model_fingerprint(model, splits.test.x.to(model_device(model)))
    return key if surrogate is None else f"{key}:{model_digest(surrogate)}"


def _queries(model: nn.Module) -> int:
    return model.queries if isinstance(model, OutputsOnly) else 0


def _run_stages(model: nn.Module, splits: Splits, folder: Path, plan: AuditBudget, seed: int,
                chosen: Sequence[Stage[Any]], progress: bool, model_name: str, digests: dict[str, str],
                info: WorldInfo, access: ModelAccess, surrogate: nn.Module | None,
                batch_size: int | None = None) -> AuditResult:
    """Run or reuse each stage in ``chosen`` order (rank 0 holds the folder's lock). The batch
    size is rank 0's (sized to its memory unless given; one size for every rank's batches)."""
    device = model_device(surrogate if surrogate is not None else model)
    figures_dir = folder / "figures"
    stage_dir = folder / "stages"
    figures_dir.mkdir(parents=True, exist_ok=True)
    stage_dir.mkdir(parents=True, exist_ok=True)
    on_device = splits.test.to(device)
    # an outputs-only model is sized as opaque (a multiple of its input), unless a surrogate runs
    sizing = surrogate if surrogate is not None else (model if not access.outputs_only else model.__call__)
    sized = resolve_batch_size(batch_size, sizing, on_device.x[:1], remember=folder / "batch_size.json") \
        if info.is_main else None
    batch = from_rank0(sized, "the audit's batch size")
    results: dict[str, StageResult] = {}
    keys: dict[str, str] = {}
    start = time.perf_counter()
    with progress_bar(sum(s.weight for s in chosen), "audit", progress) as bar:
        for stage in chosen:
            bar.describe(f"audit: {stage.title.lower()}")
            share = budget_slice(plan, stage.budget_type)
            keys[stage.name] = cache.stage_key(
                name=stage.name, budget=share, seed=seed, requires=[keys.get(r, "") for r in stage.requires],
                **digests,
            )
            path = stage_dir / f"{stage.name}.json"
            cached = cache.load_cached(path, keys[stage.name], stage.summary_type, figures_dir) if info.is_main else None
            cached = from_rank0(cached, f"the audit's cache check of the {stage.name} stage")
            if cached is not None:
                results[stage.name] = cached
            else:
                work_dir = stage_dir / f"{stage.name}-{keys[stage.name]}"
                result = None
                if info.is_main or stage.sharded:
                    ctx = StageContext(model, splits, on_device, share, seed, _figures(figures_dir, work_dir, info),
                                       device, {r: results[r] for r in stage.requires if r in results}, work_dir,
                                       access, surrogate, batch)
                    before = _queries(model)
                    result = _run_stage(stage, ctx)
                    if access.outputs_only:
                        result = _with_queries(result, _queries(model) - before)
                results[stage.name] = from_rank0(result, f"waiting for rank 0 to finish the {stage.name} stage")
                if info.is_main:
                    cache.store(path, keys[stage.name], results[stage.name])
                    if results[stage.name].status == "ok":
                        shutil.rmtree(work_dir, ignore_errors=True)
            bar.advance(stage.weight)
    return AuditResult(
        schema_version=AUDIT_SCHEMA_VERSION, model=model_name, data=splits.test.name, budget=plan.name,
        seed=seed, verdict=verdict(results.values()), stages=tuple(results.values()),
        seconds=time.perf_counter() - start, access=access.to_dict(),
        queries=_queries(model) if access.outputs_only else None,
    )


def _with_queries(result: StageResult, queries: int) -> StageResult:
    """``result`` with the images it sent to the outputs-only model, in its data and notes."""
    notes = (*result.notes, f"{queries:,} images sent to the outputs-only model in this section.") if queries else result.notes
    return replace(result, data={**result.data, "queries": queries}, notes=notes)


def _figures(figures_dir: Path, work_dir: Path, info: WorldInfo) -> Path:
    """Where a stage draws its figures: the report's folder on rank 0; on another rank (whose
    output is discarded) a folder of its own inside the stage's work folder."""
    if info.is_main:
        return figures_dir
    own = work_dir / f"rank{info.rank}-figures"
    own.mkdir(parents=True, exist_ok=True)
    return own


def _missing_requirement(stage: Stage[Any], ctx: StageContext[Any]) -> None:
    for name in stage.requires:
        if name not in ctx.earlier:
            raise StageSkipped(f"needs the {name} stage, which is not part of this audit")
        if ctx.earlier[name].status != "ok":
            raise StageSkipped(f"needs the {ctx.earlier[name].title.lower()} stage, which was {ctx.earlier[name].status}")


def _figure_names(figures: Mapping[str, Path], figures_dir: Path) -> dict[str, str]:
    names = {}
    for caption, path in figures.items():
        if inside(figures_dir, Path(path).name) != Path(path).resolve():
            raise RuntimeError(f"figure {path} was written outside the report's figures folder")
        names[caption] = Path(path).name
    return names


def _run_stage(stage: Stage[Any], ctx: StageContext[Any]) -> StageResult:
    start = time.perf_counter()
    modes = [(m, m.training) for m in ctx.model.modules()]
    try:
        _missing_requirement(stage, ctx)
        output = stage.run(ctx)
        result = StageResult(
            stage.name, stage.title, "ok", 0.0, summary=output.summary, tables=tuple(output.tables),
            figures=_figure_names(output.figures, ctx.figures_dir), notes=tuple(output.notes),
            data=dict(output.data),
        )
    except StageSkipped as error:
        result = StageResult(stage.name, stage.title, "skipped", 0.0, message=str(error))
    except DistributedError:  # a rank died: the job cannot go on, and rank 0 says so
        raise
    except Exception as error:  # a bug in one stage must not lose the rest of the audit
        last = traceback.extract_tb(error.__traceback__)[-1]
        result = StageResult(
            stage.name, stage.title, "failed", 0.0,
            message=f"{type(error).__name__}: {error} (at {Path(last.filename).name}:{last.lineno})",
            traceback="".join(traceback.format_exception(error)),
        )
    finally:
        for module, mode in modes:
            module.training = mode
    return replace(result, seconds=time.perf_counter() - start)
