"""Robust accuracy against the query budget of the black-box attacks (Square, NES, HopSkipJump)
on a small MLP trained on the built-in ``digits`` (8×8), against white-box PGD at the same eps.

Every attack queries the model through ``TorchTarget`` (scores or labels only, no gradients);
the query count per image is the attack's own (``AttackResult.queries``). JSON to stdout or
``--out``. Usage: ``python benchmarks/blackbox_queries.py [--n 100] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from hardened.attacks import NES, PGD, HopSkipJump, Square
from hardened.data import load_splits
from hardened.models.blackbox import TorchTarget
from hardened.train import TrainConfig, train

BUDGETS = (100, 300, 1000, 3000)
SETTINGS = (("linf", 0.1), ("l2", 1.0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    splits = load_splits("digits")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    train(model, splits.train, config=TrainConfig(epochs=15, batch_size=32, lr=3e-3, seed=0), progress=False)
    model.eval()
    x, y = splits.test.x[: args.n], splits.test.y[: args.n]
    rows = []
    for norm, eps in SETTINGS:
        pgd = PGD(eps=eps, norm=norm, steps=50)(model, x, y)
        rows.append({"attack": "pgd-50 (white-box)", "norm": norm, "eps": eps, "queries": None,
                     "clean": pgd.clean_accuracy, "robust": pgd.robust_accuracy, "seconds": pgd.seconds})
        for budget in BUDGETS:
            for attack in (Square(eps=eps, norm=norm, queries=budget, seed=0),
                           NES(eps=eps, norm=norm, queries=budget, seed=0),
                           HopSkipJump(eps=eps, norm=norm, queries=budget, seed=0)):
                start = time.perf_counter()
                result = attack(TorchTarget(model), x, y)
                spent = result.queries.float()
                rows.append({"attack": attack.name, "norm": norm, "eps": eps, "queries": budget,
                             "clean": result.clean_accuracy, "robust": result.robust_accuracy,
                             "mean_queries": float(spent.mean()),
                             "seconds": time.perf_counter() - start})
                print(json.dumps(rows[-1]), flush=True)
    text = json.dumps({"data": "digits", "n": args.n, "rows": rows}, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
