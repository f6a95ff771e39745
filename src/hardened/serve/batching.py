"""Dynamic micro-batching: requests wait at most ``max_wait_ms`` to fill a batch of ``max_batch`` images.

``MicroBatcher.submit(x)`` (x: n×C×H×W, one request) queues the request and returns a
``concurrent.futures.Future`` of its n answers; one worker thread takes the oldest request,
then keeps taking queued requests, in order, while the batch has room and ``max_wait_ms`` has
not passed since it took the first; it runs them as one batch and hands each request its own
slice of the answers. A request is never split, so one larger than ``max_batch`` runs alone.
The wait is only for requests known to be coming: a caller announces each request as it starts
reading it (``expect()``) and ``submit`` (or ``withdraw()``, when it fails) takes the
announcement back; with nothing announced the batch runs at once, so a lone client never waits.
The queue holds at most ``max_queue`` requests: beyond that ``submit`` raises ``QueueFull``
(the service's 503). ``close()`` refuses new requests, answers every queued one, and stops.
With ``max_batch=1`` every request runs alone (batching off).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hardened.errors import ConfigError

__all__ = ["MicroBatcher", "QueueFull", "Closed", "BatchStats"]


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests: try again later (HTTP 503 with Retry-After)."""


class Closed(Exception):
    """The batcher is shutting down and takes no new requests (HTTP 503)."""


@dataclass(frozen=True)
class BatchStats:
    """One batch run: its number of requests and images, seconds in the model, and each
    request's seconds in the queue (from ``submit`` to the start of its batch)."""

    requests: int
    images: int
    seconds: float
    waits: tuple[float, ...]


@dataclass
class _Job:
    x: Tensor
    future: Future[list[Any]]
    submitted: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """The bounded request queue and its one worker thread (see the module docstring).

    Args:
        run: the batch function: images N×C×H×W -> a sequence of N answers, in order.
        max_batch: most images in one batch (>= 1).
        max_wait_ms: longest time the first request of a batch waits for others (>= 0).
        max_queue: most requests waiting (>= 1).
        on_batch: called on the worker thread after each batch with its ``BatchStats``.
    """

    def __init__(self, run: Callable[[Tensor], Sequence[Any]], *, max_batch: int = 64,
                 max_wait_ms: float = 5.0, max_queue: int = 256,
                 on_batch: Callable[[BatchStats], None] | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or not max_wait_ms >= 0:
            raise ConfigError(f"max_batch and max_queue must be >= 1 and max_wait_ms >= 0, got "
                              f"{max_batch}, {max_queue}, {max_wait_ms}")
        self.run, self.on_batch = run, on_batch
        self.max_batch, self.max_wait, self.max_queue = int(max_batch), max_wait_ms / 1000.0, int(max_queue)
        self._jobs: deque[_Job] = deque()
        self._images = 0
        self._arriving = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="hardened-serve-batcher", daemon=True)

    @property
    def queue_depth(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return len(self._jobs)

    @property
    def queued_images(self) -> int:
        return self._images

    def start(self) -> MicroBatcher:
        self._thread.start()
        return self

    def expect(self) -> None:
        """Announce a request that is being read: a batch being filled waits for it."""
        with self._cond:
            self._arriving += 1

    def withdraw(self) -> None:
        """Take back an announcement whose request will not come (it was rejected)."""
        with self._cond:
            self._arriving = max(0, self._arriving - 1)
            self._cond.notify()

    def submit(self, x: Tensor, *, announced: bool = False) -> Future[list[Any]]:
        """Queue one request (images n×C×H×W, n >= 1); ``QueueFull`` or ``Closed`` when it cannot.

        ``announced``: the request was announced with ``expect()``; the announcement ends here.
        """
        future: Future[list[Any]] = Future()
        with self._cond:
            if announced:
                self._arriving = max(0, self._arriving - 1)
            if self._closed:
                raise Closed("the service is shutting down")
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(f"the queue holds {self.max_queue} requests")
            self._jobs.append(_Job(x, future))
            self._images += x.shape[0]
            self._cond.notify()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Take no new requests, answer every queued one, stop the worker (join up to ``timeout``)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _take(self) -> list[_Job] | None:
        """The next batch of requests, or None once closed and empty."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            batch = [self._jobs.popleft()]
            size = batch[0].x.shape[0]
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                if self._jobs:
                    if size + self._jobs[0].x.shape[0] > self.max_batch:
                        break
                    batch.append(self._jobs.popleft())
                    size += batch[-1].x.shape[0]
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed or self._arriving == 0:
                    break
                self._cond.wait(remaining)
            self._images -= size
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            started = time.perf_counter()
            waits = tuple(started - job.submitted for job in batch)
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                x = live[0].x if len(live) == 1 else torch.cat([job.x for job in live])
                answers = list(self.run(x))
                if len(answers) != x.shape[0]:
                    raise RuntimeError(f"the batch function gave {len(answers)} answers for {x.shape[0]} images")
            except BaseException as error:  # every waiting request learns of the failure
                for job in live:
                    job.future.set_exception(error)
                continue
            start = 0
            for job in live:
                n = job.x.shape[0]
                job.future.set_result(answers[start:start + n])
                start += n
            if self.on_batch is not None:
                self.on_batch(BatchStats(len(live), int(x.shape[0]), time.perf_counter() - started, waits))
