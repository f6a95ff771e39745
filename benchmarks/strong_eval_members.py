"""Do APGD-CE + APGD-T + Square (ours) match the reference AutoAttack, or is FAB-T needed?

Same model, same images (first ``--n`` of the mnist-5k test split), same threat model (Linf 0.3
by default). Ours: APGD-CE (100 steps) -> APGD-T (9 targets x 100 steps) -> Square (5,000
queries), each on the points the previous ones left robust (the reference's cascade order,
without FAB-T). Reference: ``pyautoattack``'s AutoAttack ``version="standard"`` (APGD-CE, APGD-T,
FAB-T, Square), whose log gives the robust accuracy after each of its attacks, so FAB-T's
marginal contribution is read off directly. One thread for both.

``--candidates`` runs FMN (100 and 300 steps), Square (5,000 queries) and APGD-CE with the
gradient under Gaussian noise (``smoothing`` 0.1-0.25), each alone on those same points.

``--fab-probe`` also runs the reference's FAB-T alone on the points our APGD-CE and APGD-T left
robust, next to our Square on the same points: how many FAB-T breaks that Square does not.

    hardened train --data mnist-5k --arch lenet --method pgd --eps 0.3 --steps 10 \\
        --eps-warmup 0.4 --epochs 20 --seed 0 --out /tmp/pgd-lenet.safetensors
    python benchmarks/strong_eval_members.py --model /tmp/pgd-lenet.safetensors --n 200

Writes ``benchmarks/results/strong_eval_members.json`` atomically.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import hardened as hd
from hardened._util.atomic import write_json
from hardened.attacks import make_attack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

MEMBERS = (
    ("apgd-ce", {"steps": 100}),
    ("apgd-t", {"steps": 100, "n_target_classes": 9}),
    ("square", {"queries": 5000}),
)


def ours(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, seed: int) -> dict[str, Any]:
    """The three members in order on the still-robust points; per-member figures."""
    start = time.perf_counter()
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    record: dict[str, Any] = {"clean_accuracy": float(robust.float().mean()), "members": []}
    for name, options in MEMBERS:
        index = robust.nonzero().squeeze(1)
        if index.numel() == 0:
            break
        result = make_attack(name, norm=norm, eps=eps, seed=seed, **options)(model, x[index], y[index])
        robust[index[result.success]] = False
        record.setdefault("robust_after", {})[name] = robust.clone()
        record["members"].append({
            "attack": name,
            "options": options,
            "attacked": int(index.numel()),
            "broken": int(result.success.sum()),
            "robust_accuracy_after": float(robust.float().mean()),
            "seconds": round(result.seconds, 2),
            "forward_count": result.forward_count,
            "gradient_count": result.gradient_count,
            "queries": result.total_queries,
        })
    record["robust_accuracy"] = float(robust.float().mean())
    record["seconds"] = round(time.perf_counter() - start, 2)
    record["robust"] = robust.tolist()
    return record


def fab_probe(model: nn.Module, x: Tensor, y: Tensor, robust: Tensor, norm: str, eps: float, seed: int) -> dict[str, Any]:
    """Reference FAB-T (9 targets, 100 steps, as in its standard version) and our Square (5,000
    queries) on the same points; what each breaks and what FAB-T adds to Square."""
    from pyautoattack.fab_pt import FABAttack_PT

    index = robust.nonzero().squeeze(1)
    xr, yr = x[index], y[index]
    start = time.perf_counter()
    with torch.random.fork_rng():
        fab = FABAttack_PT(model, norm={"linf": "Linf", "l2": "L2"}[norm], n_restarts=1, n_iter=100, eps=eps,
                           seed=seed, targeted=True, n_target_classes=9)
        adv = fab.perturb(xr, yr)
    fab_seconds = time.perf_counter() - start
    threat = hd.ThreatModel(norm, eps)
    with torch.no_grad():
        fab_broken = (model(adv).argmax(1) != yr) & threat.contains(adv, xr, tol=1e-4)
    square = make_attack("square", norm=norm, eps=eps, queries=5000, seed=seed)(model, xr, yr)
    return {
        "points": int(index.numel()),
        "fab_t_broken": int(fab_broken.sum()), "fab_t_seconds": round(fab_seconds, 2),
        "square_broken": int(square.success.sum()), "square_seconds": round(square.seconds, 2),
        "fab_t_only": int((fab_broken & ~square.success).sum()),
        "either": int((fab_broken | square.success).sum()),
    }


CANDIDATES = (
    ("fmn", {"steps": 100}),
    ("fmn", {"steps": 300}),
    ("square", {"queries": 5000}),
    *(("apgd-ce", {"steps": 100, "smoothing": s}) for s in (0.1, 0.15, 0.2, 0.25)),
)


def candidates_probe(model: nn.Module, x: Tensor, y: Tensor, robust: Tensor, norm: str, eps: float,
                     seed: int) -> list[dict[str, Any]]:
    """Each candidate member alone on the points APGD-CE and APGD-T left robust: what it breaks
    (verified on the model, inside the ball) and its cost. FMN with ``eps`` is bounded, so a
    point counts only when its minimal perturbation found is within eps."""
    index = robust.nonzero().squeeze(1)
    xr, yr = x[index], y[index]
    out = []
    for name, options in CANDIDATES:
        cpu = time.process_time()
        result = make_attack(name, norm=norm, eps=eps, **({"seed": seed} if name != "fmn" else {}), **options)(
            model, xr, yr)
        out.append({
            "attack": name, "options": options, "points": int(index.numel()),
            "broken": int(result.success.sum()), "cpu_seconds": round(time.process_time() - cpu, 2),
            "forward_count": result.forward_count, "gradient_count": result.gradient_count,
        })
        print("candidate", out[-1], flush=True)
    return out


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.after: dict[str, dict[str, float]] = {}

    def emit(self, entry: logging.LogRecord) -> None:
        found = re.match(r"robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)", entry.getMessage())
        if found:
            self.after[found[1].lower()] = {"robust_accuracy_after": float(found[2]) / 100, "cumulative_seconds": float(found[3])}


def reference(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, seed: int) -> dict[str, Any]:
    """pyautoattack's standard AutoAttack; robust accuracy after each of its attacks from its log."""
    from pyautoattack import AutoAttack

    collect = _Collect()
    logger = logging.getLogger("auto-attack")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(collect)
    try:
        start = time.perf_counter()
        evaluator = AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard", seed=seed)
        _, y_adv = evaluator.run_standard_evaluation(x, y, batch_size=len(x))
        seconds = time.perf_counter() - start
    finally:
        logger.removeHandler(collect)
    robust = y_adv == y
    return {
        "robust_accuracy": float(robust.float().mean()),
        "seconds": round(seconds, 2),
        "after_each": collect.after,
        "robust": robust.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("/tmp/pgd-lenet.safetensors"))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--norm", default="linf", choices=["linf", "l2"])
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference", action="store_true", help="skip pyautoattack")
    parser.add_argument("--fab-probe", action="store_true", help="FAB-T vs Square on what APGD leaves")
    parser.add_argument("--candidates", action="store_true",
                        help="FMN, Square 5,000 and smoothed APGD-CE, each alone on what APGD leaves")
    parser.add_argument("--out", type=Path, default=RESULTS / "strong_eval_members.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.model.is_file():
        sys.exit(f"{args.model} not found: train it with the command in this script's docstring")
    model = hd.load_model(args.model).model.eval()
    test = hd.load_splits("mnist-5k").test
    x, y = test.x[: args.n].contiguous(), test.y[: args.n].contiguous()
    out: dict[str, Any] = {
        "model": str(args.model), "data": "mnist-5k test", "n": len(x), "norm": args.norm, "eps": args.eps,
        "seed": args.seed, "machine": machine(),
    }
    out["ours"] = ours(model, x, y, args.norm, args.eps, args.seed)
    after = out["ours"].pop("robust_after")
    print(f"ours: {out['ours']['robust_accuracy']:.1%} in {out['ours']['seconds']} s")
    if args.fab_probe:
        left = after.get("apgd-t", torch.zeros(len(x), dtype=torch.bool))
        out["fab_probe"] = fab_probe(model, x, y, left, args.norm, args.eps, args.seed)
        print("fab probe:", out["fab_probe"])
    if args.candidates:
        left = after.get("apgd-t", torch.zeros(len(x), dtype=torch.bool))
        out["candidates"] = candidates_probe(model, x, y, left, args.norm, args.eps, args.seed)
    write_json(args.out, out)
    if not args.no_reference:
        out["reference"] = reference(model, x, y, args.norm, args.eps, args.seed)
        ref = out["reference"]
        print(f"reference: {ref['robust_accuracy']:.1%} in {ref['seconds']} s; after each: {ref['after_each']}")
        mine = torch.tensor(out["ours"].pop("robust"))
        theirs = torch.tensor(ref.pop("robust"))
        out["comparison"] = {
            "robust_accuracy_gap_points": 100 * (out["ours"]["robust_accuracy"] - ref["robust_accuracy"]),
            "time_ratio_ours_over_reference": out["ours"]["seconds"] / ref["seconds"],
            "robust_for_ours_only": int((mine & ~theirs).sum()),
            "robust_for_reference_only": int((~mine & theirs).sum()),
        }
        print(out["comparison"])
    write_json(args.out, out)


if __name__ == "__main__":
    main()
