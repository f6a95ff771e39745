"""torch.distributed helpers, and 2-rank gloo runs (spawned, meeting at a store file) against one process.

Tolerance of the training equality, for every method: each image draws its random start, noise
or pool pick from its own stream seeded by (seed, epoch, image index), so the ranks draw what
one process draws; the ranks' gradients are summed with weights ``local / global batch`` in
float32, a different order of additions than one process, so the weights are equal within
``1e-5`` (absolute, after 3 to 6 SGD steps; measured at most 3e-8), not bit for bit. The sharded cascade equals one process exactly (adversarials, margins, per-sample
verdicts, contributions but their seconds). Certification merged from 2 shards equals one process record for record (all fields
but the measured ``seconds``) and the settings file byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dist_spawn import once_per_session, spawn_two
from dist_workers import (
    BATCH,
    TRAINED,
    cascade_toy,
    certified_model,
    certify_toy,
    killed_certify,
    scenarios,
    toy_data,
    toy_model,
    train_toy,
)
from hardened._util.digests import model_digest
from hardened._util.seeding import ImageStreams, draw_per_image
from hardened.certify.runs import SampleRecord, merge_shards, read_records, shard_log_path
from hardened.distributed import (
    check_same_settings,
    drop_option,
    env_world,
    merge_by_index,
    settings_digest,
    shard_bounds,
)
from hardened.errors import ConfigError, DataError, DistributedError
from hardened.threat import ThreatModel
from hardened.train import Trainer


@given(st.integers(0, 500), st.integers(1, 17))
def test_shards_cover_every_index_once_and_differ_by_at_most_one(n: int, size: int) -> None:
    bounds = [shard_bounds(n, rank, size) for rank in range(size)]
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(n))
    lengths = [stop - start for start, stop in bounds]
    assert max(lengths) - min(lengths) <= 1


def test_an_image_draws_the_same_numbers_in_any_batch_and_any_slice() -> None:
    threat = ThreatModel("l2", 0.5)
    x = torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    whole = ImageStreams(7, (3, 1), [5, 9, 2, 7])
    first = draw_per_image(threat.random_start, x, whole)
    second = draw_per_image(threat.random_start, x, whole)  # each image's stream goes on
    part = ImageStreams(7, (3, 1), [2, 7])
    assert torch.equal(draw_per_image(threat.random_start, x[2:], part), first[2:])
    assert torch.equal(draw_per_image(threat.random_start, x[2:], part), second[2:])
    assert not torch.equal(first, second)
    other_epoch = ImageStreams(7, (3, 2), [5, 9, 2, 7])
    assert not torch.equal(draw_per_image(threat.random_start, x, other_epoch), first)
    fresh = ImageStreams(7, (3, 1), [5, 9, 2, 7])
    head, tail = fresh[:1], fresh[1:]  # slices share the images' streams
    assert torch.equal(torch.cat([draw_per_image(threat.random_start, x[:1], head),
                                  draw_per_image(threat.random_start, x[1:], tail)]), first)
    box = ThreatModel("linf", 0.1)
    assert draw_per_image(box.random_start, x[:0], ImageStreams(7, (3, 1), [])).shape == (0, 1, 3, 3)


def test_bad_shard_and_bad_environment_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="rank 2 of 2"):
        shard_bounds(10, 2, 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match="inconsistent"):
        env_world()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ConfigError, match="RANK='one'"):
        env_world()


def test_settings_digest_ignores_key_order_and_sees_values() -> None:
    assert settings_digest({"a": 1, "b": [2, 3]}) == settings_digest({"b": [2, 3], "a": 1})
    assert settings_digest({"a": 1}) != settings_digest({"a": 2})
    check_same_settings({"a": 1})  # one process: nothing to disagree with


def test_merge_by_index_sorts_and_refuses_overlap() -> None:
    class R:
        def __init__(self, index: int) -> None:
            self.index = index

    merged = merge_by_index([[R(2), R(0)], [R(1)]])
    assert [r.index for r in merged] == [0, 1, 2]
    with pytest.raises(DistributedError, match="index 1"):
        merge_by_index([[R(1)], [R(1)]])


def test_drop_option_removes_both_spellings() -> None:
    assert drop_option(["--nproc", "2", "--epochs", "3", "--nproc=4", "--nprocx"], "--nproc") == [
        "--epochs", "3", "--nprocx"]


def test_merge_names_an_incomplete_shard(tmp_path: Path) -> None:
    log = tmp_path / "samples.jsonl"
    with pytest.raises(DataError, match="shard 0 of 2"):
        merge_shards(log, 2)


def _build(folder: Path) -> None:
    """A killed sharded certification, then the scenarios (which resume it) in a second job."""
    codes = spawn_two(killed_certify, folder)
    shard0, shard1 = (shard_log_path(folder / "certify" / "samples.jsonl", r, 2) for r in (0, 1))
    killed = {"codes": codes, "shard0": [r.index for r in read_records(shard0)],
              "shard1": [r.index for r in read_records(shard1)],
              "merged": (folder / "certify" / "samples.jsonl").exists()}
    (folder / "killed.json").write_text(json.dumps(killed), encoding="utf-8")
    assert spawn_two(scenarios, folder) == [0, 0], "a rank of the scenarios failed: see its output above"


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return once_per_session(tmp_path_factory, "two-ranks", _build)


def _result(folder: Path) -> dict[str, object]:
    return json.loads((folder / "result.json").read_text(encoding="utf-8"))


def test_two_ranks_run_on_gloo(two_rank_run: Path) -> None:
    assert _result(two_rank_run)["world"] == [0, 2, "gloo"]


@pytest.mark.parametrize("method", TRAINED)
def test_two_rank_training_equals_one_process_with_the_same_global_batch(two_rank_run: Path, method: str) -> None:
    """Every method, random starts, noise and pool picks included (per-image streams)."""
    torch.set_num_threads(1)
    epochs = 2 if method in ("standard", "pgd") else 1
    single = train_toy(method, epochs=epochs).state_dict()
    ranked = torch.load(two_rank_run / f"{method}.pt", weights_only=True)
    assert single.keys() == ranked.keys()
    for key in single:
        torch.testing.assert_close(ranked[key], single[key], atol=1e-5, rtol=0)
    other_seed = train_toy(method, epochs=epochs, seed=1).state_dict() if method != "standard" else toy_model().state_dict()
    assert any((v - other_seed[k]).abs().max() > 1e-3 for k, v in ranked.items())  # the test can fail


def test_resume_with_another_world_size_is_refused(two_rank_run: Path) -> None:
    from dist_workers import toy_model
    from hardened.train import TrainConfig

    trainer = Trainer(toy_model(), toy_data(), config=TrainConfig(epochs=2, batch_size=BATCH, lr=0.05,
                      optimizer="sgd", momentum=0.9, eval_n=0), checkpoint_dir=two_rank_run / "ckpt-standard")
    with pytest.raises(ConfigError, match="written by 2 process"):
        trainer.fit(resume=True)


def test_killed_rank_left_whole_records_and_no_merged_file(two_rank_run: Path) -> None:
    killed = json.loads((two_rank_run / "killed.json").read_text(encoding="utf-8"))
    assert killed["codes"] == [0, 3]  # rank 1 died (exit 3); rank 0 reported it and ended cleanly
    done = killed["shard1"]  # rank 1's shard is 5..9; it died a few forward passes in
    assert 0 < len(done) < 5 and done == list(range(5, 5 + len(done)))
    assert killed["shard0"] == [0, 1, 2, 3, 4]  # rank 0's own shard is whole
    assert killed["merged"] is False


def test_a_rank_that_dies_gives_rank_0_one_clear_error(two_rank_run: Path) -> None:
    kind, message = json.loads((two_rank_run / "rank0-error.json").read_text(encoding="utf-8"))
    assert kind == "DistributedError", message
    assert message.startswith("waiting for every rank to finish its certification shard failed on rank 0: "
                              "another rank stopped or timed out")
    assert "re-launch: finished work resumes" in message


def test_sharded_certify_resumed_after_a_kill_equals_one_process(two_rank_run: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    assert _result(two_rank_run)["certify_records"] == 10
    single = certify_toy(certified_model(), tmp_path)
    merged_dir = two_rank_run / "certify"
    merged = read_records(merged_dir / "samples.jsonl")
    assert [r.result_key() for r in merged] == [r.result_key() for r in single.records]
    assert (merged_dir / "samples.settings.json").read_bytes() == (tmp_path / "samples.settings.json").read_bytes()
    lines = [json.loads(line) for line in (merged_dir / "samples.jsonl").read_text().splitlines()]
    assert [SampleRecord.from_dict(d) for d in lines] == merged


def test_ranks_with_different_settings_are_refused(two_rank_run: Path) -> None:
    kind, message = _result(two_rank_run)["mismatch"]  # type: ignore[misc]
    assert kind == "ConfigError", message
    assert "disagree on the certify settings" in message
    assert not (two_rank_run / "mismatch" / "samples.jsonl").exists()


def test_sharded_cascade_equals_one_process(two_rank_run: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = toy_model()  # the weights the ranks trained and attacked
    model.load_state_dict(torch.load(two_rank_run / "standard.pt", weights_only=True))
    single = cascade_toy(model, tmp_path / "cascade")
    ranked = torch.load(two_rank_run / "cascade.pt", weights_only=True)
    seen = _result(two_rank_run)["cascade"]
    assert torch.equal(ranked["x_adv"], single.x_adv)
    assert torch.equal(ranked["robust"], single.robust)
    assert torch.equal(ranked["margin"], single.margin)
    assert seen["broken_by"] == list(single.broken_by)  # type: ignore[index]
    strip = [{k: v for k, v in c.to_dict().items() if k != "seconds"} for c in single.contributions]
    assert [{k: v for k, v in c.items() if k != "seconds"} for c in seen["contributions"]] == strip  # type: ignore[index]
    assert seen["resumed"] == 0  # type: ignore[index]
    assert sorted(p.name for p in (two_rank_run / "cascade").glob("*.pt")) == sorted(
        p.name for p in (tmp_path / "cascade").glob("*.pt"))


@pytest.mark.parametrize("method", TRAINED)
def test_every_method_trains_on_two_ranks_and_the_ranks_stay_in_step(two_rank_run: Path, method: str) -> None:
    digests = [json.loads((two_rank_run / f"digests-{r}.json").read_text(encoding="utf-8"))[method] for r in (0, 1)]
    assert digests[0] == digests[1]
    assert digests[0] != model_digest(toy_model())  # it trained


def test_two_rank_training_resumed_at_the_same_world_size_equals_the_uninterrupted_run(two_rank_run: Path) -> None:
    whole = torch.load(two_rank_run / "pgd.pt", weights_only=True)
    resumed = torch.load(two_rank_run / "pgd-resumed.pt", weights_only=True)
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key  # same world, same order of sums: bit for bit


@pytest.mark.parametrize("code", [0, 3])
def test_audit_nproc_relaunches_under_torchrun_before_taking_the_lock(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: int) -> None:
    from typer.testing import CliRunner

    from hardened.cli.main import app

    calls: list[tuple[int, str, tuple[int, ...]]] = []

    def relaunch(nproc: int, command: str, passthrough: tuple[int, ...] = ()) -> int:
        calls.append((nproc, command, tuple(passthrough)))
        return code

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr("hardened.cli._launch.relaunch_with_torchrun", relaunch)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["audit", "--data", "digits", "--nproc", "2", "--out", str(out)])
    assert result.exit_code == code, result.output
    assert calls == [(2, "audit", (3,))]  # the audit's "some section skipped" code comes through
    assert not out.exists()  # no lock taken, nothing trained or written here: the ranks do it


def test_relaunch_drops_nproc_and_a_failed_rank_is_a_distributed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from hardened.distributed import launch_torchrun, relaunch_with_torchrun

    seen: list[list[str]] = []
    monkeypatch.setattr("torch.distributed.run.main", lambda args: seen.append(list(args)))
    assert relaunch_with_torchrun(2, "audit", ["--verbose", "audit", "--nproc", "2", "--out", "x"]) == 0
    assert seen == [["--standalone", "--nproc-per-node", "2", "-m", "hardened.cli.main", "--", "audit", "--out", "x"]]
    with pytest.raises(ConfigError, match="from Python, launch with torchrun"):
        relaunch_with_torchrun(2, "audit", ["train"])

    def failing(exitcodes: dict[int, int]) -> object:
        def main(args: list[str]) -> None:
            raise ChildFailedError("hardened.cli.main", {
                rank: ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=c, error_file="") for rank, c in exitcodes.items()})
        return main

    monkeypatch.setattr("torch.distributed.run.main", failing({0: 3}))
    assert launch_torchrun(2, ["audit"], passthrough=(3,)) == 3
    monkeypatch.setattr("torch.distributed.run.main", failing({1: -9}))
    with pytest.raises(DistributedError, match=r"the 2-process run failed \(rank 1: exit code -9\)"):
        launch_torchrun(2, ["audit"], passthrough=(3,))
