"""Certify a dataset with randomized smoothing, one JSON line per sample, resumable.

Each sample ``i`` draws its noise from its own generator seeded with ``mix_seed(seed, i)``, so
a run killed at any point and restarted with the same settings continues after the last finished
sample and ends with exactly the results of an uninterrupted run (no sample lost or counted
twice). The settings (and fingerprints of the model and the data) are kept beside the log in
``<log>.settings.json``; a restart with other settings is refused.

Sharded runs (``torchrun``): rank ``r`` of ``w`` certifies its contiguous slice of the indices
(``shard=(r, w)``) into its own resumable log ``shards/rank<r>-of-<w>/samples.jsonl``, and rank 0
merges the shards with ``merge_shards`` into the ``samples.jsonl`` and settings file a single
process writes. Because of the per-sample seeds the merged records equal the single-process
records field for field except the measured ``seconds``.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from hardened._util.atomic import append_jsonl, write_json, write_text
from hardened._util.batching import eval_mode
from hardened._util.checks import check_images, check_labels, check_model_output
from hardened._util.digests import model_digest, tensor_digest
from hardened._util.lock import lock_output_dir
from hardened._util.progress import progress_bar
from hardened._util.records import RecordReader, read_json_object
from hardened._util.seeding import make_generator, mix_seed
from hardened.certify.smoothing import (
    DEFAULT_ALPHA,
    DEFAULT_N,
    DEFAULT_N0,
    auto_batch_size,
    certify,
    check_certify_settings,
)
from hardened.distributed import barrier, check_same_settings, merge_by_index, shard_bounds, world
from hardened.errors import ConfigError, DataError

__all__ = [
    "SampleRecord",
    "CertifyRun",
    "certify_dataset",
    "certify_sharded",
    "merge_shards",
    "read_records",
    "settings_path",
    "shard_log_path",
]

_FORMAT = 1


@dataclass(frozen=True)
class SampleRecord:
    """One certified sample: its index in the data, label, certificate and timing.

    ``prediction`` is ``None`` when the certificate abstained; ``correct`` means a returned
    prediction equals the label (an abstention is never correct); ``radius`` is 0.0 when abstained.
    """

    index: int
    label: int
    prediction: int | None
    radius: float
    correct: bool
    pa_lower: float
    counts: tuple[int, ...]
    seconds: float

    @property
    def abstained(self) -> bool:
        return self.prediction is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"abstained": self.abstained, "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleRecord:
        prediction = data.get("prediction")
        return cls(
            index=int(data["index"]),
            label=int(data["label"]),
            prediction=None if prediction is None else int(prediction),
            radius=float(data["radius"]),
            correct=bool(data["correct"]),
            pa_lower=float(data["pa_lower"]),
            counts=tuple(int(c) for c in data["counts"]),
            seconds=float(data["seconds"]),
        )

    def result_key(self) -> tuple[Any, ...]:
        """Everything but the timing: equal keys mean identical results."""
        return (self.index, self.label, self.prediction, self.radius, self.correct,
                self.pa_lower, self.counts)


@dataclass(frozen=True)
class CertifyRun:
    """All records of a run (sorted by index) and its settings."""

    records: tuple[SampleRecord, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    resumed_from: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "resumed_from": self.resumed_from,
            "records": [r.to_dict() for r in self.records],
        }


def settings_path(log_path: str | os.PathLike[str]) -> Path:
    """``results/samples.jsonl`` -> ``results/samples.settings.json``."""
    path = Path(log_path)
    return path.with_name(path.stem + ".settings.json")


def read_records(log_path: str | os.PathLike[str], *, repair: bool = False) -> list[SampleRecord]:
    """Records of a JSON-lines log. A truncated last line (a run killed mid-write) is dropped,
    and with ``repair=True`` removed from the file; a corrupt line elsewhere is a ``DataError``."""
    path = Path(log_path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records: list[SampleRecord] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(SampleRecord.from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
            if number == len(lines):
                if repair:
                    good = "".join(text + "\n" for text in lines[:-1])
                    write_text(path, good)
                break
            raise DataError(
                f"{path} line {number} is corrupt ({error}); delete the file to start the run over"
            ) from error
    return records


def _check_settings(path: Path, settings: dict[str, Any], batch_size_given: bool) -> dict[str, Any]:
    stored = read_json_object(
        path, DataError, f"; delete {path.name} and the log beside it to start the run over, or use another output folder"
    )
    if not batch_size_given:
        stored_size = RecordReader(stored, str(path), DataError).integer("batch_size", 1, 2**31)
        settings = {**settings, "batch_size": stored_size}
    differ = [
        f"{key}: {stored.get(key)!r} then, {settings.get(key)!r} now"
        for key in sorted(set(stored) | set(settings))
        if stored.get(key) != settings.get(key)
    ]
    if differ:
        raise ConfigError(
            f"{path.parent} holds a run with other settings ({'; '.join(differ)}); resume with the "
            "same model, data and settings, or use another output folder"
        )
    return settings


def certify_dataset(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    sigma: float,
    n0: int = DEFAULT_N0,
    n: int = DEFAULT_N,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    batch_size: int | None = None,
    log_path: str | os.PathLike[str] | None = None,
    progress: bool = False,
    bounds: tuple[float, float] = (0.0, 1.0),
    shard: tuple[int, int] | None = None,
) -> CertifyRun:
    """Certify every image of ``x`` (N×C×H×W) with labels ``y`` (N,), sample by sample.

    With ``log_path`` each finished sample is appended to that JSON-lines file (flushed and
    fsynced) and a restart with the same arguments resumes after the finished samples. Sample
    ``i`` uses ``mix_seed(seed, i)``, so results do not depend on where a run was resumed.
    ``shard=(rank, world)`` certifies only that rank's contiguous slice of the indices (its
    records keep their global index); the settings then record the shard.
    """
    sigma, n0, n, alpha, batch_size = check_certify_settings(sigma, n0, n, alpha, batch_size)
    x = check_images(x, bounds, allow_empty=True)
    y = check_labels(y, x.shape[0])
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    with eval_mode(model):
        if x.shape[0]:
            num_classes = int(check_model_output(model, x[:1]).shape[1])
            check_labels(y, x.shape[0], num_classes)
        size = batch_size if batch_size is not None else (
            auto_batch_size(model, x[:1], max(n0, n)) if x.shape[0] else 1
        )
    settings: dict[str, Any] = {
        "format": _FORMAT,
        "method": "smoothing",
        "sigma": float(sigma),
        "n0": n0,
        "n": n,
        "alpha": float(alpha),
        "seed": seed,
        "batch_size": size,
        "num_samples": int(x.shape[0]),
        "data_sha256": tensor_digest({"x": x, "y": y}),
        "model_sha256": model_digest(model),
    }
    first, last = 0, int(x.shape[0])
    if shard is not None:
        first, last = shard_bounds(int(x.shape[0]), *shard)
        settings["shard"] = [int(shard[0]), int(shard[1])]
    # The folder of the log is locked for the run: a second run into it fails at once.
    lock = lock_output_dir(Path(log_path).parent) if log_path is not None else nullcontext()
    with lock:
        done: dict[int, SampleRecord] = {}
        if log_path is not None:
            log = Path(log_path)
            meta = settings_path(log)
            if meta.is_file():
                settings = _check_settings(meta, settings, batch_size is not None)
                size = int(settings["batch_size"])
            elif log.is_file() and log.stat().st_size > 0:
                raise ConfigError(
                    f"{log} exists without its settings file {meta.name}; delete it or use another output folder"
                )
            else:
                write_json(meta, settings)
            for record in read_records(log, repair=True):
                if not first <= record.index < last:
                    raise DataError(f"{log} holds sample {record.index} outside this run's images {first}..{last - 1}")
                done.setdefault(record.index, record)
        resumed_from = len(done)
        todo = [i for i in range(first, last) if i not in done]
        with progress_bar(len(todo), f"certify sigma={sigma:g} n={n}", progress) as bar:
            for index in todo:
                generator = make_generator(mix_seed(seed, index), x.device)
                cert = certify(model, x[index : index + 1], sigma, n0, n, alpha, batch_size=size,
                               generator=generator, bounds=bounds)
                label = int(y[index])
                record = SampleRecord(
                    index=index,
                    label=label,
                    prediction=cert.prediction,
                    radius=cert.radius,
                    correct=cert.prediction == label,
                    pa_lower=cert.pa_lower,
                    counts=cert.counts,
                    seconds=cert.seconds,
                )
                done[index] = record
                if log_path is not None:
                    append_jsonl(log_path, record.to_dict())
                bar.advance(1)
    records = tuple(done[i] for i in sorted(done))
    return CertifyRun(records=records, settings=settings, resumed_from=resumed_from)


def shard_log_path(log_path: str | os.PathLike[str], rank: int, world: int) -> Path:
    """``OUT/samples.jsonl`` -> ``OUT/shards/rank<rank>-of-<world>/samples.jsonl`` (own folder, own lock)."""
    path = Path(log_path)
    return path.parent / "shards" / f"rank{rank}-of-{world}" / path.name


def merge_shards(log_path: str | os.PathLike[str], world: int) -> CertifyRun:
    """Merge the ``world`` shard logs of ``log_path`` into ``log_path`` and its settings file.

    The shards must be complete and agree on every setting but the shard; the merged log holds
    the records in index order, exactly the lines a single process appends, and the settings file
    equals the single-process one. Both are written atomically, so a failed merge leaves the
    previous files whole. ``DataError`` names a missing or incomplete shard.
    """
    if world < 1:
        raise ConfigError(f"world must be at least 1 process, got {world}")
    target = Path(log_path)
    parts: list[list[SampleRecord]] = []
    common: dict[str, Any] | None = None
    for rank in range(world):
        shard_log = shard_log_path(target, rank, world)
        meta = settings_path(shard_log)
        if not meta.is_file():
            raise DataError(f"shard {rank} of {world} has no settings file {meta}; re-launch the run to finish it")
        settings = read_json_object(meta, DataError, "; delete the shard folder to recompute it")
        settings = {k: v for k, v in settings.items() if k != "shard"}
        if common is None:
            common = settings
        elif settings != common:
            raise DataError(f"shard {rank} of {world} ({meta}) was certified with other settings than shard 0")
        records = list({r.index: r for r in reversed(read_records(shard_log))}.values())
        first, last = shard_bounds(int(settings["num_samples"]), rank, world)
        if sorted(r.index for r in records) != list(range(first, last)):
            raise DataError(
                f"shard {rank} of {world} ({shard_log}) holds {len(records)} of its {last - first} samples; "
                "re-launch the run to finish it"
            )
        parts.append(records)
    merged = merge_by_index(parts)
    meta = settings_path(target)
    if meta.is_file():
        _check_settings(meta, common or {}, True)
    write_json(meta, common or {})
    write_text(target, "".join(json.dumps(r.to_dict()) + "\n" for r in merged))
    return CertifyRun(records=tuple(merged), settings=common or {})


def certify_sharded(
    model: nn.Module, x: Tensor, y: Tensor, *, log_path: str | os.PathLike[str], progress: bool = False,
    **settings: Any,
) -> CertifyRun | None:
    """``certify_dataset`` into ``log_path``, split over the ranks of a torchrun job.

    In one process this is ``certify_dataset``. In a job every rank first checks that all ranks
    share the settings, model and data (``check_same_settings``), certifies its shard into its own
    resumable log, waits for the others, and rank 0 merges the shards into ``log_path``
    (``merge_shards``); the other ranks return ``None``. ``settings`` are ``certify_dataset``'s.
    """
    info = world()
    if not info.distributed:
        return certify_dataset(model, x, y, log_path=log_path, progress=progress, **settings)
    check_same_settings(
        {**settings, "model": model_digest(model), "data": tensor_digest({"x": x, "y": y})}, "certify"
    )
    certify_dataset(model, x, y, log_path=shard_log_path(log_path, info.rank, info.size),
                    progress=progress and info.is_main, shard=(info.rank, info.size), **settings)
    barrier("waiting for every rank to finish its certification shard")
    return merge_shards(log_path, info.size) if info.is_main else None
