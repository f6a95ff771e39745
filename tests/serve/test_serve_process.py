"""``hardened serve`` as a real uvicorn process on a free loopback port, through httpx: concurrent
clients get their own answers, requests are micro-batched, a full queue answers 503 with
Retry-After, SIGTERM answers every request in flight before the process exits; and the
``hardened predict --url`` client against it."""

from __future__ import annotations

import json
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import torch
from typer.testing import CliRunner

from hardened.cli.main import app
from hardened.guard.probes import uniform_noise


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def test_concurrent_clients_get_their_own_answers_in_batches(start_server, guard_dir, guard, digits, tmp_path):
    server = start_server(["--guard", str(guard_dir), "--max-wait-ms", "20", "--max-batch", "32"])
    x = torch.cat([digits.test.x[:120], uniform_noise(40, (1, 8, 8), seed=4)])
    expected = guard.predict_batch(x)

    bounds = np.cumsum([0] + [1 + k % 3 for k in range(100)])  # requests of 1, 2, 3 images covering x in order
    segments = [(int(a), int(min(b, len(x)))) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if a < len(x)]

    def ask(segment: tuple[int, int]) -> list[dict]:
        start, stop = segment
        with httpx.Client(timeout=30) as client:
            response = client.post(f"{server.url}/v1/predict", json={"images": x[start:stop].tolist()})
        assert response.status_code == 200, response.text
        answers = response.json()["predictions"]
        assert [a["index"] for a in answers] == list(range(stop - start))
        return answers

    with ThreadPoolExecutor(32) as pool:
        answers = [a for request in pool.map(ask, segments) for a in request]
    assert [a["label"] for a in answers] == expected.predictions.tolist()
    np.testing.assert_allclose([a["score"] for a in answers], expected.scores.numpy(), rtol=1e-5, atol=1e-5)
    assert [a["accepted"] for a in answers] == expected.accepted.tolist()
    metrics = httpx.get(f"{server.url}/metrics").text
    batches = _metric(metrics, "hardened_batch_requests_count")
    assert _metric(metrics, "hardened_batch_requests_sum") == len(segments)
    assert batches < len(segments)  # several requests shared a batch

    digit = tmp_path / "digit.png"
    from PIL import Image

    Image.fromarray((digits.test.x[0, 0].numpy() * 255).astype(np.uint8)).save(digit)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photo)
    result = CliRunner().invoke(app, ["predict", "--url", server.url, str(digit), str(photo)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("digit.png: ") and "refused" not in lines[0]
    assert lines[1].startswith("photo.jpg: refused")


def test_full_queue_is_503_and_sigterm_drains(start_server):
    server = start_server(["--model", "slow_model:slow_model", "--input-shape", "1,8,8", "--trust-factory",
                           "--max-batch", "1", "--max-wait-ms", "0", "--max-queue", "3", "--no-trace"])  # its 50 ms sleep is Python: a trace drops it
    body = {"images": np.zeros((1, 8, 8)).tolist()}

    def ask(_: int) -> httpx.Response:
        with httpx.Client(timeout=30) as client:
            return client.post(f"{server.url}/v1/predict", json=body)

    with ThreadPoolExecutor(16) as pool:
        codes = [r.status_code for r in pool.map(ask, range(16))]
        busy = [r for r in pool.map(ask, range(16)) if r.status_code == 503]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
    assert busy and busy[0].headers["Retry-After"] == "1" and "busy" in busy[0].json()["detail"]

    with ThreadPoolExecutor(3) as pool:
        in_flight = [pool.submit(ask, i) for i in range(3)]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until the requests are queued in the server
            if _metric(httpx.get(f"{server.url}/metrics").text, "hardened_queue_depth") >= 2:
                break
            time.sleep(0.005)
        server.process.send_signal(signal.SIGTERM)
        answers = [f.result(30) for f in in_flight]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert server.process.wait(20) == 0  # a drained stop is a clean exit
    log = server.output()
    events = [json.loads(line)["event"] for line in log.splitlines()]  # every line is one JSON object
    assert events.count("access") >= 3 and events[0] == "start" and events[-1] == "stop"


def test_missing_extra_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    result = CliRunner().invoke(app, ["serve", "--model", "x.safetensors"])
    assert result.exit_code == 2
    assert 'pip install "hardened[serve]"' in result.output and "fastapi" in result.output


def test_serve_needs_exactly_one_of_guard_or_model(guard_dir):
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2 and "exactly one of --guard" in result.output
    result = CliRunner().invoke(app, ["serve", "--guard", str(guard_dir), "--smooth", "0.25"])
    assert result.exit_code == 2 and "--smooth applies to --model" in result.output


def test_predict_client_cannot_reach_is_one_line(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    result = CliRunner().invoke(app, ["predict", "--url", "http://127.0.0.1:9", str(image)])
    assert result.exit_code == 2 and "cannot reach" in result.output and "Traceback" not in result.output


def test_black_box_attack_against_the_running_service(start_server, guard_dir, guard, digits):
    """Square through ``HttpTarget`` (the black-box client) on the served guard: every query is
    counted, and the service's answers lead the attack where the model itself does."""
    from hardened.attacks import Square
    from hardened.models.blackbox import HttpTarget

    server = start_server(["--guard", str(guard_dir)])
    x = digits.test.x[:6]
    y = guard.model(x).argmax(1)
    target = HttpTarget(server.url)
    result = Square(eps=0.3, queries=30, seed=0)(target, x, y)
    assert result.forward_count == target.queries
    assert result.total_queries is not None and result.total_queries + 2 * len(x) == target.queries
    local = Square(eps=0.3, queries=30, seed=0)(guard.model, x, y)
    assert torch.equal(result.success, local.success), "the service and the model disagree"
    assert _metric(httpx.get(f"{server.url}/metrics").text, "hardened_batch_size_sum") >= target.queries
