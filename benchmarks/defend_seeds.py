"""Issue 18's seed target: ``fgsm`` against ``pgd`` training on mnist-5k at Linf 0.3, seeds 0-2.

Each model is trained by the command a user types (defaults everywhere else)::

    hardened train --data mnist-5k --arch lenet --method {fgsm,pgd} --eps 0.3 --eps-warmup 0.4 --epochs 8 --seed S

and measured by ``defend_eval.evaluate``: clean accuracy and PGD-40 on the first 1,000 test
images, the ``quick`` cascade on the first 200. The target: on every seed, fgsm's PGD-40
accuracy is at most 15 points below pgd's (``pgd40_gap_points``: pgd minus fgsm, in points).
``--extra "NAME=OPTIONS"`` adds a variant (e.g. ``"fgsm-lr5e-3=--method fgsm --lr 5e-3"``).

Resumable: trained models are kept in ``--work`` and evaluated rows in the JSON.

    nice -n 10 python benchmarks/defend_seeds.py      # about 6 CPU minutes per seed

Writes ``benchmarks/results/defend_seeds.json`` atomically after each model.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import hardened as hd
from hardened._util.atomic import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402
from defend_eval import add_evaluation_arguments, evaluate  # noqa: E402

COMMAND = "hardened train --data mnist-5k --arch lenet --eps 0.3 --eps-warmup 0.4 --epochs 8"
VARIANTS = {"fgsm": "--method fgsm", "pgd": "--method pgd"}


def train(name: str, options: str, seed: int, work: Path) -> Path:
    """Train one model with the CLI (skipped when its file is there); its path."""
    out = work / f"{name}-{seed}.safetensors"
    if not out.is_file():
        command = [sys.executable, "-m", "hardened.cli.main", *shlex.split(COMMAND)[1:], *shlex.split(options),
                   "--seed", str(seed), "--out", str(out)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--extra", action="append", default=[], help="NAME=OPTIONS: another variant")
    parser.add_argument("--work", type=Path, default=Path("runs/defend_seeds"))
    add_evaluation_arguments(parser)  # --seed: the evaluation's (the training seeds are --seeds)
    parser.add_argument("--out", type=Path, default=RESULTS / "defend_seeds.json")
    args = parser.parse_args()
    variants = VARIANTS | dict(item.split("=", 1) for item in args.extra)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    test = hd.load_splits("mnist-5k").test
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report: dict[str, Any] = {
        "command": f"{COMMAND} {{{','.join(variants.values())}}} --seed S",
        "evaluation": f"clean + PGD-40 on the first {args.n_pgd} mnist-5k test images, cascade {args.preset} "
                      f"on the first {args.n_cascade}",
        "machine": machine(), "variants": variants, "models": old.get("models", {}),
    }
    for seed in seeds:
        for name, options in variants.items():
            key = f"{name}-{seed}"
            if key in report["models"] and report["models"][key].get("options") == options:
                continue
            row = evaluate(str(train(name, options, seed, args.work)), test, args)
            report["models"][key] = row | {"options": options}
            print(f"{key}: clean {row['clean']:.3f} pgd40 {row['pgd40']:.3f} cascade {row['cascade']:.3f}", flush=True)
            report["pgd40_gap_points"] = gaps(report["models"], seeds)
            write_json(args.out, report)


def gaps(models: dict[str, Any], seeds: list[int]) -> dict[str, float]:
    """pgd's PGD-40 accuracy minus fgsm's, in points, per seed with both measured."""
    return {str(s): round(100 * (models[f"pgd-{s}"]["pgd40"] - models[f"fgsm-{s}"]["pgd40"]), 1)
            for s in seeds if f"pgd-{s}" in models and f"fgsm-{s}" in models}


if __name__ == "__main__":
    main()
