"""``torch.distributed`` helpers: rank and world from the launcher, start-up and teardown,
seeded sharding, a settings-digest check across ranks, and the merge of per-rank records.

The processes are started by ``torchrun`` (``torch.distributed.run``), which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; nothing here schedules
processes. Gloo is the backend on CPU, NCCL on CUDA. Every rank computes the same global order
(the single-process order) and takes a contiguous slice of it, so results merged by index equal
those of one process (Li et al., "PyTorch Distributed", VLDB 2020, for the data-parallel scheme).

A collective that fails (a rank died, a timeout) raises ``DistributedError`` naming the step, so
rank 0 reports one clear line; everything written before is complete (atomic writes only).
Without torchrun, ranks can also meet through a store file (``process_group(init_method=
"file://...")``), which needs no free port: what the tests and the scale benchmark use.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from hardened._util.digests import sha256_hex
from hardened.errors import ConfigError, DistributedError

__all__ = [
    "WorldInfo",
    "all_gather_objects",
    "all_reduce_sum",
    "average_gradients",
    "barrier",
    "broadcast_parameters",
    "check_same_settings",
    "drop_option",
    "env_world",
    "from_rank0",
    "is_distributed",
    "launch_torchrun",
    "merge_by_index",
    "process_group",
    "relaunch_with_torchrun",
    "settings_digest",
    "shard",
    "shard_bounds",
    "world",
]

DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class WorldInfo:
    """This process's place among ``size`` processes (``rank`` 0 writes the merged outputs)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} must be an integer (set by torchrun)") from None


def env_world() -> WorldInfo:
    """Rank and world size from the launcher's environment (``RANK``/``WORLD_SIZE``); 0 of 1 without."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"RANK={rank} and WORLD_SIZE={size} are inconsistent; launch with torchrun")
    return WorldInfo(rank=rank, size=size, local_rank=_env_int("LOCAL_RANK", 0))


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> WorldInfo:
    """This process's rank and the world size: from the process group, else from the environment."""
    if dist.is_available() and dist.is_initialized():
        return WorldInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    return env_world()


@contextmanager
def process_group(
    device: torch.device | str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S, backend: str | None = None,
    init_method: str | None = None,
) -> Iterator[WorldInfo]:
    """Join the launcher's process group for the block (gloo on CPU, NCCL on CUDA, or ``backend``)
    and leave it; with NCCL each process uses the GPU of its ``LOCAL_RANK``.

    The ranks meet through ``MASTER_ADDR:MASTER_PORT`` (``env://``, what torchrun sets up), or
    through ``init_method`` (e.g. ``file:///shared/folder/store``: a file every rank sees, no
    port to pick). Without a launcher (``WORLD_SIZE`` unset or 1) nothing is started and the
    block runs as rank 0 of 1; an already initialised group is used as it is and left alone.
    """
    info = env_world()
    if not info.distributed or dist.is_initialized():
        yield world()
        return
    backend = backend or ("nccl" if torch.device(device).type == "cuda" else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    try:
        if init_method is None:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        else:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), init_method=init_method,
                                    rank=info.rank, world_size=info.size)
    except (RuntimeError, ValueError) as error:
        raise DistributedError(
            f"cannot join the process group as rank {info.rank} of {info.size} ({error}); "
            "launch with torchrun and check MASTER_ADDR/MASTER_PORT (--rdzv-endpoint)"
        ) from error
    try:
        yield world()
        # leave together: a rank that tears its gloo connections down while its peer still uses
        # them makes the peer abort ("terminate called without an active exception", seen as a
        # rank exiting with SIGABRT after all its work); a peer that is already gone ends this
        # wait at once with an error, and there is nothing left to wait for
        try:
            dist.barrier()
        except RuntimeError:
            pass
    finally:
        dist.destroy_process_group()


def _collective(what: str) -> Any:
    """A context that turns a failed collective into ``DistributedError`` naming ``what``."""

    @contextmanager
    def guard() -> Iterator[None]:
        try:
            yield
        except (RuntimeError, ConnectionError) as error:
            raise DistributedError(
                f"{what} failed on rank {dist.get_rank()}: another rank stopped or timed out ({error}); "
                "see that rank's output, then re-launch: finished work resumes"
            ) from error

    return guard()


def barrier(what: str = "barrier") -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        with _collective(what):
            dist.barrier()


def all_gather_objects(value: Any, what: str = "all-gather") -> list[Any]:
    """``[value of rank 0, value of rank 1, ...]`` (a one-item list in one process)."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    with _collective(what):
        dist.all_gather_object(gathered, value)
    return gathered


def from_rank0(value: Any, what: str = "broadcast") -> Any:
    """Rank 0's ``value`` on every rank (the others' ``value`` is ignored; ``value`` in one process).

    The other ranks wait for rank 0 up to the process group's timeout; a rank that dies instead
    is a ``DistributedError`` naming ``what``."""
    if not is_distributed():
        return value
    return all_gather_objects(value if dist.get_rank() == 0 else None, what)[0]


def all_reduce_sum(values: Sequence[float], what: str = "metric reduction") -> list[float]:
    """Element-wise sum of ``values`` over ranks, in float64 (the values themselves in one process)."""
    if not is_distributed():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    with _collective(what):
        dist.all_reduce(tensor)
    return [float(v) for v in tensor.cpu()]


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (DDP's start-up broadcast)."""
    if not is_distributed():
        return
    with _collective("parameter broadcast"), torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(module: torch.nn.Module, weight: float) -> None:
    """Replace each parameter's gradient by the sum over ranks of ``weight × gradient``.

    With ``weight = local batch / global batch`` and a loss that is a mean over the local batch,
    the result is the gradient of the mean over the global batch, the single-process gradient;
    only the order of the float additions differs. All ranks must call this with the same
    parameters; a parameter without a gradient on every rank is skipped on every rank.
    """
    if not is_distributed():
        return
    params = [p for p in module.parameters() if p.requires_grad]
    have = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
    with _collective("gradient all-reduce"):
        if dist.get_backend() == "nccl":
            have = have.cuda()
        dist.all_reduce(have, op=dist.ReduceOp.MIN)
        grads = [p.grad for p, ok in zip(params, have.tolist(), strict=True) if ok and p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads]) * weight
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """``[start, stop)`` of ``rank``'s contiguous slice of ``n`` items split over ``size`` ranks;
    slice sizes differ by at most one and the slices, in rank order, cover ``0..n-1`` once."""
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"rank {rank} of {size} ranks is not a valid shard")
    base, extra = divmod(int(n), size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(items: Any, info: WorldInfo | None = None) -> Any:
    """``rank``'s contiguous slice of a sequence or tensor (everything in one process)."""
    info = info or world()
    start, stop = shard_bounds(len(items), info.rank, info.size)
    return items[start:stop]


def settings_digest(settings: Any) -> str:
    """sha256 of the canonical JSON of ``settings`` (sorted keys; non-JSON values by ``str``)."""
    return sha256_hex(json.dumps(settings, sort_keys=True, default=str).encode("utf-8"))


def check_same_settings(settings: Any, what: str = "run") -> None:
    """All-gather a digest of ``settings`` and raise ``ConfigError`` on every rank when they differ.

    Ranks launched with different arguments, data or model files would otherwise train or
    certify different things and merge nonsense; this refuses them before any work is done.
    """
    digests = all_gather_objects(settings_digest(settings), f"{what} settings check")
    if len(set(digests)) > 1:
        groups: dict[str, list[int]] = {}
        for rank, digest in enumerate(digests):
            groups.setdefault(digest, []).append(rank)
        shown = "; ".join(f"ranks {ranks} digest {d[:12]}" for d, ranks in groups.items())
        raise ConfigError(
            f"the ranks disagree on the {what} settings ({shown}); launch every rank with the same "
            "arguments, data and model files"
        )


def merge_by_index(parts: Sequence[Sequence[Any]], key: Any = None) -> list[Any]:
    """One list of the records of all ranks, sorted by ``key`` (default: the ``index`` attribute);
    an index that appears twice is a ``DistributedError`` (shards must not overlap)."""
    get = key or (lambda record: record.index)
    merged = sorted((r for part in parts for r in part), key=get)
    for before, after in zip(merged, merged[1:], strict=False):
        if get(before) == get(after):
            raise DistributedError(f"two ranks hold a record for index {get(after)}: the shards overlap")
    return merged


def drop_option(args: Sequence[str], name: str) -> list[str]:
    """``args`` without ``name VALUE`` and ``name=VALUE`` (to re-launch a command without it)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


def relaunch_with_torchrun(nproc: int, command: str, argv: Sequence[str] | None = None,
                           passthrough: Sequence[int] = ()) -> int:
    """Re-run this ``hardened COMMAND ...`` command line (``argv``, default ``sys.argv[1:]``)
    without ``--nproc`` in ``nproc`` processes (``launch_torchrun``): what ``--nproc N`` does."""
    args = list(sys.argv[1:] if argv is None else argv)
    if command not in args:
        raise ConfigError("--nproc works from the hardened command line; from Python, launch with torchrun")
    return launch_torchrun(nproc, [command, *drop_option(args[args.index(command) + 1:], "--nproc")],
                           passthrough=passthrough)


def launch_torchrun(nproc: int, command: Sequence[str], passthrough: Sequence[int] = ()) -> int:
    """Run ``hardened COMMAND...`` in ``nproc`` local processes through torchrun's launcher
    (``torch.distributed.run --standalone``: a free local port, one node) and return 0;
    ``DistributedError`` when a process fails (torchrun stops the others and names the failed
    rank), except when every failed rank exited with the same code of ``passthrough`` (a
    command's own "done, but..." code, e.g. the audit's 3): that code is returned."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(["--standalone", "--nproc-per-node", str(int(nproc)), "-m", "hardened.cli.main", "--", *command])
    except ChildFailedError as error:
        codes = {f.exitcode for f in error.failures.values()}
        if len(codes) == 1 and next(iter(codes)) in passthrough:
            return int(next(iter(codes)))
        failures = "; ".join(f"rank {rank}: exit code {f.exitcode}" for rank, f in sorted(error.failures.items()))
        raise DistributedError(
            f"the {nproc}-process run failed ({failures}); the failed rank printed the reason above. "
            "Finished work is kept: re-run the same command to resume"
        ) from None
    return 0
