"""Load benchmark of ``hardened serve`` on loopback: requests/s and latency p50/p99 against
concurrency (1, 8, 32 clients), micro-batching on and off, unguarded and energy-guarded, against
the bare model's batched forward throughput measured in the same run (the floor the service
should approach at saturation). Each request carries one 28×28 image as JSON. The service runs
as a ``hardened serve`` subprocess; the clients are threads here. Also reads the service's own
time split (parse, queue, inference) from /metrics. JSON to benchmarks/results/serve.json.

    python benchmarks/serve.py            # about 2 minutes on 2 CPU cores
    python benchmarks/serve.py --quick    # fewer requests
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, cached_lenet, machine  # noqa: E402

from hardened._util.atomic import write_json  # noqa: E402
from hardened.data import load_splits  # noqa: E402
from hardened.guard import GuardedClassifier, make_score  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, args: list[str]) -> None:
        self.url = f"http://127.0.0.1:{_port()}"
        env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
        self.process = subprocess.Popen([sys.executable, "-m", "hardened.cli.main", "serve", *args,
                                         "--port", self.url.rsplit(":", 1)[1]],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the service did not start")

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics").text

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def _sum(text: str, name: str, label: str = "") -> float:
    pattern = rf"^{re.escape(name)}{{?[^}}\n]*{re.escape(label)}[^}}\n]*}}? ([0-9.e+-]+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def _load(url: str, bodies: list[bytes], clients: int, requests: int) -> dict[str, Any]:
    """``requests`` JSON requests from ``clients`` threads (one keep-alive connection each)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        with httpx.Client(timeout=60, headers={"content-type": "application/json"}) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                response = http.post(f"{url}/v1/predict", content=bodies[i % len(bodies)])
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    errors[0] += response.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": requests, "errors": errors[0], "seconds": round(seconds, 3),
            "requests_per_s": round(requests / seconds, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def _bare_throughput(model: torch.nn.Module, x: torch.Tensor, batch: int, seconds: float = 3.0) -> float:
    """Images/s of the model's forward at ``batch`` images (no HTTP, one thread)."""
    torch.set_num_threads(1)
    images = x[:batch]
    with torch.no_grad():
        model(images)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(images)
            n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    args = parser.parse_args()
    splits = load_splits("mnist-5k", seed=0)
    work = Path(tempfile.mkdtemp(prefix="hardened-serve-bench-"))
    model_file = RESULTS / "models" / "lenet-mnist-5k.safetensors"  # the one benchmarks/attacks.py trains
    model, record = cached_lenet(splits.train, splits.test, model_file, epochs=5)
    guard = GuardedClassifier(model, make_score("energy", model), model_ref=str(model_file),
                              classes=splits.train.classes)
    guard.calibrate(splits.test.x[:500], fpr=0.05)
    guard.save(work / "guard-energy")
    bodies = [json.dumps({"images": splits.test.x[i:i + 1].tolist()}).encode() for i in range(64)]
    per_level = {1: 100, 8: 300, 32: 600} if not args.quick else {1: 40, 8: 120, 32: 240}
    max_batch = 32
    floor = _bare_throughput(model, splits.test.x, max_batch)
    results: dict[str, Any] = {"machine": machine(), "model": record, "max_batch": max_batch,
                               "bare_forward_images_per_s": round(floor, 1), "runs": []}
    print(f"bare forward at batch {max_batch}: {floor:.0f} images/s")
    for target, target_args in (("unguarded", ["--model", str(model_file)]),
                                ("energy guard", ["--guard", str(work / "guard-energy")])):
        for batching, batch_args in (("on", ["--max-batch", str(max_batch), "--max-wait-ms", "2"]),
                                     ("off", ["--max-batch", "1", "--max-wait-ms", "0"])):
            server = _Server([*target_args, *batch_args, "--max-queue", "1024"])
            try:
                _load(server.url, bodies, 4, 40)  # warm the connection pool and the allocator
                for clients, requests in per_level.items():
                    before = server.metrics()
                    run = _load(server.url, bodies, clients, requests)
                    after = server.metrics()
                    delta = {k: _sum(after, n, lab) - _sum(before, n, lab) for k, (n, lab) in {
                        "batches": ("hardened_batch_size_count", ""), "images": ("hardened_batch_size_sum", ""),
                        "parse_s": ("hardened_stage_seconds_sum", 'stage="parse"'),
                        "queue_s": ("hardened_stage_seconds_sum", 'stage="queue"'),
                        "inference_s": ("hardened_stage_seconds_sum", 'stage="inference"')}.items()}
                    run |= {"target": target, "batching": batching,
                            "mean_batch": round(delta["images"] / max(delta["batches"], 1), 2),
                            "vs_bare_forward": round(run["requests_per_s"] / floor, 3),
                            "per_request_ms": {k[:-2]: round(1000 * delta[k] / requests, 3)
                                               for k in ("parse_s", "queue_s", "inference_s")}}
                    results["runs"].append(run)
                    print(f"{target:>12} batching {batching:>3} clients {clients:>2}: {run['requests_per_s']:7.1f} req/s "
                          f"p50 {run['p50_ms']:7.2f} ms p99 {run['p99_ms']:7.2f} ms batch {run['mean_batch']:5.2f} "
                          f"errors {run['errors']}", flush=True)
            finally:
                server.stop()
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
