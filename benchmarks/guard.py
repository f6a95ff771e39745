"""Guard benchmark: MNIST in-distribution, Fashion-MNIST out, a LeNet trained on MNIST.

For every score (softmax, energy, Mahalanobis, VAE, WGAN-GP + inverter) on the same split:

- the score is fitted on (a subset of) the MNIST training images;
- the MNIST test set is split (seeded) into a calibration half and an evaluation half;
- two thresholds are calibrated on the calibration half: the maximum held-out score
  ("max-test-loss") and 5% false positives (the 95th percentile);
- false positives are measured on the evaluation half, false negatives on Fashion-MNIST test;
- AUROC, FPR at 95% TPR and the bare LeNet's overconfidence on Fashion-MNIST;
- detection rate under plain PGD and under the adaptive attack (guard.adaptive).

The published figures for this setting are listed beside ours in the JSON and the README. Writes
``benchmarks/results/guard.json`` (after each score, so an interrupted run keeps what it has) and
one histogram PNG per score.

    python benchmarks/guard.py --data-dir /work/shared/data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from hardened._util.atomic import write_json
from hardened._util.seeding import make_generator
from hardened.data import load_splits
from hardened.guard import GuardedClassifier, calibrate_threshold, make_score
from hardened.guard.adaptive import attack_guard
from hardened.guard.evaluation import evaluate_guard
from hardened.models import build_model, load_model, save_model
from hardened.report.plots import plot_score_histograms
from hardened.train import TrainConfig, accuracy, train

RESULTS = Path(__file__).resolve().parent / "results"

PUBLISHED = {
    "vae": {"max_threshold": {"fpr": 0.0, "fnr": 0.0355}, "p95_threshold": {"fpr": 0.05, "fnr": 0.0025}},
    "wgan-inverter": {"p95_threshold": {"fpr": 0.05, "fnr": 0.344}},
    "goal": "FNR < 0.1% at 5% FPR for the best score",
}


def classifier(args: argparse.Namespace, splits: Any) -> tuple[torch.nn.Module, str, dict[str, Any]]:
    if args.classifier:
        loaded = load_model(args.classifier)
        return loaded.model, str(Path(args.classifier).resolve()), dict(loaded.info.training)
    path = RESULTS / "guard_lenet.safetensors"
    if path.exists() and not args.retrain:
        loaded = load_model(path)
        return loaded.model, str(path), loaded.info.training
    order = torch.randperm(len(splits.train), generator=make_generator(args.seed))[: args.train_n]
    train_set = splits.train.subset(order)
    kwargs = {"input_shape": [1, 28, 28], "num_classes": 10, "mean": [0.1307], "std": [0.3081]}
    model = build_model("lenet", **kwargs)
    config = TrainConfig(epochs=args.epochs, batch_size=128, lr=1e-3, seed=args.seed)
    result = train(model, train_set, config=config, progress=True)
    model.eval()
    record = {"train_n": len(train_set), "epochs": args.epochs, "seconds": result.seconds}
    save_model(model, path, arch="lenet", arch_kwargs=kwargs, input_shape=(1, 28, 28),
               classes=splits.train.classes, training=record)
    return model, str(path), record


def score_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name == "mahalanobis-all":
        return {"layers": "all"}
    if name == "vae":
        return {"epochs": args.vae_epochs, "hidden": args.vae_hidden, "latent": args.vae_latent,
                "seed": args.seed}
    if name == "wgan-inverter":
        return {"gan_steps": args.gan_steps, "inverter_steps": args.inverter_steps, "width": args.gan_width,
                "latent": args.gan_latent, "critic_steps": args.critic_steps, "lr": args.gan_lr, "seed": args.seed}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/work/shared/data")
    parser.add_argument("--scores", default="softmax,energy,mahalanobis,mahalanobis-all,vae,wgan-inverter",
                        help="comma-separated; mahalanobis-all is Mahalanobis with layers='all'")
    parser.add_argument("--classifier", default=None,
                        help="a saved MNIST classifier to guard (default: train a LeNet, cached in results/)")
    parser.add_argument("--train-n", type=int, default=60000, help="MNIST training images (classifier)")
    parser.add_argument("--epochs", type=int, default=3, help="LeNet epochs")
    parser.add_argument("--score-train-n", type=int, default=60000, help="training images for the scores")
    parser.add_argument("--vae-epochs", type=int, default=30)
    parser.add_argument("--vae-hidden", type=int, default=400)
    parser.add_argument("--vae-latent", type=int, default=20)
    parser.add_argument("--gan-steps", type=int, default=2000)
    parser.add_argument("--critic-steps", type=int, default=5)
    parser.add_argument("--inverter-steps", type=int, default=2000)
    parser.add_argument("--gan-width", type=int, default=16)
    parser.add_argument("--gan-latent", type=int, default=64)
    parser.add_argument("--gan-lr", type=float, default=1e-4)
    parser.add_argument("--wgan-eval-n", type=int, default=2000, help="images per set for the (slow) delta_z search")
    parser.add_argument("--attack-n", type=int, default=200)
    parser.add_argument("--attack-eps", type=float, default=0.15)
    parser.add_argument("--attack-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "guard.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    mnist = load_splits("mnist", data_dir=args.data_dir)
    fashion = load_splits("fashion-mnist", data_dir=args.data_dir).test
    model, model_ref, model_record = classifier(args, mnist)
    order = torch.randperm(len(mnist.test), generator=make_generator(args.seed + 1))
    calib, heldout = mnist.test.subset(order[:5000]), mnist.test.subset(order[5000:])
    score_train = mnist.train.subset(
        torch.randperm(len(mnist.train), generator=make_generator(args.seed + 2))[: args.score_train_n]
    )
    report: dict[str, Any] = {
        "setting": {"in_distribution": "MNIST", "ood": "Fashion-MNIST test (10,000)",
                    "calibration": "MNIST test, seeded half (5,000)", "evaluation": "other half (5,000)",
                    "classifier": {"arch": "lenet", "path": model_ref, **model_record,
                                   "test_accuracy": accuracy(model, mnist.test)},
                    "score_train_n": len(score_train), "args": vars(args), "torch_threads": args.threads},
        "published": PUBLISHED,
        "scores": {},
    }
    out = Path(args.out)
    if out.exists():
        import json

        previous = json.loads(out.read_text())
        report["scores"] = {k: v for k, v in previous.get("scores", {}).items()}
    for name in [s.strip() for s in args.scores.split(",") if s.strip()]:
        start = time.perf_counter()
        # mahalanobis-all: the multi-layer variant, a row of its own
        score = make_score(name.removesuffix("-all"), model, **score_options(name, args))
        score.fit(score_train, progress=True)
        fit_seconds = time.perf_counter() - start
        n_eval = args.wgan_eval_n if name == "wgan-inverter" else None
        c_x = calib.x[:n_eval] if n_eval else calib.x
        h_x = heldout.x[:n_eval] if n_eval else heldout.x
        f_x = fashion.x[:n_eval] if n_eval else fashion.x
        start = time.perf_counter()
        calib_scores = score.score(c_x)
        entry: dict[str, Any] = {"options": score.config()["options"], "fit_seconds": fit_seconds,
                                 "fit_record": score.fit_record, "thresholds": {}}
        for label, kwargs in (("max_threshold", {"method": "max"}), ("p95_threshold", {"fpr": 0.05})):
            cal = calibrate_threshold(calib_scores, **kwargs)
            guard = GuardedClassifier(model, score, cal, model_ref=model_ref)
            evaluation = evaluate_guard(guard, h_x, {"fashion-mnist": f_x}, id_name="mnist")
            r = evaluation.ood[0]
            entry["thresholds"][label] = {"threshold": cal.threshold, "fpr": evaluation.id_fpr, "fnr": r.fnr}
            entry.update({"auroc": r.auroc, "fpr_at_95_tpr": r.fpr_at_95_tpr,
                          "overconfident": r.overconfident, "n_id": evaluation.id_n, "n_ood": r.n,
                          "calibration_summary": cal.summary.to_dict()})
            if label == "p95_threshold":
                plot_score_histograms(evaluation, RESULTS / f"guard_{name}_scores.png")
        entry["score_seconds"] = time.perf_counter() - start
        guard = GuardedClassifier(model, score, calibrate_threshold(calib_scores, fpr=0.05), model_ref=model_ref)
        n_attack = min(args.attack_n, 50) if name == "wgan-inverter" else args.attack_n
        start = time.perf_counter()
        attacked = attack_guard(guard, heldout.x[:n_attack], heldout.y[:n_attack], eps=args.attack_eps,
                                steps=args.attack_steps, seed=args.seed)
        entry["attack"] = attacked.to_dict() | {"seconds": time.perf_counter() - start}
        entry["run_args"] = vars(args)  # each row keeps the arguments of the run that made it
        report["scores"][name] = entry
        write_json(out, report)
        t = entry["thresholds"]
        print(f"{name}: max thr FP {100 * t['max_threshold']['fpr']:.2f}% FN {100 * t['max_threshold']['fnr']:.2f}% | "
              f"p95 FP {100 * t['p95_threshold']['fpr']:.2f}% FN {100 * t['p95_threshold']['fnr']:.2f}% | "
              f"AUROC {entry['auroc']:.4f} | attack det pgd/adaptive "
              f"{[round(a['detection_rate'], 3) for a in entry['attack']['attacks']]} ({fit_seconds:.0f}s fit)",
              flush=True)


if __name__ == "__main__":
    main()
