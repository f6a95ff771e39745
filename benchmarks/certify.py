"""Randomized smoothing throughput: noisy forward passes per second while certifying, beside the
bare batched forward throughput of the same model at the same batch size, in the same run
(interleaved repeats, medians; the machine may be shared, so CPU time is reported too), and the
seconds per image of a full ``certify`` at n = 100,000 (Cohen et al.'s setting).

Usage: python benchmarks/certify.py [--arch lenet] [--batch-size 1000] [--repeats 5]
Writes benchmarks/results/certify.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from hardened._util.atomic import write_json
from hardened._util.batching import eval_mode
from hardened.certify import certify
from hardened.certify.smoothing import auto_batch_size, sample_counts
from hardened.models import build_model


def timed(fn) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the auto (memory) size")
    parser.add_argument("--batches", type=int, default=10, help="batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full-n", type=int, default=100_000, help="n of the seconds-per-image run (0: skip)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/certify.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_model(args.arch).eval()
    x = torch.rand(1, 1, 28, 28)
    size = args.batch_size or auto_batch_size(model, x, 100_000)
    total = size * args.batches
    fixed = torch.rand(size, 1, 28, 28)
    generator = torch.Generator().manual_seed(0)

    def bare() -> None:
        with torch.no_grad():
            for _ in range(args.batches):
                model(fixed)

    def noisy() -> None:
        sample_counts(model, x, 0.25, total, 10, size, generator)

    with eval_mode(model):
        bare(), noisy()  # warm-up
        bare_runs, noisy_runs = [], []
        for _ in range(args.repeats):
            bare_runs.append(timed(bare))
            noisy_runs.append(timed(noisy))
    bare_wall = statistics.median(w for w, _ in bare_runs)
    noisy_wall = statistics.median(w for w, _ in noisy_runs)
    bare_cpu = statistics.median(c for _, c in bare_runs)
    noisy_cpu = statistics.median(c for _, c in noisy_runs)
    result: dict[str, object] = {
        "arch": args.arch,
        "batch_size": size,
        "samples_per_repeat": total,
        "repeats": args.repeats,
        "bare_forward_per_s": total / bare_wall,
        "noisy_forward_per_s": total / noisy_wall,
        "ratio_wall": bare_wall / noisy_wall,
        "ratio_cpu_time": bare_cpu / noisy_cpu,
        "target_ratio": 0.95,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "load_average_1min": __import__("os").getloadavg()[0],
    }
    print(json.dumps(result, indent=2), flush=True)
    if args.full_n:
        cert = certify(model, x, 0.25, n0=100, n=args.full_n, alpha=0.001, batch_size=size, seed=0)
        result["full_certify"] = {"n0": 100, "n": args.full_n, "seconds_per_image": cert.seconds,
                                  "load_average_1min": __import__("os").getloadavg()[0]}
        print(json.dumps(result["full_certify"]), flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
