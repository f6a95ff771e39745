"""The micro-batcher: every request gets its own answers in order, batches respect max_batch and
max_wait, a full queue is refused, close() answers everything queued."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from hardened.errors import ConfigError
from hardened.serve.batching import Closed, MicroBatcher, QueueFull


def _identity_rows(x: torch.Tensor) -> list[float]:
    return x[:, 0, 0, 0].tolist()


@pytest.mark.parametrize("seed", range(3))
def test_answers_match_their_requests_and_batches_fit(seed):
    sizes: list[int] = []
    batcher = MicroBatcher(_identity_rows, max_batch=8, max_wait_ms=5, max_queue=1000,
                           on_batch=lambda s: sizes.append(s.images)).start()
    rng = random.Random(seed)
    requests = [torch.arange(k, k + rng.randint(1, 8), dtype=torch.float32).view(-1, 1, 1, 1) for k in range(0, 4000, 10)]

    def send(x: torch.Tensor) -> list[float]:
        batcher.expect()
        return batcher.submit(x, announced=True).result(timeout=30)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, requests))
    batcher.close()
    assert answers == [x.flatten().tolist() for x in requests]
    assert max(sizes) <= 8 and sum(sizes) == sum(len(x) for x in requests)
    assert len(sizes) < len(requests)  # requests were batched together


def test_a_request_larger_than_max_batch_runs_alone():
    sizes: list[int] = []
    batcher = MicroBatcher(_identity_rows, max_batch=2, max_wait_ms=0, on_batch=lambda s: sizes.append(s.images)).start()
    assert batcher.submit(torch.zeros(5, 1, 1, 1)).result(5) == [0.0] * 5
    batcher.close()
    assert sizes == [5]


def test_a_lone_request_runs_at_once_and_announced_ones_are_waited_for():
    sizes: list[int] = []
    batcher = MicroBatcher(_identity_rows, max_batch=64, max_wait_ms=2000,
                           on_batch=lambda s: sizes.append(s.requests)).start()
    start = time.perf_counter()
    batcher.submit(torch.ones(1, 1, 1, 1)).result(5)  # nothing announced: no wait
    assert time.perf_counter() - start < 1.5
    batcher.expect()
    batcher.expect()
    first = batcher.submit(torch.ones(1, 1, 1, 1), announced=True)
    time.sleep(0.05)
    second = batcher.submit(torch.zeros(1, 1, 1, 1), announced=True)
    assert (first.result(5), second.result(5)) == ([1.0], [0.0])
    batcher.close()
    assert sizes == [1, 2]


def test_max_wait_bounds_the_wait_for_an_announced_request_that_never_comes():
    batcher = MicroBatcher(_identity_rows, max_batch=64, max_wait_ms=50).start()
    batcher.expect()
    start = time.perf_counter()
    batcher.submit(torch.ones(1, 1, 1, 1)).result(5)
    elapsed = time.perf_counter() - start
    batcher.withdraw()
    batcher.close()
    assert 0.04 <= elapsed < 2.0


def test_full_queue_is_refused_and_close_drains():
    release = threading.Event()

    def blocked(x: torch.Tensor) -> list[float]:
        release.wait(10)
        return _identity_rows(x)

    batcher = MicroBatcher(blocked, max_batch=1, max_wait_ms=0, max_queue=2).start()
    first = batcher.submit(torch.full((1, 1, 1, 1), 1.0))
    deadline = time.monotonic() + 5
    while batcher.queue_depth and time.monotonic() < deadline:  # the worker takes the first
        time.sleep(0.001)
    queued = [batcher.submit(torch.full((1, 1, 1, 1), v)) for v in (2.0, 3.0)]
    with pytest.raises(QueueFull):
        batcher.submit(torch.zeros(1, 1, 1, 1))
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.02)
    with pytest.raises(Closed):
        batcher.submit(torch.zeros(1, 1, 1, 1))
    release.set()
    closer.join(10)
    assert [f.result(0) for f in (first, *queued)] == [[1.0], [2.0], [3.0]]


def test_a_failing_batch_fails_its_requests_only():
    def fail_on_negative(x: torch.Tensor) -> list[float]:
        if (x < 0).any():
            raise RuntimeError("boom")
        return _identity_rows(x)

    batcher = MicroBatcher(fail_on_negative, max_batch=1, max_wait_ms=0).start()
    bad, good = batcher.submit(-torch.ones(1, 1, 1, 1)), batcher.submit(torch.ones(1, 1, 1, 1))
    with pytest.raises(RuntimeError, match="boom"):
        bad.result(5)
    assert good.result(5) == [1.0]
    batcher.close()


@pytest.mark.parametrize("options", [{"max_batch": 0}, {"max_queue": 0}, {"max_wait_ms": -1}])
def test_bad_settings(options):
    with pytest.raises(ConfigError):
        MicroBatcher(_identity_rows, **options)
