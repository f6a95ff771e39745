"""The audit pipeline: outputs, schema, determinism, resume, failure isolation, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import blob_data, tiny_audit_splits, tiny_cnn
from hardened.audit import all_stages, run_audit
from hardened.data import Splits
from hardened.errors import ConfigError

from helpers import TINY_BUDGET as TINY


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
    return {s.name: _without_timings(s.to_dict()["data"]) for s in result.stages}


def test_audit_writes_report_json_and_figures(tiny_audit):
    result, folder, model, before = tiny_audit
    data = json.loads((folder / "audit.json").read_text())
    assert data["schema_version"] == 1 and data["budget"] == "tiny" and data["seed"] == 3
    assert [s["name"] for s in data["stages"]] == [name for name, *_ in all_stages()]
    page = (folder / "index.html").read_text()
    assert "http://" not in page and "https://" not in page, "the report must be self-contained"
    for stage in result.stages:
        assert f'id="{stage.name}"' in page
        for name in stage.figures.values():
            assert (folder / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    assert page.count("data:image/png;base64,") == sum(len(s.figures) for s in result.stages)
    assert result.verdict and "%" in result.verdict
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_same_seed_same_numbers_in_a_fresh_folder(tiny_audit, tmp_path):
    first, _, model, _ = tiny_audit
    second = run_audit(model, tiny_audit_splits(), out_dir=tmp_path / "b", budget=TINY, seed=3)
    assert _numbers(first) == _numbers(second)
    assert first.verdict == second.verdict


def test_rerun_resumes_from_cached_stages(setup, tmp_path):
    model, splits = setup
    calls = []

    def counting(ctx):
        calls.append(1)
        return {"value": 1}, {}

    stages = (*all_stages()[:1], ("extra", "Extra", counting, 1.0))
    run_audit(model, splits, out_dir=tmp_path / "a", budget=TINY, stages=stages)
    run_audit(model, splits, out_dir=tmp_path / "a", budget=TINY, stages=stages)
    assert calls == [1]
    run_audit(model, splits, out_dir=tmp_path / "a", budget=TINY, stages=stages, seed=9)
    assert calls == [1, 1]


def test_a_failing_stage_is_reported_and_the_rest_goes_on(setup, tmp_path):
    model, splits = setup

    def broken(ctx):
        raise RuntimeError("boom")

    stages = (("broken", "Broken", broken, 1.0), *all_stages()[:1])
    result = run_audit(model, splits, out_dir=tmp_path / "a", budget=TINY, stages=stages)
    assert result.stage("broken").status == "failed" and "boom" in result.stage("broken").message
    assert result.stage("clean").status == "ok" and not result.complete
    assert "Not measured: Broken" in result.verdict


def test_bad_output_dir_and_budget(setup, tmp_path):
    model, splits = setup
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("do not overwrite")
    with pytest.raises(ConfigError, match="not a previous audit"):
        run_audit(model, splits, out_dir=tmp_path / "precious", budget=TINY)
    with pytest.raises(ConfigError, match="unknown budget"):
        run_audit(model, splits, out_dir=tmp_path / "x", budget="extreme")
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "do not overwrite"
