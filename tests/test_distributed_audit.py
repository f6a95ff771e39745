"""A 2-rank gloo audit (robustness cascade and certificates split over the ranks) against one process.

Equal, and why: ``audit.json`` is equal field for field but every ``seconds`` (measured time).
The clean stage runs on rank 0 alone (the same computation as one process); the cascade's
batches of 64 images are split over the ranks and every rank folds all batch records in order
(the batch size does not depend on the number of ranks, and each attack is seeded per batch as in
one process), so robust accuracies, contributions, adversarials and masking findings are
equal; the minimal-eps bisection and the one-step curves run on every rank, as in one process;
each certified image draws its noise from ``(seed, image index)``, so the merged records, and
the summary made from them, are equal. The figures are drawn by rank 0 from those numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from dist_spawn import once_per_session, spawn_two
from dist_workers import audit_toy, audited, toy_model, train_toy


def _timeless(value: Any) -> Any:
    """``value`` without the keys that hold measured time."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _build(folder: Path) -> None:
    torch.set_num_threads(1)
    torch.save(train_toy("standard").state_dict(), folder / "model.pt")
    assert spawn_two(audited, folder) == [0, 3], "a rank of the audit failed: see its output above"


@pytest.fixture(scope="module")
def two_rank_audit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return once_per_session(tmp_path_factory, "two-rank-audit", _build)


def test_two_rank_audit_equals_one_process_but_the_seconds(two_rank_audit: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = toy_model()
    model.load_state_dict(torch.load(two_rank_audit / "model.pt", weights_only=True))
    audit_toy(model, tmp_path / "audit")
    single, ranked = (json.loads((folder / "audit" / "audit.json").read_text(encoding="utf-8"))
                      for folder in (tmp_path, two_rank_audit))
    assert [s["status"] for s in ranked["stages"]] == ["ok", "ok", "ok"], [s["message"] for s in ranked["stages"]]
    assert _timeless(ranked) == _timeless(single)
    assert ranked != single  # the seconds differ: the ranks' audit was really measured
    robustness = ranked["stages"][1]["data"]
    assert any(c["attacked"] for r in robustness["cascades"]["linf"] for c in r["contributions"])  # it attacked
    assert sorted(p.name for p in (two_rank_audit / "audit" / "figures").iterdir()) == sorted(
        p.name for p in (tmp_path / "audit" / "figures").iterdir())


def test_every_rank_gets_rank_0s_result_and_only_rank_0_wrote(two_rank_audit: Path) -> None:
    verdicts = [(two_rank_audit / f"verdict-{r}.txt").read_text(encoding="utf-8") for r in (0, 1)]
    assert verdicts[0] == verdicts[1] and verdicts[0]
    audit = two_rank_audit / "audit"
    assert sorted(p.name for p in (audit / "stages").iterdir()) == ["certify.json", "clean.json", "robustness.json"]
    assert not list(audit.rglob("rank1-figures"))  # rank 1's scratch figures went with the work folders


def test_a_rank_that_dies_mid_audit_gives_rank_0_one_error_and_leaves_whole_files(two_rank_audit: Path) -> None:
    kind, message = json.loads((two_rank_audit / "killed-audit-error.json").read_text(encoding="utf-8"))
    assert kind == "DistributedError", message
    assert message.startswith("cascade settings check failed on rank 0: another rank stopped or timed out")
    audit = two_rank_audit / "killed-audit"
    assert not (audit / "audit.json").exists() and not (audit / "index.html").exists()
    assert sorted(p.name for p in (audit / "stages").glob("*.json")) == ["clean.json"]  # finished before
    assert json.loads((audit / "stages" / "clean.json").read_text(encoding="utf-8"))["result"]["status"] == "ok"
