"""Contract tests over every registered audit stage, and the summaries' verdict sentences."""

from __future__ import annotations

import dataclasses

import pytest

from hardened.audit import (
    AuditBudget,
    NoBudget,
    Stage,
    StageOutput,
    Summary,
    register_stage,
    registered_stages,
)
from hardened.audit.stages.certify import CertifySummary
from hardened.audit.stages.clean import CleanSummary
from hardened.audit.stages.explain_attacks import ExplainAttacksSummary
from hardened.audit.stages.guard import GuardSummary
from hardened.audit.stages.minimal import MinimalSummary
from hardened.audit.stages.robustness import RobustnessSummary
from hardened.audit.stages.sanity import SanitySummary
from hardened.audit.stages.spatial import SpatialSummary
from hardened.errors import ConfigError

STAGES = registered_stages()
BUDGET_FIELDS = {f.name for f in dataclasses.fields(AuditBudget)}


def test_the_built_in_stages_are_registered_in_report_order():
    assert [s.name for s in STAGES] == ["clean", "robustness", "minimal", "spatial", "explain_attacks", "gallery",
                                       "certify", "guard", "sanity"]
    assert len({s.position for s in STAGES}) == len(STAGES)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_stage_contract(stage):
    assert issubclass(stage, Stage) and stage.name.isidentifier() and stage.title and stage.weight > 0
    earlier = {s.name for s in STAGES if s.position < stage.position}
    assert set(stage.requires) <= earlier, "a stage requires only stages that come before it"
    assert dataclasses.is_dataclass(stage.budget_type)
    assert {f.name for f in dataclasses.fields(stage.budget_type)} <= BUDGET_FIELDS
    assert stage.summary_type is None or issubclass(stage.summary_type, Summary)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_stage_output_round_trips_through_its_cache_record(tiny_audit, stage):
    result, *_ = tiny_audit
    measured = result.stage(stage.name)
    assert measured.status == "ok", measured.message
    if stage.summary_type is not None and measured.summary is not None:
        assert isinstance(measured.summary, stage.summary_type)
        assert stage.summary_type.from_dict(measured.summary.to_dict()) == measured.summary


def test_registering_a_second_stage_of_the_same_name_is_refused():
    class Clean(Stage[NoBudget]):
        name, title = "clean", "Another clean"

        def run(self, ctx):
            return StageOutput()

    with pytest.raises(ConfigError, match="is taken by"):
        register_stage(Clean)


def test_summary_sentences():
    assert CleanSummary(0.958, 0.026).sentence() == (
        "The model classifies 95.8% of the test images correctly (expected calibration error 2.6%).")
    assert RobustnessSummary(0.1, 0.67, 0.3, 0.0, 1.0, 0.775, "quick", (), ()).sentence() == (
        "Under the quick attack cascade at most 67.0% of the images stay correct at Linf eps=0.1, 0.0% at "
        "eps=0.3 and 77.5% at L2 eps=1. These are upper bounds: the points these attacks did not break.")
    assert MinimalSummary(64, 0.1236, 1.64, 0.1, 0.703, 1.0, 0.797, ()).sentence() == (
        "Half of 64 images are fooled by a Linf change of 0.124 or less and an L2 change of 1.64 or less (FMN "
        "minimal perturbations); by them at most 70.3% stay correct at Linf eps=0.1 and 79.7% at L2 eps=1.")
    assert SpatialSummary(100, 0.94, 0.45, 0.0, 0.0, 30.0, 3.0, 5).sentence() == (
        "Under the worst of a 5-point grid of rotations (±30°) and translations (±3 px), 0.0% of 100 images "
        "stay correct (94.0% untransformed; rotations alone 45.0%, translations alone 0.0%).")
    masked = RobustnessSummary(0.1, 0.9, 0.3, 0.05, 1.0, 0.8, "quick", ("zero-gradients",),
                               ("BPDA through 1 leading input module(s)",)).sentence()
    assert "at most 5.0% of the images" not in masked  # the flag sits beside every number
    assert "90.0% of the images stay correct at Linf eps=0.1 (masking check fired: zero-gradients)" in masked
    assert "5.0% at eps=0.3 (masking check fired: zero-gradients)" in masked
    assert masked.endswith("The model masks gradients (zero-gradients), so its true robust accuracy may be lower "
                           "still. The attacks used BPDA through 1 leading input module(s).")
    assert ExplainAttacksSummary(0.23, None, 1.0, 2.54).sentence() == (
        "Explanation-guided LRP-grad fools 23% of the correctly classified images against 100% for I-FGSM "
        "(median L2 2.54).")
    assert CertifySummary(0.25, 1000, 35, 40, None, 0.01, None).sentence() == (
        "Randomized smoothing (sigma 0.25, n=1,000) certifies 35 of 40 images correctly.")
    assert GuardSummary("energy", 0.5, 0.25).sentence().startswith("The best guard (energy score")
    assert SanitySummary(8, ()).sentence().startswith("All 8 gradient-masking checks pass")
    assert SanitySummary(8, ("a", "b")).sentence().startswith("2 of 8 gradient-masking checks are flagged (a, b)")
    assert SanitySummary.from_dict({"total": 8, "flagged": ["a"]}) == SanitySummary(8, ("a",))


PLUGIN = '''
from dataclasses import dataclass

from hardened.audit import Stage, StageOutput, Summary


@dataclass(frozen=True)
class ToySummary(Summary):
    images: int

    def sentence(self):
        return f"The toy stage saw {self.images} test images."


class ToyStage(Stage):
    name, title, position, summary_type = "toy", "Toy stage", 5, ToySummary

    def run(self, ctx):
        return StageOutput(summary=ToySummary(len(ctx.test)))
'''


def test_a_stage_from_another_package_joins_the_audit_through_its_entry_point(tmp_path, monkeypatch):
    from hardened.audit import run_audit
    from hardened.audit import stage as stage_module
    from hardened.data import Splits
    from hardened.registry import Registry
    from helpers import TINY_BUDGET, blob_data, tiny_cnn

    site = tmp_path / "site"
    info = site / "toy_stage-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-stage\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hardened.audit_stages]\ntoy = toy_audit_stage:ToyStage\n")
    (site / "toy_audit_stage.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    fresh = Registry("audit stage", group="hardened.audit_stages", base=Stage,
                     capabilities=stage_module.AUDIT_STAGES.capabilities)
    for name in stage_module.AUDIT_STAGES.names():
        fresh.register(name)(stage_module.AUDIT_STAGES.get(name))
    monkeypatch.setattr(stage_module, "AUDIT_STAGES", fresh)
    assert [s.name for s in registered_stages()][:2] == ["toy", "clean"]
    splits = Splits(train=blob_data(n=90, seed=1), test=blob_data(n=30, seed=2))
    clean_only = [s() for s in registered_stages() if s.name in ("toy", "clean")]
    result = run_audit(tiny_cnn(seed=5), splits, out_dir=tmp_path / "a", budget=TINY_BUDGET, stages=clean_only)
    assert result.stage("toy").status == "ok"
    assert result.verdict.startswith("The toy stage saw 30 test images. The model classifies")
