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
from hardened.audit.stages.robustness import RobustnessSummary
from hardened.audit.stages.sanity import SanitySummary
from hardened.errors import ConfigError

STAGES = registered_stages()
BUDGET_FIELDS = {f.name for f in dataclasses.fields(AuditBudget)}


def test_the_built_in_stages_are_registered_in_report_order():
    assert [s.name for s in STAGES] == ["clean", "robustness", "explain_attacks", "gallery", "certify", "guard",
                                       "sanity"]
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

    with pytest.raises(ConfigError, match="already registered"):
        register_stage(Clean)


def test_summary_sentences():
    assert CleanSummary(0.958, 0.026).sentence() == (
        "The model classifies 95.8% of the test images correctly (expected calibration error 2.6%).")
    assert RobustnessSummary(0.1, 0.67, 0.3, 0.0, 1.0, 0.775, 0.1236).sentence() == (
        "Under PGD attack its accuracy falls to 67.0% at Linf eps=0.1, 0.0% at eps=0.3, and 77.5% at L2 eps=1; "
        "half of the images are fooled by a Linf change of 0.124 or less.")
    assert ExplainAttacksSummary(0.23, None, 1.0, 2.54).sentence() == (
        "Explanation-guided LRP-grad fools 23% of the correctly classified images against 100% for I-FGSM "
        "(median L2 2.54).")
    assert CertifySummary(0.25, 1000, 35, 40, None, 0.01, None).sentence() == (
        "Randomized smoothing (sigma 0.25, n=1,000) certifies 35 of 40 images correctly.")
    assert GuardSummary("energy", 0.5, 0.25).sentence().startswith("The best guard (energy score")
    assert SanitySummary(8, ()).sentence().startswith("All 8 gradient-masking checks pass")
    assert SanitySummary(8, ("a", "b")).sentence().startswith("2 of 8 gradient-masking checks are flagged (a, b)")
    assert SanitySummary.from_dict({"total": 8, "flagged": ["a"]}) == SanitySummary(8, ("a",))
