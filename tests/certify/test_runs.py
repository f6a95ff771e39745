"""Dataset runs: resume after a kill gives the results of an uninterrupted run; summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from hardened._util.seeding import mix_seed
from hardened.certify import SampleRecord, certify_dataset, read_records, summarize
from hardened.certify.report import (
    comparison_markdown,
    comparison_table,
    default_radii,
    plot_certified_accuracy,
    summary_markdown,
)
from hardened.certify.runs import settings_path
from hardened.errors import ConfigError
from helpers import blob_data, tiny_cnn

SETTINGS = {"sigma": 0.25, "n0": 10, "n": 100, "alpha": 0.01, "seed": 3, "batch_size": 64}


class Killer:
    """Raises KeyboardInterrupt on the model's ``after``-th forward call (a run killed
    mid-sample); a hook on the same model, so its digest, checked on resume, is unchanged."""

    def __init__(self, model: nn.Module, after: int) -> None:
        self.model, self.after, self.calls = model, after, 0

    def __enter__(self) -> nn.Module:
        self.handle = self.model.register_forward_pre_hook(self._count)
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def _count(self, module: nn.Module, args: object) -> None:
        self.calls += 1
        if self.calls == self.after:
            raise KeyboardInterrupt


def keys(records: tuple[SampleRecord, ...] | list[SampleRecord]) -> list[tuple[object, ...]]:
    return [r.result_key() for r in records]


@pytest.fixture
def small() -> tuple[Tensor, Tensor, nn.Module]:
    data = blob_data(n=7)
    return data.x, data.y, tiny_cnn()


def test_resume_after_kill_equals_uninterrupted(tmp_path: Path, small) -> None:  # type: ignore[no-untyped-def]
    x, y, model = small
    full = certify_dataset(model, x, y, log_path=tmp_path / "full.jsonl", **SETTINGS)
    assert [r.index for r in full.records] == list(range(7)) and full.resumed_from == 0

    log = tmp_path / "killed.jsonl"
    # each sample takes a probe, 2 batches of selection+estimation...; kill somewhere in sample 4
    with pytest.raises(KeyboardInterrupt), Killer(model, after=20) as killed:
        certify_dataset(killed, x, y, log_path=log, **SETTINGS)
    finished = read_records(log)
    assert 0 < len(finished) < 7
    # and a half-written last line, as left by a kill during the write
    with open(log, "a", encoding="utf-8") as handle:
        handle.write('{"index": 5, "label": ')
    resumed = certify_dataset(model, x, y, log_path=log, **SETTINGS)
    assert resumed.resumed_from == len(finished)
    assert keys(resumed.records) == keys(full.records)
    lines = log.read_text().splitlines()
    assert len(lines) == 7 and sorted(json.loads(line)["index"] for line in lines) == list(range(7))
    # a third run has nothing left to do
    again = certify_dataset(model, x, y, log_path=log, **SETTINGS)
    assert again.resumed_from == 7 and keys(again.records) == keys(full.records)
    # no log: same results (per-sample seeds do not depend on the log)
    assert keys(certify_dataset(model, x, y, **SETTINGS).records) == keys(full.records)


def test_resume_with_other_settings_refused(tmp_path: Path, small) -> None:  # type: ignore[no-untyped-def]
    x, y, model = small
    log = tmp_path / "run.jsonl"
    certify_dataset(model, x[:2], y[:2], log_path=log, **SETTINGS)
    assert json.loads(settings_path(log).read_text())["sigma"] == 0.25
    with pytest.raises(ConfigError, match="sigma"):
        certify_dataset(model, x[:2], y[:2], log_path=log, **(SETTINGS | {"sigma": 0.5}))
    with pytest.raises(ConfigError, match="data_sha256"):
        certify_dataset(model, x[2:4], y[2:4], log_path=log, **SETTINGS)
    with pytest.raises(ConfigError, match="sigma"):  # validated before anything is written
        certify_dataset(model, x, y, log_path=tmp_path / "new.jsonl", **(SETTINGS | {"sigma": -1.0}))
    assert not (tmp_path / "new.jsonl").exists() and not settings_path(tmp_path / "new.jsonl").exists()


def test_mix_seed_distinct() -> None:
    seeds = {mix_seed(s, i) for s in range(3) for i in range(100)}
    assert len(seeds) == 300 and all(0 <= v < 2**63 for v in seeds)
    assert mix_seed(1, 2) == mix_seed(1, 2)


def record(index: int, label: int, prediction: int | None, radius: float) -> SampleRecord:
    return SampleRecord(index, label, prediction, radius, prediction == label, 0.9, (1, 2), 1.0)


def test_summary_hand_computed(tmp_path: Path) -> None:
    records = [
        record(0, 1, 1, 0.6),
        record(1, 1, 0, 0.3),  # certified but wrong
        record(2, 2, None, 0.0),  # abstained
        record(3, 0, 0, 0.2),
    ]
    summary = summarize(records, name="m", settings={"sigma": 0.25})
    assert summary.radii == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert summary.certified_accuracy == (0.5, 0.25, 0.25, 0.0, 0.0)
    assert summary.correct_certified == 2
    assert summary.average_radius_correct == pytest.approx(0.4)
    assert summary.average_radius_all == pytest.approx(0.2)
    assert summary.abstention_rate == 0.25
    assert summary.to_dict()["table"][0] == {"radius": 0.0, "certified_accuracy": 0.5}
    assert "| 0.25 | 25.0% |" in summary_markdown(summary)
    table = comparison_table([summary, summarize(records[:1], name="n", radii=summary.radii)])
    text = comparison_markdown(table)
    assert text.count("\n") == 4 and "| m | 4 | 2 | 0.400 | 0.200 | 25.0% | 50.0% |" in text
    path = plot_certified_accuracy([("m", records)], tmp_path / "curve.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert default_radii(1.3) == (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
    empty = summarize([])
    assert empty.num_samples == 0 and empty.average_radius_correct is None


def test_seconds_recorded(small) -> None:  # type: ignore[no-untyped-def]
    x, y, model = small
    run = certify_dataset(model, x[:1], y[:1], **SETTINGS)
    assert run.records[0].seconds > 0
    assert run.records[0].to_dict()["counts"] == list(run.records[0].counts)
    assert sum(run.records[0].counts) == SETTINGS["n"]
    assert torch.is_tensor(x)


@pytest.mark.parametrize("radii", [[-1.0, 0.5], [0.5, float("nan")], [float("inf")]])
def test_negative_or_non_finite_radii_are_refused(radii):
    from hardened.certify.report import check_radii, summarize

    with pytest.raises(ConfigError, match="radii"):
        check_radii(radii)
    with pytest.raises(ConfigError, match="radii"):
        summarize([], radii=radii)


@pytest.mark.parametrize("n", [10**8 + 1, 10**12])
def test_sample_counts_are_bounded(n):
    from hardened.certify.smoothing import MAX_SAMPLES, check_certify_settings

    assert check_certify_settings(0.25, 100, MAX_SAMPLES, 0.001)[2] == MAX_SAMPLES
    with pytest.raises(ConfigError, match="days per image"):
        check_certify_settings(0.25, 100, n, 0.001)
    with pytest.raises(ConfigError, match="days per image"):
        check_certify_settings(0.25, n, 1000, 0.001)
