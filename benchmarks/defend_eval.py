"""Robust accuracy of trained models: clean, PGD-40 and the strong evaluator (cascade).

For each model file: clean accuracy and PGD-40 (Linf, step 2.5·eps/40, one random start) on the
first ``--n-pgd`` test images, and ``hardened.evaluate.cascade`` preset ``--preset`` on the first
``--n-cascade``. Models come from ``hardened train`` (their training record gives the method,
its settings and the training time).

    python benchmarks/defend_eval.py NAME=model.safetensors ... [--data mnist-5k] [--eps 0.3]

Writes ``benchmarks/results/defend_eval.json`` atomically (after each model).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import hardened as hd
from hardened._util.atomic import write_json
from hardened.evaluate import robust_accuracy_sweep
from hardened.evaluate.cascade import run_cascade
from hardened.train import accuracy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402


def evaluate(path: str, test: hd.Dataset, args: argparse.Namespace) -> dict[str, Any]:
    tick, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    loaded = hd.load_model(path)
    model = loaded.model.eval()
    pgd_data, cascade_data = test.head(args.n_pgd), test.head(args.n_cascade)
    pgd = robust_accuracy_sweep(model, pgd_data.x, pgd_data.y, eps_values=[args.eps], attack="pgd",
                                steps=40, seed=args.seed).robust_accuracy[0]
    cascade = run_cascade(model, cascade_data.x, cascade_data.y, eps=args.eps, preset=args.preset, seed=args.seed)
    training = dict(loaded.info.training or {})
    history = training.get("history", [])
    return {
        "clean": accuracy(model, pgd_data), "pgd40": pgd, "cascade": cascade.robust_accuracy,
        "cascade_clean": cascade.clean_accuracy, "n_pgd": len(pgd_data), "n_cascade": len(cascade_data),
        "train_seconds": sum(r.get("seconds", 0.0) for r in history), "stopped": training.get("stopped"),
        "epochs_run": len(history), "method": training.get("method"),
        "eval_wall_s": time.perf_counter() - tick, "eval_cpu_s": _cpu_since(cpu), "loadavg": os.getloadavg(),
    }


def _cpu_since(start: resource.struct_rusage) -> float:
    now = resource.getrusage(resource.RUSAGE_SELF)
    return (now.ru_utime - start.ru_utime) + (now.ru_stime - start.ru_stime)


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``evaluate`` reads: eps, images per measurement, cascade preset, seed."""
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--n-pgd", type=int, default=1000)
    parser.add_argument("--n-cascade", type=int, default=200)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seed", type=int, default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=path.safetensors")
    parser.add_argument("--data", default="mnist-5k")
    add_evaluation_arguments(parser)
    parser.add_argument("--out", type=Path, default=RESULTS / "defend_eval.json")
    args = parser.parse_args()
    test = hd.load_splits(args.data).test
    report: dict[str, Any] = {"machine": machine(), "data": args.data, "eps": args.eps, "preset": args.preset,
                              "models": {}}
    for item in args.models:
        name, _, path = item.partition("=")
        report["models"][name] = row = evaluate(path, test, args)
        print(f"{name}: clean {row['clean']:.3f} pgd40 {row['pgd40']:.3f} cascade {row['cascade']:.3f} "
              f"({row['train_seconds']:.0f}s, stopped: {row['stopped']})", flush=True)
        write_json(args.out, report)


if __name__ == "__main__":
    main()
