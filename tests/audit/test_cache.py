"""The stage cache: what its key covers (data contents, library version, the stage's own budget
slice, requirements) and that cached figure names cannot leave the report folder."""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch

import hardened
from hardened.audit import (
    NoBudget,
    Stage,
    StageOutput,
    StageResult,
    all_stages,
    budget_slice,
    run_audit,
)
from hardened.audit.cache import data_digest
from hardened.data import Dataset, Splits
from hardened.errors import ConfigError
from hardened.report.html import render_audit_html
from helpers import TINY_BUDGET as TINY
from helpers import blob_data, tiny_cnn

SECRET = b"\x89PNG-not-a-figure-but-a-secret"


@pytest.fixture(scope="module")
def setup():
    return tiny_cnn(seed=5), Splits(train=blob_data(n=90, seed=1), test=blob_data(n=30, seed=2))


@dataclass(frozen=True)
class EvalSlice:
    n_eval: int


class Counting(Stage[EvalSlice]):
    """Counts its runs and writes one figure."""

    name, title, budget_type = "counting", "Counting", EvalSlice

    def __init__(self) -> None:
        self.calls = 0

    def run(self, ctx):
        self.calls += 1
        path = ctx.figure("counting")
        path.write_bytes(b"\x89PNG counting figure")
        return StageOutput(figures={"A figure": path})


def _shuffled_labels(data: Dataset, seed: int) -> Dataset:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return dataclasses.replace(data, y=data.y[order])


def test_same_images_with_shuffled_labels_rerun_the_stages(setup, tmp_path):
    """Issue 17 #5: after the labels change, a re-run must not report the old accuracy."""
    model, splits = setup
    clean = all_stages()[:1]
    first = run_audit(model, splits, out_dir=tmp_path / "r", budget=TINY, stages=clean)
    shuffled = Splits(train=splits.train, test=_shuffled_labels(splits.test, seed=0))
    assert torch.equal(shuffled.test.x, splits.test.x) and not torch.equal(shuffled.test.y, splits.test.y)
    again = run_audit(model, shuffled, out_dir=tmp_path / "r", budget=TINY, stages=clean)
    fresh = run_audit(model, shuffled, out_dir=tmp_path / "fresh", budget=TINY, stages=clean)
    assert again.stage("clean").data["accuracy"] == fresh.stage("clean").data["accuracy"]
    assert again.stage("clean").data["accuracy"] != first.stage("clean").data["accuracy"]


def test_a_changed_training_split_or_class_names_change_the_data_digest(setup):
    _, splits = setup
    base = data_digest(splits)
    assert data_digest(Splits(train=splits.train, test=splits.test)) == base
    assert data_digest(Splits(train=_shuffled_labels(splits.train, 1), test=splits.test)) != base
    renamed = dataclasses.replace(splits.test, classes=("a", "b", "c"))
    assert data_digest(Splits(train=splits.train, test=renamed)) != base
    nudged = dataclasses.replace(splits.test, x=splits.test.x.clone())
    nudged.x[0, 0, 0, 0] += 1e-6
    assert data_digest(Splits(train=splits.train, test=nudged)) != base


def test_changed_weights_rerun_the_stages(setup, tmp_path):
    model, splits = setup
    stage = Counting()
    run_audit(model, splits, out_dir=tmp_path / "r", budget=TINY, stages=(stage,))
    other = tiny_cnn(seed=5)
    run_audit(other, splits, out_dir=tmp_path / "r", budget=TINY, stages=(stage,))
    assert stage.calls == 1
    with torch.no_grad():
        other[-1].bias[0] += 1e-6
    run_audit(other, splits, out_dir=tmp_path / "r", budget=TINY, stages=(stage,))
    assert stage.calls == 2


def test_a_new_library_version_reruns_the_stages(setup, tmp_path, monkeypatch):
    model, splits = setup
    stage = Counting()
    run_audit(model, splits, out_dir=tmp_path / "r", budget=TINY, stages=(stage,))
    run_audit(model, splits, out_dir=tmp_path / "r", budget=TINY, stages=(stage,))
    assert stage.calls == 1
    monkeypatch.setattr(hardened, "__version__", hardened.__version__ + ".post1")
    run_audit(model, splits, out_dir=tmp_path / "r", budget=TINY, stages=(stage,))
    assert stage.calls == 2


def test_only_a_knob_in_the_stages_own_slice_reruns_it(setup, tmp_path):
    model, splits = setup
    stage = Counting()
    run_audit(model, splits, out_dir=tmp_path / "r", budget=TINY, stages=(stage,))
    other_knobs = dataclasses.replace(TINY, name="renamed", pgd_steps=TINY.pgd_steps + 1, n_certify=1)
    run_audit(model, splits, out_dir=tmp_path / "r", budget=other_knobs, stages=(stage,))
    assert stage.calls == 1
    run_audit(model, splits, out_dir=tmp_path / "r", budget=dataclasses.replace(TINY, n_eval=TINY.n_eval - 1),
              stages=(stage,))
    assert stage.calls == 2


def test_a_changed_requirement_reruns_the_stage_that_reads_it(setup, tmp_path):
    model, splits = setup
    runs = []

    class Late(Stage[NoBudget]):
        name, title, requires = "late", "Late", ("counting",)

        def run(self, ctx):
            runs.append(1)
            return StageOutput()

    early = Counting()
    run_audit(model, splits, out_dir=tmp_path / "r", budget=TINY, stages=(early, Late()))
    run_audit(model, splits, out_dir=tmp_path / "r", budget=TINY, stages=(early, Late()))
    assert runs == [1]
    run_audit(model, splits, out_dir=tmp_path / "r", budget=dataclasses.replace(TINY, n_eval=3),
              stages=(early, Late()))
    assert early.calls == 2 and runs == [1, 1]


@pytest.mark.parametrize("name", ["../../secret.png", "../../../../../../../../etc/passwd", "ABSOLUTE"])
def test_a_cached_figure_outside_the_figures_folder_is_never_read(setup, tmp_path, name):
    """Issue 17 #3: a prepared stages/*.json (valid key) naming a file outside is refused."""
    model, splits = setup
    secret = tmp_path / "secret.png"
    secret.write_bytes(SECRET)
    name = str(secret) if name == "ABSOLUTE" else name
    folder = tmp_path / "audit" / "report"
    stage = Counting()
    run_audit(model, splits, out_dir=folder, budget=TINY, stages=(stage,))
    cache_file = folder / "stages" / "counting.json"
    stored = json.loads(cache_file.read_text())
    stored["result"]["figures"] = {"A figure": name}
    cache_file.write_text(json.dumps(stored))
    result = run_audit(model, splits, out_dir=folder, budget=TINY, stages=(stage,))
    assert stage.calls == 2, "the stage must re-run rather than trust the prepared cache"
    assert result.stage("counting").figures == {"A figure": "counting.png"}
    page = (folder / "index.html").read_text()
    assert base64.b64encode(SECRET).decode() not in page


def test_the_report_refuses_figure_names_that_leave_the_folder(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(SECRET)
    figures = tmp_path / "report" / "figures"
    figures.mkdir(parents=True)
    (figures / "fine.png").write_bytes(b"\x89PNG fine")
    (figures / "link.png").symlink_to(secret)
    stage = StageResult("s", "S", "ok", 0.0, figures={"up": "../../secret.png", "abs": str(secret),
                                                       "link": "link.png", "fine": "fine.png"})
    from hardened.audit import AuditResult

    page = render_audit_html(AuditResult(2, "m", "d", "b", 0, "v", (stage,), 0.0), figures)
    assert base64.b64encode(SECRET).decode() not in page
    assert page.count("outside the report folder") == 3
    assert base64.b64encode(b"\x89PNG fine").decode() in page


def test_budget_slice_takes_named_knobs_and_defaults():
    @dataclass(frozen=True)
    class Slice:
        n_eval: int
        extra: float = 0.5

    assert budget_slice(TINY, Slice) == Slice(TINY.n_eval, 0.5)

    @dataclass(frozen=True)
    class Unknown:
        nobody_sets_this: int

    with pytest.raises(ConfigError, match="nobody_sets_this"):
        budget_slice(TINY, Unknown)
    with pytest.raises(ConfigError, match="dataclass"):
        budget_slice(TINY, dict)
