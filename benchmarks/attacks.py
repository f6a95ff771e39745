"""Attack speed and strength: ``hardened`` against a bare loop (the floor) and peer libraries.

Same standard-trained ``lenet`` (mnist-5k), same test images (first ``--n`` of the mnist-5k test
split, one batch), same budget: FGSM (Linf eps 0.3), PGD-40 Linf (eps 0.3, step 0.01875) and
PGD-40 L2 (eps 2.0, step 0.125), random start for PGD. Contenders:

- ``hardened``: ``hd.PGD(..., early_stop=False)`` (run to the end) / ``hd.FGSM``;
- ``hardened_early_stop``: ``hd.PGD(..., early_stop=True)`` (stop attacking a fooled sample);
- ``floor``: the same forward+backward passes and projected steps written inline here;
- ``torchattacks``, ``art`` (adversarial-robustness-toolbox), ``foolbox``: when installed.

Each timing is *time to result*: adversarial images plus their predictions (the robust
accuracy). ``hardened`` and foolbox return the predictions/success themselves (hardened also
checks the inputs and predicts the clean images); for the floor, torchattacks and ART one
no-grad forward pass on the adversarial batch is added inside the timed region. The time of the
library call alone is reported as ``call_s``. Contenders run interleaved (A, B, C, A, B, C...)
after one untimed warm-up each; medians and ratios are reported because the machine is shared.

    bash benchmarks/install-peers.sh && python benchmarks/attacks.py [--repeats 5] [--n 250]

Writes ``benchmarks/results/attacks.json`` atomically (also after each attack, so a partial run
leaves its figures).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hardened as hd
from hardened._util.atomic import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, cached_lenet, machine  # noqa: E402

PEERS = ("torchattacks", "art", "foolbox")


@dataclass(frozen=True)
class Budget:
    """One attack setting: norm, radius, steps, step size and whether PGD starts at random."""

    key: str
    norm: str
    eps: float
    steps: int
    step_size: float
    random_start: bool


BUDGETS = (
    Budget("fgsm_linf_0.3", "linf", 0.3, 1, 0.3, False),
    Budget("pgd40_linf_0.3", "linf", 0.3, 40, 2.5 * 0.3 / 40, True),
    Budget("pgd40_l2_2.0", "l2", 2.0, 40, 2.5 * 2.0 / 40, True),
)


@dataclass
class Contender:
    """A named way to attack a batch: ``run(x, y) -> (x_adv, pred_adv)``, plus notes."""

    name: str
    run: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, float]]
    notes: str
    is_peer: bool = False


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


# ---------------------------------------------------------------------------------------- floor


def floor_attack(model: nn.Module, x: Tensor, y: Tensor, b: Budget, seed: int) -> Tensor:
    """The bare loop: ``steps`` forward+backward passes, steepest-ascent step, projection.

    Linf: ``x' = clamp(x' + a sign(g), max(x - eps, 0), min(x + eps, 1))``;
    L2: ``x' = clip(x + P(x' + a g/||g|| - x))`` with ``P`` the radial projection onto the ball.
    Random start: uniform in the ball (as ``hardened``), from a seeded generator.
    """
    if b.random_start:
        x_adv = hd.ThreatModel(b.norm, b.eps).random_start(x, torch.Generator().manual_seed(seed))
    else:
        x_adv = x.clone()
    lower = (x - b.eps).clamp_(min=0.0) if b.norm == "linf" else None
    upper = (x + b.eps).clamp_(max=1.0) if b.norm == "linf" else None
    n = x.shape[0]
    for _ in range(b.steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach()
        if b.norm == "linf":
            x_adv.add_(grad.sign_(), alpha=b.step_size)
            x_adv = torch.clamp(x_adv, lower, upper)
        else:
            length = grad.reshape(n, -1).norm(dim=1).add_(1e-12)
            x_adv.add_(grad.div_(length.view(n, 1, 1, 1)), alpha=b.step_size)
            delta = x_adv.sub_(x)
            factor = (b.eps / delta.reshape(n, -1).norm(dim=1).add_(1e-12)).clamp_(max=1.0)
            x_adv = delta.mul_(factor.view(n, 1, 1, 1)).add_(x).clamp_(0.0, 1.0)
    return x_adv.detach()


# ------------------------------------------------------------------------------------ contenders


def make_contenders(model: nn.Module, b: Budget, seed: int, peers: tuple[str, ...]) -> tuple[
    list[Contender], dict[str, str]
]:
    """Contenders for budget ``b`` and, per peer that could not be set up, why."""
    out: list[Contender] = []
    skipped: dict[str, str] = {}
    is_fgsm = b.steps == 1

    def timed(fn: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, float]:
        start = time.perf_counter()
        x_adv, pred = fn()
        return x_adv, pred, time.perf_counter() - start

    def hardened_run(
        early_stop: bool, start: bool | str = b.random_start
    ) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor, float]]:
        if is_fgsm:
            attack: hd.Attack = hd.FGSM(eps=b.eps, norm=b.norm)
        else:
            attack = hd.PGD(
                eps=b.eps, norm=b.norm, steps=b.steps, step_size=b.step_size,
                random_start=start, early_stop=early_stop, seed=seed,
            )

        def run(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, float]:
            start = time.perf_counter()
            result = attack(model, x, y)
            seconds = time.perf_counter() - start
            return result.x_adv, result.pred_adv, seconds

        return run

    out.append(Contender(
        "floor",
        lambda x, y: timed(lambda: _with_pred(model, floor_attack(model, x, y, b, seed))),
        "inline loop: the same forward+backward passes, in-place steps, one projection per step; "
        "plus one no-grad forward for the predictions",
    ))
    out.append(Contender(
        "hardened", hardened_run(False),
        "hd.FGSM" if is_fgsm else "hd.PGD(early_stop=False): every sample runs all steps; the "
        "call includes input checks, clean predictions and the final predictions/norms",
    ))
    if not is_fgsm:
        out.append(Contender(
            "hardened_early_stop", hardened_run(True),
            "hd.PGD(early_stop=True): a sample stops being attacked once it is misclassified",
        ))
    if not is_fgsm and b.norm == "l2" and b.random_start:
        out.append(Contender(
            "hardened_radial", hardened_run(False, "radial"),
            "hd.PGD(random_start='radial', early_stop=False): start radius uniform in [0, eps] "
            "(as torchattacks) instead of uniform by volume",
        ))

    if "torchattacks" in peers:
        try:
            import torchattacks

            if is_fgsm:
                ta_attack = torchattacks.FGSM(model, eps=b.eps)
            elif b.norm == "linf":
                ta_attack = torchattacks.PGD(model, eps=b.eps, alpha=b.step_size, steps=b.steps,
                                             random_start=True)
            else:
                ta_attack = torchattacks.PGDL2(model, eps=b.eps, alpha=b.step_size, steps=b.steps,
                                               random_start=True)

            def ta_run(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, float]:
                torch.manual_seed(seed)
                return timed(lambda: _with_pred(model, ta_attack(x, y)))

            out.append(Contender(
                "torchattacks", ta_run,
                f"torchattacks {torchattacks.__version__}: mean CE loss (same direction); "
                + ("" if is_fgsm else "Linf start uniform in the ball" if b.norm == "linf" else
                   "L2 start: random direction times radius eps*U(0,1) (not uniform in the "
                   "ball); gradient normalised with +1e-10")
                + "; plus one no-grad forward for the predictions",
                is_peer=True,
            ))
        except Exception as error:  # noqa: BLE001 - a peer failing to set up is reported
            skipped["torchattacks"] = f"{type(error).__name__}: {error}"

    if "art" in peers:
        try:
            import art
            from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescentPyTorch
            from art.estimators.classification import PyTorchClassifier

            classifier = PyTorchClassifier(
                model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                clip_values=(0.0, 1.0), device_type="cpu",
            )
            art_norm = np.inf if b.norm == "linf" else 2
            if is_fgsm:
                art_attack: Any = FastGradientMethod(classifier, norm=art_norm, eps=b.eps,
                                                     batch_size=10_000)
            else:
                art_attack = ProjectedGradientDescentPyTorch(
                    classifier, norm=art_norm, eps=b.eps, eps_step=b.step_size,
                    max_iter=b.steps, num_random_init=1, batch_size=10_000, verbose=False,
                )

            def art_run(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, float]:
                np.random.seed(seed)
                return timed(lambda: _with_pred(
                    model, torch.from_numpy(art_attack.generate(x.numpy(), y.numpy()))
                ))

            out.append(Contender(
                "art", art_run,
                f"adversarial-robustness-toolbox {art.__version__} "
                + ("FastGradientMethod" if is_fgsm else
                   "ProjectedGradientDescentPyTorch, num_random_init=1 (start uniform in the "
                   "ball, numpy RNG)")
                + "; numpy in/out; its loss_gradient also computes parameter gradients; it "
                "logs a success rate (two extra predictions); plus one no-grad forward for the "
                "predictions",
                is_peer=True,
            ))
        except Exception as error:  # noqa: BLE001
            skipped["art"] = f"{type(error).__name__}: {error}"

    if "foolbox" in peers:
        try:
            import foolbox as fb

            fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device="cpu")
            if is_fgsm:
                fb_attack: Any = fb.attacks.FGSM() if b.norm == "linf" else fb.attacks.FGM()
            elif b.norm == "linf":
                fb_attack = fb.attacks.LinfPGD(abs_stepsize=b.step_size, steps=b.steps,
                                               random_start=True)
            else:
                fb_attack = fb.attacks.L2PGD(abs_stepsize=b.step_size, steps=b.steps,
                                             random_start=True)

            def fb_run(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, float]:
                torch.manual_seed(seed)
                start = time.perf_counter()
                _, clipped, success = fb_attack(fmodel, x, y, epsilons=b.eps)
                seconds = time.perf_counter() - start
                # success = misclassified; -1 marks "not the label" for robust accuracy
                pred = torch.where(success, torch.full_like(y, -1), y)
                return clipped, pred, seconds

            out.append(Contender(
                "foolbox", fb_run,
                f"foolbox {fb.__version__}: summed CE loss; returns its own success mask (one "
                "forward), no extra forward added",
                is_peer=True,
            ))
        except Exception as error:  # noqa: BLE001
            skipped["foolbox"] = f"{type(error).__name__}: {error}"
    return out, skipped


def _with_pred(model: nn.Module, x_adv: Tensor) -> tuple[Tensor, Tensor]:
    return x_adv, _predict(model, x_adv)


# ----------------------------------------------------------------------------------- measuring


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def bench_budget(model: nn.Module, x: Tensor, y: Tensor, b: Budget, repeats: int, seed: int,
                 peers: tuple[str, ...], log: Callable[[str], None]) -> dict[str, Any]:
    """Interleaved timings of every contender on one budget; medians, ratios, robust accuracy."""
    contenders, skipped = make_contenders(model, b, seed, peers)
    threat = hd.ThreatModel(b.norm, b.eps)
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    call_times: dict[str, list[float]] = {c.name: [] for c in contenders}
    strength: dict[str, dict[str, Any]] = {}
    for c in contenders:  # warm-up (untimed) and the strength figures
        try:
            x_adv, pred, _ = c.run(x, y)
        except Exception as error:  # noqa: BLE001 - a peer failing at run time is reported
            skipped[c.name] = f"{type(error).__name__}: {error}"
            continue
        delta = (x_adv - x).reshape(len(x), -1)
        strength[c.name] = {
            "robust_accuracy": float((pred == y).float().mean()),
            "max_linf": float(delta.abs().amax()),
            "max_l2": float(delta.norm(dim=1).amax()),
            "inside_threat_model": bool(threat.contains(x_adv, x, tol=1e-5).all()),
        }
    contenders = [c for c in contenders if c.name in strength]
    for r in range(repeats):
        for c in contenders:
            start = time.perf_counter()
            _, pred, call = c.run(x, y)
            total = time.perf_counter() - start
            times[c.name].append(total)
            call_times[c.name].append(call)
            accuracy = float((pred == y).float().mean())
            if not math.isclose(accuracy, strength[c.name]["robust_accuracy"]):
                strength[c.name].setdefault("robust_accuracy_other_runs", []).append(accuracy)
        log(f"  {b.key} round {r + 1}/{repeats}: "
            + ", ".join(f"{c.name} {times[c.name][-1]:.2f}s" for c in contenders))

    n = len(x)
    floor = _median(times["floor"])
    peer_names = [c.name for c in contenders if c.is_peer]
    fastest = min(peer_names, key=lambda k: _median(times[k])) if peer_names else None
    rows: dict[str, Any] = {}
    for c in contenders:
        med = _median(times[c.name])
        paired = [f / t for f, t in zip(times["floor"], times[c.name], strict=True)]
        rows[c.name] = {
            "notes": c.notes,
            "median_s": med,
            "median_call_s": _median(call_times[c.name]),
            "images_per_s": n / med,
            "throughput_vs_floor": floor / med,
            "throughput_vs_floor_paired_median": _median(paired),
            "throughput_vs_fastest_peer": (_median(times[fastest]) / med) if fastest else None,
            "times_s": [round(t, 4) for t in times[c.name]],
            **strength[c.name],
        }
    peer_acc = [rows[k]["robust_accuracy"] for k in peer_names]
    h = rows["hardened"]
    targets: dict[str, Any] = {
        "run_to_end_vs_floor_ge_0.97": h["throughput_vs_floor"] >= 0.97,
        "run_to_end_vs_fastest_peer_ge_1": (h["throughput_vs_fastest_peer"] or math.inf) >= 1.0,
        "robust_accuracy_le_every_peer": all(h["robust_accuracy"] <= a + 1e-12 for a in peer_acc),
    }
    if "hardened_early_stop" in rows:
        es = rows["hardened_early_stop"]
        time_fraction = es["median_s"] / h["median_s"]
        es["time_vs_run_to_end"] = time_fraction
        targets["early_stop_time_le_one_third"] = time_fraction <= 1 / 3
        targets["early_stop_robust_accuracy_le_run_to_end"] = (
            es["robust_accuracy"] <= h["robust_accuracy"] + 1e-12
        )
    return {
        "budget": {"norm": b.norm, "eps": b.eps, "steps": b.steps, "step_size": b.step_size,
                   "random_start": b.random_start},
        "fastest_peer": fastest,
        "contenders": rows,
        "skipped": skipped,
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and write the JSON; returns what it wrote."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per attack (default 5)")
    parser.add_argument("--n", type=int, default=250, help="images in the batch (default 250)")
    parser.add_argument("--data", default="mnist-5k", help="dataset spec (default mnist-5k)")
    parser.add_argument("--data-dir", default=None, help="folder for IDX data sets")
    parser.add_argument("--attacks", default=",".join(b.key for b in BUDGETS),
                        help="comma-separated subset of: " + ", ".join(b.key for b in BUDGETS))
    parser.add_argument("--peers", default=",".join(PEERS),
                        help="comma-separated peers to include ('' for none)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads for every contender (default 1: on a shared "
                        "machine multi-threaded ops stall on descheduled threads; 0 keeps "
                        "torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None,
                        help="cached model file (default benchmarks/results/models/lenet-DATA."
                        "safetensors; trained and saved there when missing)")
    parser.add_argument("--out", default=str(RESULTS / "attacks.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    splits = hd.load_splits(args.data, data_dir=args.data_dir)
    model_path = Path(args.model or RESULTS / "models" / f"lenet-{args.data}.safetensors")
    model, record = cached_lenet(splits.train, splits.test, model_path, epochs=5, seed=args.seed)
    x, y = splits.test.x[: args.n].contiguous(), splits.test.y[: args.n].contiguous()
    clean = float((_predict(model, x) == y).float().mean())
    log(f"model {record}; clean accuracy on the {len(x)} images {clean:.3f}")
    peers = tuple(p for p in args.peers.split(",") if p)
    wanted = set(args.attacks.split(","))
    out: dict[str, Any] = {
        "benchmark": "attacks",
        "data": args.data,
        "n": len(x),
        "batch_size": len(x),
        "repeats": args.repeats,
        "seed": args.seed,
        "model": record,
        "clean_accuracy": clean,
        "timing": "median wall-clock seconds to adversarial images plus their predictions "
        "(time to result), contenders interleaved round by round after an untimed warm-up; "
        "throughput_vs_floor = floor median / contender median; the _paired_median variant is "
        "the median over rounds of the per-round ratio",
        "machine": machine(),
        "attacks": {},
    }
    for b in BUDGETS:
        if b.key not in wanted:
            continue
        log(f"{b.key}: {args.repeats} interleaved rounds")
        out["attacks"][b.key] = bench_budget(model, x, y, b, args.repeats, args.seed, peers, log)
        out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json(args.out, out)
        for name, row in out["attacks"][b.key]["contenders"].items():
            log(f"  {name:20s} {row['images_per_s']:8.1f} img/s  x{row['throughput_vs_floor']:.3f} "
                f"floor  robust acc {row['robust_accuracy']:.3f}")
    log(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
