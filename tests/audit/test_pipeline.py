"""The audit pipeline: outputs, schema, determinism, resume, status semantics, ordering, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import hardened
from hardened.audit import (
    AUDIT_SCHEMA_VERSION,
    NoBudget,
    Stage,
    StageOutput,
    StageSkipped,
    all_stages,
    order_stages,
    run_audit,
)
from hardened.data import Splits
from hardened.errors import ConfigError
from helpers import TINY_BUDGET as TINY
from helpers import blob_data, tiny_audit_splits, tiny_cnn


@pytest.fixture(scope="module")
def setup():
    splits = Splits(train=blob_data(n=90, seed=1), test=blob_data(n=30, seed=2))
    return tiny_cnn(seed=5), splits


def _without_timings(value):
    """The data without wall-clock fields (``seconds``, ``images_per_second``...): timings differ."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "second" not in k}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _numbers(result) -> dict:
    return {s.name: _without_timings(s.to_dict()) for s in result.stages}


def _stage(name, run, requires=()):
    """A throw-away stage class (not registered) whose ``run`` is ``run(ctx)``."""
    return type(f"{name}Stage", (Stage,), {"name": name, "title": name.title(), "requires": tuple(requires),
                                          "budget_type": NoBudget, "run": lambda self, ctx: run(ctx)})()


def test_audit_writes_report_json_and_figures(tiny_audit):
    result, folder, model, before = tiny_audit
    data = json.loads((folder / "audit.json").read_text())
    assert data["schema_version"] == AUDIT_SCHEMA_VERSION == 2 and data["budget"] == "tiny" and data["seed"] == 3
    assert [s["name"] for s in data["stages"]] == [s.name for s in all_stages()]
    assert set(data["stages"][0]) == {"name", "title", "status", "seconds", "message", "traceback", "summary",
                                      "tables", "notes", "figures", "data"}
    page = (folder / "index.html").read_text()
    assert "http://" not in page and "https://" not in page, "the report must be self-contained"
    for stage in result.stages:
        assert f'id="{stage.name}"' in page
        for table in stage.tables:
            assert table.title.split("(")[0].strip() in page.replace("&#x27;", "'")
        for name in stage.figures.values():
            assert (folder / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    assert page.count("data:image/png;base64,") == sum(len(s.figures) for s in result.stages)
    assert result.verdict and "%" in result.verdict
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_verdict_is_the_ok_stages_summary_sentences(tiny_audit):
    result, *_ = tiny_audit
    sentences = [s.summary.sentence() for s in result.stages if s.status == "ok" and s.summary is not None]
    assert sentences and result.verdict.startswith(" ".join(sentences))
    clean = result.stage("clean")
    assert clean.summary.accuracy == clean.data["accuracy"]
    assert f"{100 * clean.data['accuracy']:.1f}%" in result.verdict


def test_same_seed_same_numbers_in_a_fresh_folder(tiny_audit, tmp_path):
    first, _, model, _ = tiny_audit
    second = run_audit(model, tiny_audit_splits(), out_dir=tmp_path / "b", budget=TINY, seed=3)
    assert _numbers(first) == _numbers(second)
    assert first.verdict == second.verdict


def test_a_rerun_in_the_same_folder_reads_every_stage_back(tiny_audit):
    first, folder, model, _ = tiny_audit
    again = run_audit(model, tiny_audit_splits(), out_dir=folder, budget=TINY, seed=3)
    assert [s.seconds for s in again.stages if s.status == "ok"] == [s.seconds for s in first.stages if s.status == "ok"]
    assert again.verdict == first.verdict
    assert [s.summary for s in again.stages] == [s.summary for s in first.stages]
    assert [s.tables for s in again.stages] == [s.tables for s in first.stages]


def test_rerun_resumes_from_cached_stages(setup, tmp_path):
    model, splits = setup
    calls = []

    def counting(ctx):
        calls.append(1)
        return StageOutput(data={"value": 1})

    stages = (all_stages()[0], _stage("extra", counting))
    run_audit(model, splits, out_dir=tmp_path / "a", budget=TINY, stages=stages)
    run_audit(model, splits, out_dir=tmp_path / "a", budget=TINY, stages=stages)
    assert calls == [1]
    run_audit(model, splits, out_dir=tmp_path / "a", budget=TINY, stages=stages, seed=9)
    assert calls == [1, 1]


def test_a_failing_stage_is_reported_with_its_traceback_and_the_rest_goes_on(setup, tmp_path):
    model, splits = setup

    def broken(ctx):
        raise RuntimeError("boom")

    stages = (_stage("broken", broken), all_stages()[0])
    result = run_audit(model, splits, out_dir=tmp_path / "a", budget=TINY, stages=stages)
    assert result.stage("broken").status == "failed" and "boom" in result.stage("broken").message
    assert result.stage("clean").status == "ok" and not result.complete and result.failed
    assert "Not measured: Broken" in result.verdict
    stored = json.loads((tmp_path / "a" / "audit.json").read_text())["stages"][0]
    assert stored["traceback"].startswith("Traceback") and "RuntimeError: boom" in stored["traceback"]
    assert "in broken" in stored["traceback"]


def test_a_library_error_is_a_failure_and_stage_skipped_is_a_skip(setup, tmp_path):
    model, splits = setup

    def misconfigured(ctx):
        raise ConfigError("a library bug, not a missing feature")

    def not_applicable(ctx):
        raise StageSkipped("this model has no convolution")

    stages = (_stage("bug", misconfigured), _stage("na", not_applicable))
    result = run_audit(model, splits, out_dir=tmp_path / "a", budget=TINY, stages=stages)
    assert result.stage("bug").status == "failed" and "ConfigError" in result.stage("bug").traceback
    skipped = result.stage("na")
    assert skipped.status == "skipped" and skipped.message == "this model has no convolution"
    assert skipped.traceback is None


def test_stages_run_after_their_requirements_and_skip_when_one_is_missing_or_broken(setup, tmp_path):
    model, splits = setup
    seen = []

    def record(name):
        def run(ctx):
            seen.append((name, sorted(ctx.earlier)))
            return StageOutput()
        return run

    def broken(ctx):
        raise RuntimeError("boom")

    late = _stage("late", record("late"), requires=("early",))
    early = _stage("early", record("early"))
    assert [s.name for s in order_stages([late, early])] == ["early", "late"]
    result = run_audit(model, splits, out_dir=tmp_path / "a", budget=TINY, stages=(late, early))
    assert [s.name for s in result.stages] == ["early", "late"] and seen == [("early", []), ("late", ["early"])]
    alone = run_audit(model, splits, out_dir=tmp_path / "b", budget=TINY, stages=(late,))
    assert alone.stage("late").status == "skipped" and "not part of this audit" in alone.stage("late").message
    after_failure = run_audit(model, splits, out_dir=tmp_path / "c", budget=TINY,
                              stages=(_stage("early", broken), late))
    assert after_failure.stage("late").status == "skipped"
    assert "which was failed" in after_failure.stage("late").message
    with pytest.raises(ConfigError, match="cycle"):
        order_stages([_stage("a", record("a"), requires=("b",)), _stage("b", record("b"), requires=("a",))])
    with pytest.raises(ConfigError, match="unique"):
        order_stages([early, early])


def test_a_stage_gets_only_its_own_budget_slice(setup, tmp_path):
    model, splits = setup

    @dataclass(frozen=True)
    class Steps:
        pgd_steps: int
        custom_knob: int = 7

    budgets = []

    class Reading(Stage[Steps]):
        name, title, budget_type = "reading", "Reading", Steps

        def run(self, ctx):
            budgets.append(ctx.budget)
            return StageOutput()

    run_audit(model, splits, out_dir=tmp_path / "a", budget=TINY, stages=(Reading(),))
    assert budgets == [Steps(pgd_steps=TINY.pgd_steps, custom_knob=7)]


def test_bad_output_dir_and_budget(setup, tmp_path):
    model, splits = setup
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("do not overwrite")
    with pytest.raises(ConfigError, match="not a previous audit"):
        run_audit(model, splits, out_dir=tmp_path / "precious", budget=TINY)
    with pytest.raises(ConfigError, match="unknown budget"):
        run_audit(model, splits, out_dir=tmp_path / "x", budget="extreme")
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "do not overwrite"


_HOLD = """
import sys, time
from hardened._util.lock import lock_output_dir
with lock_output_dir(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_audit_on_a_locked_folder_is_refused_before_any_stage_runs(setup, tmp_path):
    model, splits = setup
    folder = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(hardened.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        calls = []
        stage = _stage("counting", lambda ctx: calls.append(1) or StageOutput())
        with pytest.raises(ConfigError, match=f"in use by another hardened run \\(process {child.pid}\\)"):
            run_audit(model, splits, out_dir=folder, budget=TINY, stages=(stage,))
        assert calls == [] and not (folder / "stages").exists()
    finally:
        child.kill()
        child.wait()
    run_audit(model, splits, out_dir=folder, budget=TINY, stages=(stage,))
    assert calls == [1]
