"""torch.distributed helpers, and 2-rank gloo runs (spawned on 127.0.0.1) against one process.

Tolerance of the training equality: the ranks' gradients are summed with weights
``local / global batch`` in float32, a different order of additions than one process; the
weights are therefore equal within ``1e-5`` (absolute, after 6 SGD steps; measured ~1e-7), not
bit for bit. The sharded cascade equals one process exactly (adversarials, margins, per-sample
verdicts, contributions but their seconds). Certification merged from 2 shards equals one process record for record (all fields
but the measured ``seconds``) and the settings file byte for byte.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st

from dist_workers import (
    BATCH,
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
from hardened.train import Trainer


@given(st.integers(0, 500), st.integers(1, 17))
def test_shards_cover_every_index_once_and_differ_by_at_most_one(n: int, size: int) -> None:
    bounds = [shard_bounds(n, rank, size) for rank in range(size)]
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(n))
    lengths = [stop - start for start, stop in bounds]
    assert max(lengths) - min(lengths) <= 1


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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _spawn(fn: object, folder: Path, timeout_s: float = 120.0) -> None:
    """Run ``fn(rank, port, folder)`` in 2 spawned processes; fail (and stop them) after ``timeout_s``."""
    context = mp.spawn(fn, args=(_free_port(), str(folder)), nprocs=2, join=False)  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"the 2-rank run did not finish in {timeout_s:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A killed sharded certification, then the scenarios (which resume it) in a second job."""
    folder = tmp_path_factory.mktemp("two-ranks")
    with pytest.raises(mp.ProcessExitedException):
        _spawn(killed_certify, folder)
    shard1 = shard_log_path(folder / "certify" / "samples.jsonl", 1, 2)
    killed = {"shard1": [r.index for r in read_records(shard1)],
              "merged": (folder / "certify" / "samples.jsonl").exists()}
    (folder / "killed.json").write_text(json.dumps(killed), encoding="utf-8")
    _spawn(scenarios, folder)
    return folder


def _result(folder: Path) -> dict[str, object]:
    return json.loads((folder / "result.json").read_text(encoding="utf-8"))


def test_two_ranks_run_on_gloo(two_rank_run: Path) -> None:
    assert _result(two_rank_run)["world"] == [0, 2, "gloo"]


@pytest.mark.parametrize("method", ["standard", "pgd"])
def test_two_rank_training_equals_one_process_with_the_same_global_batch(two_rank_run: Path, method: str) -> None:
    torch.set_num_threads(1)
    single = train_toy(method).state_dict()
    ranked = torch.load(two_rank_run / f"{method}.pt", weights_only=True)
    assert single.keys() == ranked.keys()
    for key in single:
        torch.testing.assert_close(ranked[key], single[key], atol=1e-5, rtol=0)
    assert any(not torch.equal(v, train_toy(method, epochs=1).state_dict()[k]) for k, v in ranked.items())


def test_resume_with_another_world_size_is_refused(two_rank_run: Path) -> None:
    from dist_workers import toy_model
    from hardened.train import TrainConfig

    trainer = Trainer(toy_model(), toy_data(), config=TrainConfig(epochs=2, batch_size=BATCH, lr=0.05,
                      optimizer="sgd", momentum=0.9, eval_n=0), checkpoint_dir=two_rank_run / "ckpt-standard")
    with pytest.raises(ConfigError, match="written by 2 process"):
        trainer.fit(resume=True)


def test_killed_rank_left_whole_records_and_no_merged_file(two_rank_run: Path) -> None:
    killed = json.loads((two_rank_run / "killed.json").read_text(encoding="utf-8"))
    done = killed["shard1"]  # rank 1's shard is 5..9; it died a few forward passes in
    assert 0 < len(done) < 5 and done == list(range(5, 5 + len(done)))
    assert killed["merged"] is False


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


@pytest.mark.parametrize("method", ["fgsm", "trades", "noise", "ensemble", "semi-supervised"])
def test_every_method_trains_on_two_ranks_and_the_ranks_stay_in_step(two_rank_run: Path, method: str) -> None:
    digests = _result(two_rank_run)["methods"][method]  # type: ignore[index]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert digests[0] != model_digest(toy_model())  # it trained


def test_two_rank_training_resumed_at_the_same_world_size_equals_the_uninterrupted_run(two_rank_run: Path) -> None:
    whole = torch.load(two_rank_run / "pgd.pt", weights_only=True)
    resumed = torch.load(two_rank_run / "pgd-resumed.pt", weights_only=True)
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key  # same world, same order of sums: bit for bit
