"""One-pixel, spatial and minimal-norm attacks on the standard ``lenet`` (mnist-5k): figures for the README.

Same model as ``benchmarks/attacks.py`` (cached in ``results/models``), the first ``--n`` images
of the mnist-5k test split. Reports one-pixel success at k = 1, 3, 5 pixels; accuracy under the
worst rotation (±30°) / translation (±3 px) of a grid, under worst-of-10 and under the
first-order spatial attack; the median minimal L2 of C&W and the median minimal L2 / Linf of FMN
(with their success rates and wall time). No peers here (the issue's blackbox benchmark compares
them).

    python benchmarks/attack_families.py [--n 100] [--maxiter 30] [--n-onepixel 100] [--only 'C&W']

Writes ``benchmarks/results/attack_families.json`` atomically after each measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import hardened as hd
from hardened._util.atomic import write_json
from hardened.attacks import attack_in_batches, make_attack
from hardened.attacks.minimal import minimal_norms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, cached_lenet, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--maxiter", type=int, default=30, help="one-pixel DE generations")
    parser.add_argument("--n-onepixel", type=int, default=100, help="images for the (slow) one-pixel rows")
    parser.add_argument("--out", type=Path, default=RESULTS / "attack_families.json")
    parser.add_argument("--only", default=None, help="re-measure only the rows whose label contains this; keep the others of --out")
    args = parser.parse_args()
    torch.manual_seed(0)
    splits = hd.load_splits("mnist-5k")
    model, record = cached_lenet(splits.train, splits.test, RESULTS / "models" / "lenet-mnist-5k", epochs=5)
    test = splits.test.head(args.n)
    x, y = test.x, test.y
    report: dict[str, Any] = {"machine": machine(), "model": record, "n": args.n, "rows": []}
    kept = json.loads(args.out.read_text())["rows"] if args.only is not None and args.out.is_file() else []
    kept_by_label = {row["label"]: row for row in kept}

    def measure(label: str, name: str, n: int = args.n, **options: Any) -> None:
        if args.only is not None and args.only not in label:
            if label in kept_by_label:
                report["rows"].append(kept_by_label[label])
            return
        attack = make_attack(name, **options)
        start = time.perf_counter()
        result = attack_in_batches(attack, model, x[:n], y[:n], batch_size=n)
        row: dict[str, Any] = {
            "label": label, "attack": name, "n": n, "params": attack.params(), "seconds": time.perf_counter() - start,
            "clean_accuracy": result.clean_accuracy, "robust_accuracy": result.robust_accuracy,
            "success_rate": result.success_rate, "queries": result.total_queries,
        }
        if attack.minimal:
            norm = str(attack.params()["norm"])
            row["median_minimal_norm"] = float(minimal_norms(result, norm).median())
        report["rows"].append(row)
        write_json(args.out, report)
        print(f"{label}: {row}", flush=True)

    measure("grid rotation ±30° / translation ±3 px (7 values each)", "spatial-grid", rotation=30.0, translation=3.0, points=7)
    measure("worst-of-10 rotation ±30° / translation ±3 px", "spatial-random", rotation=30.0, translation=3.0, k=10)
    measure("first-order rotation ±30° / translation ±3 px, 20 steps", "spatial-pgd", rotation=30.0, translation=3.0)
    measure("C&W L2 (9 × 100 steps, lr 0.01)", "cw")
    measure("C&W L2 (9 × 100 steps, lr 0.1)", "cw", lr=0.1)
    measure("FMN L2 (100 steps)", "fmn", norm="l2")
    measure("FMN Linf (100 steps)", "fmn", norm="linf")
    for k in (1, 3, 5):
        measure(f"one-pixel k={k}", "onepixel", n=args.n_onepixel, max_pixels=k, maxiter=args.maxiter)
    write_json(args.out, report)  # the rows kept by --only after the last one measured


if __name__ == "__main__":
    main()
