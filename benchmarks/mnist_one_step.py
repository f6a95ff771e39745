"""Accuracy of ``lenet`` trained on the full MNIST training set under one-step attacks.

Trains (or loads the cached) standard ``lenet`` on the 60,000 MNIST training images and
measures accuracy on the 10,000 test images, clean and under FGM (L2, eps=5) and FGSM
(Linf, eps=0.3). A comparable CNN is reported to keep 9.7% (FGM L2 5) and 2.7% (FGSM Linf 0.3).

    python benchmarks/mnist_one_step.py [--data-dir ../shared/data] [--epochs 3]

Writes ``benchmarks/results/mnist_one_step.json`` atomically.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import hardened as hd
from hardened._util.atomic import write_json
from hardened._util.batching import batch_slices, predict_logits
from hardened.attacks import Attack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, cached_lenet, machine  # noqa: E402

PUBLISHED = {"fgm_l2_eps5": 0.097, "fgsm_linf_eps0.3": 0.027}


def robust_accuracy(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    batch_size: int) -> tuple[float, float]:
    """Accuracy of ``model`` on ``attack``'s adversarial examples of ``(x, y)``; and seconds."""
    correct, start = 0, time.perf_counter()
    for part in batch_slices(len(x), batch_size):
        result = attack(model, x[part], y[part])
        correct += int((result.pred_adv == result.labels).sum())
    return correct / len(x), time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the measurement and write the JSON; returns what it wrote."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                        help="folder holding mnist/ IDX files (default: ../shared/data)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--batch-size", type=int, default=500, help="attack batch size")
    parser.add_argument("--model", default=str(RESULTS / "models" / "lenet-mnist.safetensors"),
                        help="cached model file (trained and saved here when missing)")
    parser.add_argument("--out", default=str(RESULTS / "mnist_one_step.json"))
    args = parser.parse_args(argv)

    splits = hd.load_splits("mnist", data_dir=args.data_dir)
    model, record = cached_lenet(splits.train, splits.test, Path(args.model), epochs=args.epochs)
    x, y = splits.test.x, splits.test.y
    clean = float((predict_logits(model, x).argmax(1) == y).float().mean())
    rows: dict[str, Any] = {}
    for key, attack in (
        ("fgm_l2_eps5", hd.FGM(eps=5.0)),
        ("fgsm_linf_eps0.3", hd.FGSM(eps=0.3)),
    ):
        acc, seconds = robust_accuracy(attack, model, x, y, args.batch_size)
        rows[key] = {
            "attack": repr(attack),
            "accuracy": acc,
            "published_comparable_cnn": PUBLISHED[key],
            "seconds": round(seconds, 2),
        }
        print(f"{key}: accuracy {acc:.4f} (published comparable CNN {PUBLISHED[key]:.3f})")
    out = {
        "benchmark": "mnist_one_step",
        "model": record,
        "test_images": len(x),
        "clean_accuracy": clean,
        "attacks": rows,
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(args.out, out)
    print(f"clean accuracy {clean:.4f}; wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
