"""LRP cost, Captum agreement, explanation quality and explanation-guided attacks on ``lenet``.

Measured in one run, on the same model and images:

1. the cost of one LRP map through the public ``explain_images`` (several composites; the
   internal pass alone beside it) against one forward+backward pass (the plain input gradient
   of the explained logit), median of interleaved repeats; target <= 1.5x;
2. Captum's LRP (epsilon rules) against ours with the ``epsilon`` composite: time and agreement;
3. pixel-flipping areas of LRP and the gradient baselines;
4. I-FGSM against LRP-grad, LRP-flip and LRP-mean and their gradient/random baselines:
   ASR at fixed L0/L2/Linf budgets, median norms, gradient evaluations and images/s.

    python benchmarks/explain_attacks.py --data mnist-5k --n 100
    python benchmarks/explain_attacks.py --data mnist --data-dir ../shared/data --n 100

Writes ``benchmarks/results/explain_attacks-DATA.json`` atomically.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import hardened as hd
from hardened._util.atomic import write_json
from hardened.evaluate.compare import compare_attacks, default_attack_suite
from hardened.explain import make_composite
from hardened.explain.attribute import lrp
from hardened.explain.gradients import target_gradient
from hardened.explain.quality import compare_explanations
from hardened.models.normalize import Normalize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, cached_lenet, machine  # noqa: E402

COMPOSITES = ("epsilon", "epsilon-gamma-box", "epsilon-plus", "epsilon-alpha2-beta1")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def interleaved_medians(functions: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, float]]:
    """Median and minimum seconds per call, wall clock and this process's CPU time, the
    functions run in turn (noise hits all alike). On a shared machine the CPU time is the
    steadier measure: waiting for a core does not count."""
    for f in functions.values():
        f()
    wall: dict[str, list[float]] = {k: [] for k in functions}
    cpu: dict[str, list[float]] = {k: [] for k in functions}
    for _ in range(repeats):
        for name, f in functions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            f()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return {
        k: {"median_s": statistics.median(wall[k]), "min_s": min(wall[k]),
            "cpu_median_s": statistics.median(cpu[k]), "cpu_min_s": min(cpu[k])}
        for k in functions
    }


def lrp_cost(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    """One LRP map per composite against one forward+backward of the explained logit."""
    target = model(x).argmax(1)

    def full_backward() -> None:
        """Training-style pass: input and parameter gradients."""
        for p in model.parameters():
            p.requires_grad_(True)
        x_var = x.detach().requires_grad_(True)
        model(x_var).gather(1, target[:, None]).sum().backward()
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(False)

    functions: dict[str, Callable[[], Any]] = {
        "forward+backward": lambda: target_gradient(model, x, target),
        "forward+backward with parameter gradients": full_backward,
    }
    for name in COMPOSITES:
        composite = make_composite(name)
        functions[f"explain {name}"] = lambda c=composite: hd.explain_images(model, x, composite=c)
        functions[f"lrp pass {name}"] = lambda c=composite: lrp(model, x, target, c)
    timing = interleaved_medians(functions, repeats)
    base = timing["forward+backward"]
    full = timing["forward+backward with parameter gradients"]
    lrp_names = [k for k in timing if k.startswith(("explain ", "lrp pass "))]

    def ratio(k: str, ref: dict[str, float]) -> dict[str, float]:
        return {field: timing[k][f"{field}_s"] / ref[f"{field}_s"]
                for field in ("median", "min", "cpu_median", "cpu_min")}

    ratios = {k: ratio(k, base) for k in lrp_names}
    ratios_full = {k: ratio(k, full) for k in lrp_names}
    return {"batch": len(x), "repeats": repeats, "seconds": timing,
            "ratio_to_forward_backward": ratios,
            "ratio_to_forward_backward_with_parameter_gradients": ratios_full,
            "baseline": "forward+backward = one forward and the input gradient of the explained logit "
                        "(what an attack step pays); the second baseline also computes parameter gradients",
            "timed": "'explain NAME' = the public hd.explain_images(model, x, composite=NAME) (checks, "
                     "predicted class, one LRP pass); 'lrp pass NAME' = the internal pass alone",
            "target_ratio": 1.5}


class _FlatLinear(nn.Linear):
    """Linear that flattens its input: Captum's LRP cannot propagate through nn.Flatten."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))


def captum_comparison(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Captum LRP (epsilon rule everywhere, eps 1e-9) against our ``epsilon`` composite."""
    try:
        from captum.attr import LRP
        from captum.attr._utils.lrp_rules import EpsilonRule, IdentityRule
    except ImportError:
        return {"skipped": "captum is not installed (pip install -e '.[peers]')"}
    layers, twin_layers = list(copy.deepcopy(model)), []
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, nn.Flatten) and isinstance(layers[i + 1], nn.Linear):
            dense = layers[i + 1]
            flat = _FlatLinear(dense.in_features, dense.out_features)
            flat.load_state_dict(dense.state_dict())
            twin_layers.append(flat)
            i += 2
            continue
        twin_layers.append(layer)
        i += 1
    twin = nn.Sequential(*twin_layers).eval()
    target = model(x).argmax(1)
    ours_composite = make_composite("epsilon", epsilon=1e-9)
    captum_lrp = LRP(twin)

    def theirs() -> torch.Tensor:
        # Captum deletes the rules it finds after every call: attach them each time
        for layer in twin:
            if isinstance(layer, Normalize):
                layer.rule = IdentityRule()
            elif isinstance(layer, _FlatLinear):
                layer.rule = EpsilonRule()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return captum_lrp.attribute(x.clone(), target=target).detach()

    def ours() -> torch.Tensor:
        return lrp(model, x, target, ours_composite)[1]

    timing = interleaved_medians({"captum": theirs, "hardened": ours}, repeats)
    a, b = ours(), theirs()
    scale = float(a.abs().max())
    corr = float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
    return {
        "rules": "epsilon (1e-9) on conv/linear/maxpool, identity on Normalize",
        "batch": len(x),
        "seconds": timing,
        "speedup_median": timing["captum"]["median_s"] / timing["hardened"]["median_s"],
        "max_abs_difference_relative_to_max": float((a - b).abs().max()) / scale,
        "correlation": corr,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist-5k", help="mnist-5k or mnist")
    parser.add_argument("--data-dir", default=None, help="folder with mnist/ (for --data mnist)")
    parser.add_argument("--n", type=int, default=100, help="test images attacked and flipped")
    parser.add_argument("--repeats", type=int, default=15, help="timing repeats")
    parser.add_argument("--epochs", type=int, default=3, help="epochs if the model must be trained")
    parser.add_argument("--model", default=None, help="cached model (default results/models/lenet-DATA)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--skip-attacks", action="store_true")
    parser.add_argument("--only-cost", action="store_true", help="LRP cost and Captum only")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    splits = hd.load_splits(args.data, data_dir=args.data_dir)
    model_path = Path(args.model or RESULTS / "models" / f"lenet-{args.data}.safetensors")
    model, record = cached_lenet(splits.train, splits.test, model_path, epochs=args.epochs)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = splits.test.x[: args.n].contiguous(), splits.test.y[: args.n].contiguous()
    out: dict[str, Any] = {"benchmark": "explain_attacks", "data": args.data, "n": len(x),
                           "model": record, "machine": machine()}
    log(f"model {model_path.name}: {record.get('test_accuracy')}")

    out["lrp_cost"] = [lrp_cost(model, x[:batch], args.repeats) for batch in (1, 64)]
    for row in out["lrp_cost"]:
        log(f"LRP cost batch {row['batch']}: " + ", ".join(
            f"{k} {v['median']:.2f}x (cpu {v['cpu_median']:.2f}x)" for k, v in row["ratio_to_forward_backward"].items())
            + " | with parameter gradients: " + ", ".join(
            f"{k} {v['median']:.2f}x (cpu {v['cpu_median']:.2f}x)"
            for k, v in row["ratio_to_forward_backward_with_parameter_gradients"].items()))
    out["captum"] = captum_comparison(model, x[:64], args.repeats)
    log(f"captum: {out['captum']}")

    if args.only_cost:
        target = Path(args.out or RESULTS / f"explain_attacks-cost-{args.data}.json")
        write_json(target, out)
        log(f"wrote {target}")
        return out
    start = time.perf_counter()
    curves = compare_explanations(model, x, y, steps=20, max_fraction=0.3, seed=0)
    out["pixel_flipping"] = {"seconds": time.perf_counter() - start, "fill": 0.0, "max_fraction": 0.3,
                             "area": {c.method: c.area for c in curves}, "curves": [c.to_dict() for c in curves]}
    log(f"pixel flipping areas: {out['pixel_flipping']['area']}")

    if not args.skip_attacks:
        suite = default_attack_suite(eps=args.eps, steps=args.steps, step_size=args.step_size)
        comparison = compare_attacks(model, x, y, suite, batch_size=100)
        result = comparison.to_dict()
        result.pop("runs")
        out["attacks"] = result
        for row in result["summary"]:
            log(f"{row['label']}: ASR {row['success_rate']:.3f}, median {row['median_norms_of_successes']}, "
                f"{row['gradient_evaluations_per_image']:.1f} grads/img, {row['images_per_second']:.1f} img/s")
    target = Path(args.out or RESULTS / f"explain_attacks-{args.data}.json")
    write_json(target, out)
    log(f"wrote {target}")
    return out


if __name__ == "__main__":
    main()
