"""What ``hardened.keep_freed_memory`` (glibc trim / mmap thresholds) does to CPU passes.

Each measurement is a fresh process (glibc's heap layout, and so the page faults of the default
settings, differs from process to process): a LeNet forward at batch 32 under ``no_grad`` and a
forward and backward at batch 128, one thread, with glibc's defaults (``HARDENED_MALLOC=default``)
and with the setting, alternating, ``--processes`` of each. Per process: milliseconds per pass
(the best of 3 one-second windows) and minor page faults per pass. The floor is the same loop in
plain PyTorch; the two settings differ only in the allocator. JSON to
benchmarks/results/allocator.json with every process's figures and the medians.

    nice -n 10 python benchmarks/allocator.py      # about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

from hardened._util.atomic import write_json  # noqa: E402

_PROBE = """
import json, resource, sys, time
import torch
import hardened
setting = hardened.keep_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
model = hardened.build_model("lenet", input_shape=(1, 28, 28), num_classes=10).eval()
def measure(step, windows=3):
    for _ in range(5):
        step()
    best, faults = float("inf"), []
    for _ in range(windows):
        n, before, start = 0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        while time.perf_counter() - start < 1.0:
            step()
            n += 1
        best = min(best, 1000 * (time.perf_counter() - start) / n)
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n)
    return round(best, 3), round(min(faults), 1)
x32, x128 = torch.rand(32, 1, 28, 28), torch.rand(128, 1, 28, 28, requires_grad=True)
def forward():
    with torch.no_grad():
        model(x32)
def backward():
    model(x128).sum().backward()
(f_ms, f_faults), (b_ms, b_faults) = measure(forward), measure(backward)
print(json.dumps({"setting": setting, "forward32_ms": f_ms, "forward32_faults": f_faults,
                  "backward128_ms": b_ms, "backward128_faults": b_faults}))
"""


def _process(keep: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env["HARDENED_MALLOC"] = "keep" if keep else "default"
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=6, help="fresh processes per setting")
    parser.add_argument("--out", type=Path, default=RESULTS / "allocator.json")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"default": [], "keep_freed_memory": []}
    for i in range(args.processes):
        for keep in (False, True):  # alternating, so a drifting load touches both alike
            row = _process(keep)
            runs["keep_freed_memory" if keep else "default"].append(row)
            print(i, row, flush=True)
    fields = ("forward32_ms", "forward32_faults", "backward128_ms", "backward128_faults")
    medians = {name: {f: statistics.median(r[f] for r in rows) for f in fields} for name, rows in runs.items()}
    spread = {name: {f: [min(r[f] for r in rows), max(r[f] for r in rows)] for f in fields}
              for name, rows in runs.items()}
    speedup = {f: round(medians["default"][f] / medians["keep_freed_memory"][f], 3)
               for f in ("forward32_ms", "backward128_ms")}
    write_json(args.out, {"machine": machine(), "processes": args.processes, "runs": runs, "medians": medians,
                          "range": spread, "speedup_default_over_keep": speedup})
    print("medians", medians, "\nrange", spread, "\nspeedup", speedup, f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
