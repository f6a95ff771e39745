"""Train the MNIST lenets compared in the README's "## Certify" section (standard, Gaussian
noise at sigma 0.5, fast-FGSM adversarial) with ``hardened.train``; the certification itself runs
through the CLI (``hardened certify``), see the README.

Usage: python benchmarks/certify_mnist.py [--epochs 2] [--out benchmarks/results/certify-models]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hardened.data import load_splits
from hardened.models import build_model, save_model
from hardened.train import FastFGSM, GaussianNoise, Standard, TrainConfig, accuracy, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default="/work/shared/data")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--methods", default="noise,standard,fgsm")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=60000, help="first N training images")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/certify-models"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_splits("mnist", data_dir=args.data_dir)
    train_data = splits.train.head(args.train_size)
    arch_kwargs = {"input_shape": [1, 28, 28], "num_classes": 10, "mean": [0.1307], "std": [0.3081]}
    methods = {
        "standard": Standard(),
        "noise": GaussianNoise(sigma=args.sigma),
        "fgsm": FastFGSM(eps=0.3),
    }
    report = {}
    for key in args.methods.split(","):
        torch.manual_seed(0)
        model = build_model("lenet", **arch_kwargs)
        start = time.perf_counter()
        result = train(model, train_data, method=methods[key],
                       config=TrainConfig(epochs=args.epochs, batch_size=128, lr=1e-3, seed=0, eval_n=0))
        model.eval()
        test_accuracy = accuracy(model, splits.test)
        name = f"lenet-{key}" + (f"-{args.sigma:g}" if key == "noise" else "")
        save_model(model, args.out / f"{name}.safetensors", arch="lenet", arch_kwargs=arch_kwargs,
                   input_shape=(1, 28, 28), classes=splits.train.classes,
                   training={**result.to_dict(), "data": "mnist", "train_size": len(train_data)})
        report[name] = {"test_accuracy": test_accuracy, "seconds": time.perf_counter() - start,
                        "epochs": args.epochs, "train_size": len(train_data)}
        print(name, report[name], flush=True)
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
