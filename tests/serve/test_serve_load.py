"""Bounded load on a real ``hardened serve`` process: every answer matched to its own request,
none lost; and SIGTERM in the middle of the load answers every request the server had taken.

The clients are ``CLIENTS`` asyncio tasks, each with its own ``httpx.AsyncClient`` (one
keep-alive connection, one request in flight; half the client CPU of one shared pool). Every request carries a distinct image (a digit plus its own
seeded noise) and an ``X-Request-ID``; the expected label and probabilities come from the guard
run in this process on the same images, so an answer delivered to the wrong request (or a batch
sliced wrongly) shows as a mismatch.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

CLIENTS = 32


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def _distinct_images(base: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` images: ``base`` cycled, each with its own uniform noise of amplitude 0.1, in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    cycled = base[torch.arange(n) % len(base)]
    return (cycled + 0.1 * torch.rand(cycled.shape, generator=generator)).clamp(0, 1)


@dataclass
class _Outcome:
    """What happened to request i: the status and answer, or the transport error; when it was sent."""

    sent: float = float("nan")
    answered: float = float("nan")
    status: int | None = None
    answer: dict | None = None
    request_id: str | None = None
    error: str | None = None


@dataclass
class _Load:
    url: str
    bodies: list[dict]
    outcomes: list[_Outcome] = field(default_factory=list)

    async def run(self, clients: int) -> None:
        """Each request once, from ``clients`` tasks; a task stops at its first transport error
        (after SIGTERM the server is gone), so the load ends by itself either way."""
        self.outcomes = [_Outcome() for _ in self.bodies]
        queue = iter(range(len(self.bodies)))

        async def client() -> None:
            async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:  # one connection each
                for i in queue:
                    outcome = self.outcomes[i]
                    outcome.sent = time.monotonic()
                    try:
                        response = await http.post("/v1/predict", json=self.bodies[i],
                                                   headers={"X-Request-ID": f"load-{i}"})
                    except httpx.TransportError as error:
                        outcome.error = type(error).__name__
                        return
                    outcome.answered = time.monotonic()
                    outcome.status, outcome.request_id = response.status_code, response.headers.get("x-request-id")
                    outcome.answer = response.json()

        await asyncio.gather(*(client() for _ in range(clients)))


def _check_answer(i: int, outcome: _Outcome, expected_labels: list[int], expected_probabilities: np.ndarray) -> None:
    assert outcome.request_id == f"load-{i}"
    assert outcome.answer is not None and outcome.answer["n"] == 1
    answer = outcome.answer["predictions"][0]
    assert answer["label"] == expected_labels[i], f"request {i} got another image's label"
    np.testing.assert_allclose(answer["probabilities"], expected_probabilities[i], atol=1e-5,
                               err_msg=f"request {i} got another image's probabilities")


@pytest.mark.slow
def test_10000_requests_at_32_clients_each_answered_with_its_own_image(start_server, guard_dir, guard, digits):
    """10,000 one-image requests at 32 concurrent clients: no request lost, each answer is the
    guard's answer for that request's own image.

    N = 10,000 costs about 14 s of client CPU (httpx) and 6 s of server CPU, so 20-30 s on 2
    CPU cores with nothing else running (65 s measured at a load average of 13 from other jobs)."""
    n = 10_000
    server = start_server(["--guard", str(guard_dir), "--max-batch", "32", "--max-wait-ms", "2", "--max-queue", "1024"])
    x = _distinct_images(digits.test.x, n, seed=11)
    expected = guard.predict_batch(x)
    probabilities = expected.probabilities.numpy()
    scores = expected.scores.numpy()
    assert len({(*np.round(p, 6), round(float(s), 4)) for p, s in zip(probabilities, scores, strict=True)}) == n, \
        "the images are not distinguishable by their answers"
    load = _Load(server.url, [{"images": x[i:i + 1].tolist()} for i in range(n)])
    started, cpu = time.monotonic(), time.process_time()
    asyncio.run(load.run(CLIENTS))
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    ticks = [int(v) for v in Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]]
    print(f"server cpu {sum(ticks) / os.sysconf('SC_CLK_TCK'):.1f} s")
    assert [o.error for o in load.outcomes if o.error] == []
    assert [o.status for o in load.outcomes].count(200) == n
    labels = expected.predictions.tolist()
    for i, outcome in enumerate(load.outcomes):
        _check_answer(i, outcome, labels, probabilities)
        assert outcome.answer is not None
        answer = outcome.answer["predictions"][0]
        assert answer["accepted"] == bool(expected.accepted[i])
        assert answer["score"] == pytest.approx(float(scores[i]), rel=1e-5, abs=1e-5)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert _metric(metrics, "hardened_batch_size_sum") >= n
    assert _metric(metrics, "hardened_batch_size_count") < n  # requests shared batches
    print(f"{n} requests in {seconds:.1f} s: {n / seconds:.0f} requests/s, client cpu {cpu:.1f} s, load {os.getloadavg()}")


def test_sigterm_during_load_answers_every_request_the_server_took(start_server):
    """The slow model (50 ms a batch of at most 4) keeps most of the 32 clients' requests queued
    in the server; SIGTERM when the queue holds Q >= 20. Each of the Q queued requests (and the
    running batch) is answered 200 with its own answer after the signal; only the few requests not
    yet taken may see the connection closed; requests after it are refused (connection refused,
    or 503); nothing hangs; the process exits 0."""
    spec = importlib.util.spec_from_file_location("slow_model", Path(__file__).with_name("slow_model.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.slow_model()  # the served model, built here too for the expected answers
    n = 2000
    server = start_server(["--model", "slow_model:slow_model", "--input-shape", "1,8,8", "--trust-factory",
                           "--max-batch", "4", "--max-wait-ms", "5", "--max-queue", "1024", "--no-trace"])  # its 50 ms sleep is Python: a trace drops it
    x = _distinct_images(torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(3)), n, seed=5)
    with torch.no_grad():
        probabilities = model(x).softmax(1).numpy()
    labels = probabilities.argmax(1).tolist()
    load = _Load(server.url, [{"images": x[i:i + 1].tolist()} for i in range(n)])

    async def scenario() -> tuple[float, float]:
        task = asyncio.create_task(load.run(CLIENTS))
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as probe:
            await asyncio.sleep(0.3)  # some requests answered before the signal
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                depth = _metric((await probe.get("/metrics")).text, "hardened_queue_depth")
                if depth >= 20:
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError("the queue never filled")
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(task, 60)
        return depth, signalled

    depth, signalled = asyncio.run(scenario())
    assert server.process.wait(30) == 0, server.output()[-2000:]
    sent = [(i, o) for i, o in enumerate(load.outcomes) if not np.isnan(o.sent)]
    assert len(sent) < n  # the signal cut the load short
    for i, outcome in sent:  # an answer (its own) or a refusal; nothing else, nothing lost
        if outcome.status == 200:
            _check_answer(i, outcome, labels, probabilities)
        else:
            assert outcome.status == 503 or outcome.error in ("ConnectError", "RemoteProtocolError",
                                                              "ReadError", "WriteError"), (i, outcome)
    in_flight = [o for _, o in sent if o.sent < signalled and not o.answered < signalled]
    drained = [o for o in in_flight if o.status == 200]
    assert len(drained) >= depth, f"{depth} requests were queued at the signal, {len(drained)} answered"
    assert len(in_flight) - len(drained) <= CLIENTS - depth  # only requests not yet taken may fail
    assert any(o.sent > signalled and o.status != 200 for _, o in sent)  # new requests were refused
    log = server.output()
    assert "Traceback" not in log and '"event": "stop"' in log
