"""Atomic writes (fsync, stale temporaries) and output-folder locks (issue 17, items 16 and 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import hardened
import hardened._util.atomic as atomic
from hardened._util.atomic import remove_stale_temporaries, write_json, write_text
from hardened._util.lock import LOCK_NAME, lock_output_dir
from hardened.certify.runs import certify_dataset, settings_path
from hardened.errors import ConfigError, DataError

# children import this very copy of the package
ENV = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(hardened.__file__))}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_the_same_target_are_removed(tmp_path):
    target = tmp_path / "summary.json"
    dead = tmp_path / f".summary.json~{_dead_pid()}~abc123.tmp"
    legacy = tmp_path / ".summary.json.k2j4h5g6.safetensors.tmp"
    alive = tmp_path / f".summary.json~{os.getppid()}~zzz.tmp"  # a live writer: kept
    other = tmp_path / f".other.json~{_dead_pid()}~abc.tmp"  # another target: kept
    for path in (dead, legacy, alive, other):
        path.write_text("partial")
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert not dead.exists() and not legacy.exists()
    assert alive.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path / "other.json") == [other]


def test_a_killed_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from hardened._util.atomic import atomic_path
        with atomic_path({str(tmp_path / 'w.bin')!r}) as tmp:
            tmp.write_bytes(b'half')
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", script], env=ENV, check=False)
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and not (tmp_path / "w.bin").exists()
    write_text(tmp_path / "w.bin", "whole")
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]


def test_file_and_folder_are_fsynced_around_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_text(tmp_path / "t.txt", "x")
    assert events == ["fsync", "fsync", "replace", "fsync"]  # file, folder, rename, folder


_HOLD = textwrap.dedent("""
    import sys, time
    from hardened._util.lock import lock_output_dir
    with lock_output_dir(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def held(tmp_path):
    """Another process holding the lock on ``tmp_path / 'out'``."""
    folder = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    yield folder, child
    child.kill()
    child.wait()


def test_a_second_process_is_refused_at_once_and_a_kill_frees_the_lock(held):
    folder, child = held
    with pytest.raises(ConfigError, match=f"in use by another hardened run \\(process {child.pid}\\)"):
        with lock_output_dir(folder):
            pass
    child.kill()
    child.wait()
    with lock_output_dir(folder):  # the OS dropped the lock with the process (kill -9)
        pass


def test_locks_are_reentrant_in_one_process_and_tidy_when_nothing_was_written(tmp_path):
    folder = tmp_path / "new"
    with lock_output_dir(folder), lock_output_dir(folder):
        assert (folder / LOCK_NAME).is_file()
    assert not folder.exists()  # created for nothing: removed
    with lock_output_dir(folder):
        write_text(folder / "result.txt", "r")
    assert (folder / "result.txt").is_file()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        with lock_output_dir(tmp_path / "afile"):
            pass


def test_concurrent_certify_on_one_folder_is_refused(held):
    folder, _ = held
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="in use"):
        certify_dataset(model, x, y, sigma=0.25, n0=10, n=20, log_path=folder / "samples.jsonl")
    assert not (folder / "samples.jsonl").exists()


def test_concurrent_training_into_one_checkpoint_folder_is_refused(held):
    from hardened.train import TrainConfig, Trainer
    from helpers import blob_data, tiny_cnn

    folder, _ = held
    trainer = Trainer(tiny_cnn(), blob_data(), config=TrainConfig(epochs=1, eval_n=0), checkpoint_dir=folder)
    with pytest.raises(ConfigError, match="in use"):
        trainer.fit()


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", '{"batch_size": "abc"}', "\u00ff".encode("latin-1")])
def test_malformed_certify_settings_are_one_clear_error(tmp_path, content):
    log = tmp_path / "samples.jsonl"
    meta = settings_path(log)
    meta.write_bytes(content if isinstance(content, bytes) else content.encode())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(DataError, match="settings.json"):
        certify_dataset(model, torch.rand(1, 1, 2, 2), torch.tensor([0]), sigma=0.25, n0=10, n=20, log_path=log)
