"""Training cost per method: seconds per epoch beside the bare cost of the same passes.

``lenet`` on the ``mnist-5k`` training split (the first ``--n`` images; all 4,000 by default),
batch 128, Adam, one epoch per method with no per-epoch evaluation. Each method's epoch makes a
known number of image-level forward+backward passes (crafting steps counted by the method's own
counters, plus the training passes); the *floor* is a bare loop of exactly those passes through
the same network (batch 128, no attack code, no trainer): crafting passes as gradients to the
input, training passes with parameter gradients and an Adam step. The ratio ``method / floor``
is the overhead of the library (projection, random starts, bookkeeping, per-step generators).
Linf eps 0.3, PGD/TRADES/semi-supervised with 10 steps.

    python benchmarks/train.py [--n 4000] [--repeats 1]

Writes ``benchmarks/results/train.json`` atomically (also after each method).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import hardened as hd
from hardened._util.atomic import write_json
from hardened.train import TrainConfig, Trainer, make_method, split_unlabeled
from hardened.train.compare import build_seeded

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

EPS = 0.3
STEPS = 10
BATCH = 128


def training_passes(name: str, n: int) -> int:
    """Image-level forward+backward passes the trainer itself makes in one epoch of ``n`` images."""
    return {"trades": 2 * n, "ensemble": 2 * n, "semi-supervised": 2 * n}.get(name, n)


def floor_seconds(crafting: int, training: int, shape: tuple[int, int, int]) -> float:
    """Bare lenet loops, batch 128: ``crafting`` image-level forward+backward passes to the input
    (``autograd.grad`` w.r.t. x, as attacks do) plus ``training`` forward+backward+Adam passes."""
    model = build_seeded("lenet", 0, input_shape=shape)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(BATCH, *shape)
    y = torch.randint(0, 10, (BATCH,))
    start = time.perf_counter()
    done = 0
    while done < crafting:
        size = min(BATCH, crafting - done)
        x_var = x[:size].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_var), y[:size]), x_var)
        done += size
    done = 0
    while done < training:
        size = min(BATCH, training - done)
        loss = F.cross_entropy(model(x[:size]), y[:size])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += size
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="training images (of 4,000)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--methods", default="standard,pgd,fgsm,trades,noise,ensemble,semi-supervised")
    parser.add_argument("--out", type=Path, default=RESULTS / "train.json")
    args = parser.parse_args()
    splits = hd.load_splits("mnist-5k")
    data = splits.train.head(args.n)
    shape = data.input_shape
    source = build_seeded("lenet", 1, input_shape=shape)
    Trainer(source, data, config=TrainConfig(epochs=1, eval_n=0)).fit()
    labelled, pool = split_unlabeled(data, 0.5)
    results: dict[str, Any] = {
        "setup": {
            "arch": "lenet", "data": "mnist-5k train", "n": len(data), "batch_size": BATCH,
            "norm": "linf", "eps": EPS, "steps": STEPS, "repeats": args.repeats,
            "semi_supervised": f"{len(labelled)} labelled + {len(pool)} pool (one epoch over the labelled part)",
            "floor": "bare lenet loops with the same image-level passes: crafting passes as "
                     "forward+backward to the input, training passes as forward+backward+Adam",
        },
        "machine": machine(),
        "methods": {},
    }
    options: dict[str, dict[str, Any]] = {
        "standard": {}, "noise": {"sigma": 0.3},
        "pgd": {"eps": EPS, "steps": STEPS}, "fgsm": {"eps": EPS, "guard": None},
        "trades": {"eps": EPS, "steps": STEPS}, "ensemble": {"eps": EPS, "sources": [source]},
        "semi-supervised": {"eps": EPS, "steps": STEPS, "pool": pool, "labeler": source},
    }
    for name in args.methods.split(","):
        train_set = labelled if name == "semi-supervised" else data
        epoch_s, floor_s, passes = [], [], 0
        for repeat in range(args.repeats):
            method = make_method(name, **options[name])
            model = build_seeded("lenet", repeat, input_shape=shape)
            config = TrainConfig(epochs=1, batch_size=BATCH, eval_n=0, seed=repeat)
            result = Trainer(model, train_set, method=method, config=config).fit()
            crafting = result.counters.get("gradient_evaluations", 0) + result.counters.get(
                "source_gradient_evaluations", 0)
            training = training_passes(name, len(train_set))
            passes = crafting + training
            epoch_s.append(result.history[0].seconds)
            floor_s.append(floor_seconds(crafting, training, shape))
        method_s, bare_s = statistics.median(epoch_s), statistics.median(floor_s)
        results["methods"][name] = {
            "seconds_per_epoch": round(method_s, 3),
            "floor_seconds": round(bare_s, 3),
            "overhead": round(method_s / bare_s, 3),
            "passes_per_epoch": passes,
            "crafting_passes": passes - training_passes(name, len(train_set)),
            "passes_per_image": round(passes / len(train_set), 2),
            "epoch_images": len(train_set),
            "seconds_per_epoch_all": epoch_s,
            "floor_seconds_all": floor_s,
        }
        print(f"{name:16s} {method_s:7.2f} s/epoch  floor {bare_s:7.2f} s  x{method_s / bare_s:.2f}  "
              f"({passes / len(train_set):.1f} passes/image)", flush=True)
        write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
