"""Load benchmark of ``hardened serve`` on loopback, against the model's bare batched forward
measured in the same run: 1 s at batch 32 right before and right after each row (their mean is
that row's floor, so a load average that drifts during the run moves both sides), and at batch
32 and 64 before and after the whole run. On a machine shared with other jobs the wall figures
favour the service (its threads sleep between requests and get the CPU first when they wake,
while the bare forward loop only gets its fair share), so each row also gives CPU milliseconds
per image, the server's (both its threads) against the bare forward's: the service's own cost.
The bare forward runs with the allocator settings ``hardened serve`` sets
(``hardened._util.allocator.keep_freed_memory``: without them the same forward is 1.1-1.7x
slower, by process), so the service is compared with the best plain PyTorch floor.

The service runs as a ``hardened serve`` subprocess (uvicorn with uvloop and httptools, access
logs on, written to /dev/null); the load comes from ``benchmarks/serve_load.py`` in another
process (asyncio keep-alive connections, raw HTTP/1.1, a few tens of microseconds of client CPU
per request), so client and server share the machine's cores but not an interpreter. Requests
carry 1 or 32 28×28 MNIST images as JSON, or 32 as one ``.npy`` array. Rows: unguarded with micro-batching on
(``--max-batch 32 --max-wait-ms 2``, the default), off (``--max-batch 1``) and at ``--max-batch 64``,
and the energy, all-layer Mahalanobis and VAE guards with batching on; per row requests/s, images/s and their ratio to the
bare forward, client-measured p50/p99, the mean model batch, the service's own time split per
request from its /metrics (parse, queue, inference, and the rest: HTTP, routing, answer), the
server's and the client's CPU seconds, and the load average. The plan runs ``--repeats`` whole
passes (3) and every figure is the median over them; each guard's p50 ratio is taken against the
unguarded row of the same pass. JSON to benchmarks/results/serve.json.

    nice -n 10 python benchmarks/serve.py            # about 10 minutes on 2 CPU cores
    nice -n 10 python benchmarks/serve.py --quick    # a third of the requests
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, cached_lenet, machine  # noqa: E402

from hardened._util.allocator import keep_freed_memory  # noqa: E402
from hardened._util.atomic import write_json  # noqa: E402
from hardened.data import load_splits  # noqa: E402
from hardened.guard import GuardedClassifier, make_score  # noqa: E402

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[0] / "src"
LOAD = HERE / "serve_load.py"
BATCHING = {"on": ["--max-batch", "32", "--max-wait-ms", "2"], "off": ["--max-batch", "1", "--max-wait-ms", "0"],
            "on-64": ["--max-batch", "64", "--max-wait-ms", "2"]}
CONTENT_TYPES = {"json": "application/json", "npy": "application/x-npy"}
# (target, batching, [(images per request, body form, clients, requests), ...]); --quick: a third
PLAN: list[tuple[str, str, list[tuple[int, str, int, int]]]] = [
    ("unguarded", "on", [(1, "json", 1, 600), (1, "json", 8, 3000), (1, "json", 32, 4000), (1, "json", 64, 4000),
                         (32, "json", 1, 100), (32, "json", 8, 300), (32, "npy", 1, 300), (32, "npy", 2, 600),
                         (32, "npy", 8, 600)]),
    ("unguarded", "off", [(1, "json", 1, 600), (1, "json", 32, 3000), (32, "npy", 8, 600)]),
    ("unguarded", "on-64", [(1, "json", 32, 4000), (32, "npy", 8, 600)]),
    ("energy", "on", [(1, "json", 1, 600), (1, "json", 32, 4000), (32, "npy", 8, 600)]),
    ("mahalanobis-all", "on", [(1, "json", 1, 600), (1, "json", 32, 4000), (32, "npy", 8, 600)]),
    ("vae", "on", [(1, "json", 1, 600), (1, "json", 32, 3000), (32, "npy", 8, 600)]),
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Server:
    def __init__(self, args: list[str]) -> None:
        self.url = f"http://127.0.0.1:{_port()}"
        env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
        self.process = subprocess.Popen([sys.executable, "-m", "hardened.cli.main", "serve", *args,
                                         "--max-queue", "1024", "--port", self.url.rsplit(":", 1)[1]],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
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
        self.process.wait(60)


def _sum(text: str, name: str, label: str = "") -> float:
    pattern = rf"^{re.escape(name)}{{?[^}}\n]*{re.escape(label)}[^}}\n]*}}? ([0-9.e+-]+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


_DELTAS = {"batches": ("hardened_batch_size_count", ""), "images": ("hardened_batch_size_sum", ""),
           "parse": ("hardened_stage_seconds_sum", 'stage="parse"'),
           "queue": ("hardened_stage_seconds_sum", 'stage="queue"'),
           "inference": ("hardened_stage_seconds_sum", 'stage="inference"'),
           "latency": ("hardened_request_latency_seconds_sum", 'endpoint="/v1/predict"')}


def _load(server: _Server, bodies: Path, clients: int, requests: int) -> dict[str, Any]:
    """One load level through the load-generator process, with the server's metrics around it."""
    before, cpu, load_before = server.metrics(), _cpu_seconds(server.process.pid), os.getloadavg()[0]
    out = subprocess.run([sys.executable, str(LOAD), server.url, str(bodies), str(clients), str(requests)],
                         capture_output=True, text=True, check=True)
    server_cpu = _cpu_seconds(server.process.pid) - cpu
    after = server.metrics()
    run = json.loads(out.stdout)
    delta = {k: _sum(after, n, lab) - _sum(before, n, lab) for k, (n, lab) in _DELTAS.items()}
    split = {k: 1000 * delta[k] / requests for k in ("parse", "queue", "inference")}
    split["other"] = 1000 * delta["latency"] / requests - sum(split.values())
    return {"requests": requests, "seconds": round(run["seconds"], 3), "codes": run["codes"],
            "requests_per_s": round(requests / run["seconds"], 1), "p50_ms": round(run["p50_ms"], 2),
            "p99_ms": round(run["p99_ms"], 2), "mean_batch": round(delta["images"] / max(delta["batches"], 1), 2),
            "per_request_ms": {k: round(v, 3) for k, v in split.items()},
            "server_cpu_s": round(server_cpu, 2), "client_cpu_s": round(run["client_cpu_s"], 2),
            "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def _bare_forward(model: torch.nn.Module, x: torch.Tensor, batch: int, seconds: float = 3.0) -> tuple[float, float]:
    """The model's forward at ``batch`` images (no HTTP, one thread): images per wall second, and
    CPU milliseconds per image (robust to other jobs on the machine, unlike the wall figure)."""
    torch.set_num_threads(1)
    images = x[:batch]
    with torch.no_grad():
        model(images)
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            model(images)
            n += batch
    return n / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / n


def _floor(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    return {str(b): [round(v, 4) for v in _bare_forward(model, x, b)] for b in (32, 64)}


def _guards(model: torch.nn.Module, splits: Any, model_file: Path, work: Path, vae_epochs: int) -> dict[str, Path]:
    """Energy, all-layer Mahalanobis and VAE guards on the model, fitted on the training split and
    calibrated at 5% FPR on 500 test images, saved as guard folders (the VAE with few epochs:
    only its cost per image matters here, not its detection quality)."""
    options = {"energy": ("energy", {}), "mahalanobis-all": ("mahalanobis", {"layers": "all"}),
               "vae": ("vae", {"epochs": vae_epochs, "hidden": 400, "latent": 20, "seed": 0})}
    folders = {}
    for name, (score_name, kwargs) in options.items():
        score = make_score(score_name, model, **kwargs)
        score.fit(splits.train)
        guard = GuardedClassifier(model, score, model_ref=str(model_file), classes=splits.train.classes)
        guard.calibrate(splits.test.x[:500], fpr=0.05)
        folders[name] = guard.save(work / f"guard-{name}")
    return folders


def _bodies(x: torch.Tensor, k: int, form: str, work: Path) -> Path:
    """16 different request bodies of ``k`` images each (JSON or .npy), for ``serve_load.py``."""
    bodies = {}
    for i in range(16):
        images = x[i * k:(i + 1) * k]
        if form == "json":
            data = json.dumps({"images": images.tolist()}).encode()
        else:
            buffer = io.BytesIO()
            np.save(buffer, images.numpy())
            data = buffer.getvalue()
        bodies[f"body{i:02d}"] = np.frombuffer(data, dtype=np.uint8)
    path = work / f"bodies-{k}-{form}.npz"
    np.savez(path, content_type=np.array(CONTENT_TYPES[form]), **bodies)
    return path


def _row(server: _Server, model: torch.nn.Module, x: torch.Tensor, bodies: Path, k: int, clients: int,
         requests: int) -> dict[str, Any]:
    """One load level, with the bare forward measured right before and after it (its floor)."""
    before = _bare_forward(model, x, 32, seconds=1.0)  # the load drifts: measure around each row
    run = _load(server, bodies, clients, requests)
    after = _bare_forward(model, x, 32, seconds=1.0)
    floor, bare_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    run["images_per_s"] = round(run["requests_per_s"] * k, 1)
    run["bare_forward_images_per_s"] = round(floor, 1)
    run["vs_bare_forward"] = round(run["images_per_s"] / floor, 3)
    # CPU per image: the server's (both its threads) against the bare forward's
    run["server_cpu_ms_per_image"] = round(1000 * run["server_cpu_s"] / (requests * k), 4)
    run["bare_cpu_ms_per_image"] = round(bare_cpu, 4)
    run["cpu_vs_bare"] = round(bare_cpu / run["server_cpu_ms_per_image"], 3)
    return run


def _print(run: dict[str, Any]) -> None:
    split = run["per_request_ms"]
    print(f"{run['pass']} {run['target']:>15} {run['batching']:>5} k={run['images_per_request']:<2} {run['body']:>4} "
          f"c={run['clients']:<2}: {run['requests_per_s']:7.1f} req/s {run['images_per_s']:7.1f} img/s "
          f"p50 {run['p50_ms']:7.2f} p99 {run['p99_ms']:7.2f} ms batch {run['mean_batch']:5.2f} "
          f"parse/queue/inference/other {split['parse']:.2f}/{split['queue']:.2f}/{split['inference']:.2f}/"
          f"{split['other']:.2f} codes {run['codes']} bare {run['bare_forward_images_per_s']:.0f} img/s "
          f"({run['vs_bare_forward']:.2f}x) cpu {run['cpu_vs_bare']:.2f}x load {run['loadavg_1min']}", flush=True)


_MEDIAN_FIELDS = ("seconds", "requests_per_s", "p50_ms", "p99_ms", "mean_batch", "server_cpu_s", "client_cpu_s",
                  "images_per_s", "bare_forward_images_per_s", "vs_bare_forward", "server_cpu_ms_per_image",
                  "bare_cpu_ms_per_image", "cpu_vs_bare")


def _median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The passes of one row: the median of every measured figure, the codes summed, and each
    pass's throughput ratio and p50 kept beside them."""
    row = {k: v for k, v in rows[0].items() if k != "pass"}
    for field in _MEDIAN_FIELDS:
        row[field] = round(statistics.median(r[field] for r in rows), 4)
    row["per_request_ms"] = {k: round(statistics.median(r["per_request_ms"][k] for r in rows), 3)
                             for k in rows[0]["per_request_ms"]}
    codes: dict[str, int] = {}
    for r in rows:
        for code, count in r["codes"].items():
            codes[code] = codes.get(code, 0) + count
    row["codes"] = codes
    row["requests"] = sum(r["requests"] for r in rows)
    row["loadavg_1min"] = [min(r["loadavg_1min"][0] for r in rows), max(r["loadavg_1min"][1] for r in rows)]
    row["passes"] = [{"vs_bare_forward": r["vs_bare_forward"], "p50_ms": r["p50_ms"]} for r in rows]
    return row


def _guard_overhead(passes: dict[tuple[str, str, int, str, int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each guard's p50 (and throughput) over the unguarded service's at the same load level and
    in the same pass (so both saw the same load), then the median over the passes."""
    rows = []
    for (target, batching, k, form, clients), runs in passes.items():
        base = passes.get(("unguarded", batching, k, form, clients))
        if target == "unguarded" or base is None:
            continue
        pairs = list(zip(runs, base, strict=False))
        p50 = [r["p50_ms"] / b["p50_ms"] for r, b in pairs]
        throughput = [r["requests_per_s"] / b["requests_per_s"] for r, b in pairs]
        guard_ms = [r["per_request_ms"]["inference"] - b["per_request_ms"]["inference"] for r, b in pairs]
        rows.append({"target": target, "images_per_request": k, "body": form, "clients": clients,
                     "p50_ratio": round(statistics.median(p50), 2), "p50_ratios": [round(v, 2) for v in p50],
                     "throughput_ratio": round(statistics.median(throughput), 2),
                     "guard_ms_per_request": round(statistics.median(guard_ms), 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--vae-epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="passes over every row; rows report medians")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    args = parser.parse_args()
    started, cpu_start = time.perf_counter(), time.process_time()
    allocator = keep_freed_memory()  # as `hardened serve` does, so the floor runs at its best too
    splits = load_splits("mnist-5k", seed=0)
    work = Path(tempfile.mkdtemp(prefix="hardened-serve-bench-"))
    model_file = RESULTS / "models" / "lenet-mnist-5k.safetensors"  # the one benchmarks/attacks.py trains
    model, record = cached_lenet(splits.train, splits.test, model_file, epochs=5)
    folders = _guards(model, splits, model_file, work, args.vae_epochs)
    bodies = {(k, form): _bodies(splits.test.x, k, form, work) for k in (1, 32) for form in CONTENT_TYPES}
    floor_before = _floor(model, splits.test.x)
    print(f"bare forward (images/s, cpu ms/image at batch 32, 64): {floor_before}", flush=True)
    results: dict[str, Any] = {"machine": machine(), "model": record, "allocator": allocator,
                               "python_workers": "server: uvicorn event loop + one batcher thread (torch 1 "
                               "thread); client: one asyncio process",
                               "bare_forward_images_per_s": {"before": floor_before}, "runs": []}
    passes: dict[tuple[str, str, int, str, int], list[dict[str, Any]]] = {}
    for number in range(args.repeats):  # whole passes, so that a drifting load touches every row alike
        for target, batching, levels in PLAN:
            target_args = ["--model", str(model_file)] if target == "unguarded" else ["--guard", str(folders[target])]
            server = _Server([*target_args, *BATCHING[batching]])
            try:
                subprocess.run([sys.executable, str(LOAD), server.url, str(bodies[1, "json"]), "8", "200"], check=True,
                               capture_output=True)  # warm the allocator and the code paths
                for k, form, clients, requests in levels:
                    requests = max(requests // 3, 30) if args.quick else requests
                    run = _row(server, model, splits.test.x, bodies[k, form], k, clients, requests)
                    run = {"target": target, "batching": batching, "images_per_request": k, "body": form,
                           "clients": clients, "pass": number, **run}
                    passes.setdefault((target, batching, k, form, clients), []).append(run)
                    _print(run)
            finally:
                server.stop()
    results["runs"] = [_median_row(rows) for rows in passes.values()]
    results["guard_overhead"] = _guard_overhead(passes)
    results["repeats"] = args.repeats
    floor_after = _floor(model, splits.test.x)
    floors = results["bare_forward_images_per_s"]
    floors["after"] = floor_after
    print(f"bare forward after: {floor_after}")
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["benchmark_cpu_s"] = round(time.process_time() - cpu_start, 1)
    results["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    write_json(args.out, results)
    for row in results["guard_overhead"]:
        print(row)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
