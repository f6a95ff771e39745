"""Black-box, few-pixel and minimal-norm attacks beside their peers (torchattacks, ART, foolbox).

Same models and images for every contender: the standard ``lenet`` (``benchmarks/attacks.py``'s,
cached in ``results/models``) and a PGD-trained ``lenet`` (``--pgd-model``, Linf 0.3), on the
first ``--n`` mnist-5k test images that both classify correctly. Every contender queries the model
through one counting wrapper (``Counted``), so queries are measured the same way for all; success
and norms are measured by this script on the returned images.

- Square (Linf 0.3 and L2 2.0, ``--square-queries`` per image): ours, torchattacks, ART.
- HopSkipJump L2 (``--n-hsja`` images, one at a time): the median over images of the L2 of the
  closest adversarial image the attack had *queried* after 1,000 / 5,000 / 10,000 queries (the
  same envelope for ours and ART's; ours' returned result at each budget beside it).
- One-pixel (k = 1 and 3, ``--n-onepixel`` images, equal population and generations): ours,
  torchattacks.
- C&W L2 (9 × 100 steps; torchattacks: one constant, 900 steps): ours, torchattacks, foolbox.
- FMN L2 / Linf (100 steps): ours, foolbox.

Each row: success rate, median norm (minimal attacks: over all images, ``inf`` for failures),
queries (counted images) per success, wall seconds and process CPU seconds, load average.

    nice -n 10 python benchmarks/blackbox.py [--n 100] [--only square] [--redo]

Rows already in ``--out`` are kept (resume) unless ``--redo`` or ``--only`` selects them.
Writes ``benchmarks/results/blackbox.json`` atomically after each row.
"""

# ruff: noqa: B023  (every closure below is called at once by row(), inside its loop iteration)

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import hardened as hd
from hardened._util.atomic import write_json
from hardened.attacks import make_attack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, cached_lenet, machine  # noqa: E402

HSJA_BUDGETS = (1000, 5000, 10000)


class _Budget(Exception):
    """The single image under attack has spent its query budget (stops a peer's HSJA)."""


class Counted(nn.Module):
    """The model, counting every image it is asked about.

    With ``track(x0, y, budget)`` it also records, per query, the L2 distance to ``x0`` of each
    queried image that is misclassified (the HopSkipJump envelope) and raises ``_Budget`` once
    more than ``budget`` images were asked about.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.count = 0
        self._track: tuple[Tensor, int, int] | None = None
        self.distances: list[float] = []

    def track(self, x0: Tensor | None, y: int = 0, budget: int = 0) -> None:
        self._track = None if x0 is None else (x0, y, budget)
        self.distances = []

    def forward(self, x: Tensor) -> Tensor:
        if self._track is not None:
            x0, y, budget = self._track
            if len(self.distances) + x.shape[0] > budget:
                raise _Budget
        self.count += x.shape[0]
        x = x.float()  # ART's HopSkipJump asks in float64
        logits = self.model(x)
        if self._track is not None:
            wrong = logits.argmax(1) != y
            dist = (x.detach() - x0).flatten(1).norm(dim=1)
            self.distances.extend(torch.where(wrong, dist, torch.full_like(dist, math.inf)).tolist())
        return logits

    def envelope(self, at: int) -> float:
        """The closest misclassified image among the first ``at`` queries (``inf``: none)."""
        return min(self.distances[:at], default=math.inf)


def _norm(delta: Tensor, norm: str) -> Tensor:
    flat = delta.flatten(1).double()
    return {"l0": (flat != 0).sum(1).double(), "l2": flat.norm(dim=1), "linf": flat.abs().amax(1)}[norm]


def _timed(run: Callable[[], Tensor]) -> tuple[Tensor, float, float, list[float]]:
    wall, cpu = time.perf_counter(), time.process_time()
    load = os.getloadavg()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_adv = run()
    return x_adv, time.perf_counter() - wall, time.process_time() - cpu, [load, os.getloadavg()[0]]


def measure(
    counted: Counted, x: Tensor, y: Tensor, norm: str, run: Callable[[], Tensor], *, minimal: bool, eps: float | None = None
) -> dict[str, Any]:
    """Run one contender and measure its images the same way as every other's."""
    counted.count = 0
    x_adv, wall, cpu, load = _timed(run)
    x_adv = torch.as_tensor(np.asarray(x_adv) if not isinstance(x_adv, Tensor) else x_adv).float().reshape(x.shape)
    queries = counted.count
    with torch.no_grad():
        success = counted.model(x_adv).argmax(1) != y
    size = _norm(x_adv - x, norm)
    if eps is not None:  # a bounded attack: outside the ball (beyond float slack) is a failure
        success &= size <= eps * (1 + 1e-4) + 1e-6
    sizes = torch.where(success, size, torch.full_like(size, math.inf))
    succeeded = int(success.sum())
    blank = (x_adv.flatten(1).abs().amax(1) == 0) & (x.flatten(1).abs().amax(1) > 0)
    return {
        "n": int(x.shape[0]),
        "success_rate": succeeded / x.shape[0],
        "median_norm": float(sizes.median()) if minimal else (float(size[success].median()) if succeeded else None),
        "norm": norm,
        "queries": queries,
        "queries_per_success": queries / succeeded if succeeded else None,
        "blank_returns": int(blank.sum()),  # all-black images returned (foolbox C&W's failures)
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "loadavg_1min": load,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The README table: one line per row (HopSkipJump: the median L2 at each budget)."""
    lines = ["| model | attack, budget | contender | success | median norm | queries / success | CPU s | wall s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        model, rest = r["key"].split(" ", 1)
        setting = rest.rsplit(" " + r["contender"], 1)[0]
        variant = rest[len(setting) + len(r["contender"]) + 2:]
        who = r["contender"] + (f" {variant}" if variant else "")
        if "median_l2_at" in r:
            at = " / ".join(f"{v:.2f}" for v in r["median_l2_at"].values())
            lines.append(f"| {model} | {setting}, median L2 at 1k / 5k / 10k queries | {who} | | {at} | | "
                         f"{r['cpu_seconds']:.1f} | {r['wall_seconds']:.0f} |")
            continue
        norm = r.get("median_norm")
        shown = "" if norm is None else ("inf" if math.isinf(norm) else f"{norm:.3g}")
        per = "" if r.get("queries_per_success") is None else f"{r['queries_per_success']:,.0f}"
        blank = f" ({r['blank_returns']} blank)" if r.get("blank_returns") else ""
        lines.append(f"| {model} | {setting} | {who} | {100 * r['success_rate']:.0f}%{blank} | {shown} | {per} | "
                     f"{r['cpu_seconds']:.1f} | {r['wall_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--n-hsja", type=int, default=20)
    parser.add_argument("--n-onepixel", type=int, default=30)
    parser.add_argument("--square-queries", type=int, default=1000)
    parser.add_argument("--maxiter", type=int, default=30, help="one-pixel DE generations")
    parser.add_argument("--pgd-model", type=Path, default=Path("/tmp/pgd-lenet.safetensors"))
    parser.add_argument("--out", type=Path, default=RESULTS / "blackbox.json")
    parser.add_argument("--only", default=None, help="(re)measure only rows whose key contains this")
    parser.add_argument("--skip", default=None, help="do not measure rows whose key contains this")
    parser.add_argument("--redo", action="store_true", help="re-measure rows already in --out")
    parser.add_argument("--table", action="store_true", help="print --out as the README's markdown table and stop")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(args.out.read_text())["rows"]))
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)

    import foolbox as fb
    import torchattacks
    from art.attacks.evasion import HopSkipJump as ArtHSJA
    from art.attacks.evasion import SquareAttack as ArtSquare
    from art.estimators.classification import PyTorchClassifier

    splits = hd.load_splits("mnist-5k")
    standard, record = cached_lenet(splits.train, splits.test, RESULTS / "models" / "lenet-mnist-5k", epochs=5)
    loaded = hd.load_model(args.pgd_model)
    models = {"standard": standard.eval(), "pgd": loaded.model.eval()}
    with torch.no_grad():
        right = torch.ones(len(splits.test), dtype=torch.bool)
        for model in models.values():
            right &= model(splits.test.x).argmax(1) == splits.test.y
    chosen = right.nonzero().flatten()
    previous = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    kept = {row["key"]: row for row in previous}
    report: dict[str, Any] = {
        "machine": machine() | {"nice": os.nice(0), "torch_threads": torch.get_num_threads()},
        "models": {"standard": record, "pgd": {"file": str(args.pgd_model), "method": loaded.info.training.get("method")}},
        "images": "first test images of mnist-5k classified correctly by both models",
        "rows": [],
    }

    def row(key: str, contender: str, compute: Callable[[], dict[str, Any]]) -> None:
        selected = (args.only is None or args.only in key) and (args.skip is None or args.skip not in key)
        if key in kept and not (args.redo and selected):
            report["rows"].append(kept[key])
            return
        if not selected:
            return
        out = {"key": key, "contender": contender} | compute()
        report["rows"].append(out)
        write_json(args.out, report)
        print(json.dumps(out), flush=True)

    for name, model in models.items():
        counted = Counted(model).eval()
        art_model = PyTorchClassifier(
            counted, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0),
            device_type="cpu",
        )
        fmodel = fb.PyTorchModel(counted, bounds=(0.0, 1.0))
        x, y = splits.test.x[chosen[: args.n]], splits.test.y[chosen[: args.n]]
        xn = x.numpy()

        # Square: equal query budgets, defaults otherwise.
        q = args.square_queries
        for norm, eps in (("linf", 0.3), ("l2", 2.0)):
            label = f"{name} square {norm} eps={eps} q={q}"
            for rescale in (False, True):
                ours = make_attack("square", eps=eps, norm=norm, queries=q, seed=0, rescale_schedule=rescale)
                row(f"{label} hardened{' rescaled' if rescale else ''}", "hardened", lambda: measure(
                    counted, x, y, norm, lambda: ours(counted, x, y).x_adv, minimal=False, eps=eps))
            ta = torchattacks.Square(counted, norm="Linf" if norm == "linf" else "L2", eps=eps, n_queries=q, seed=0)
            row(f"{label} torchattacks", "torchattacks", lambda: measure(
                counted, x, y, norm, lambda: ta(x, y), minimal=False, eps=eps))
            art_sq = ArtSquare(art_model, norm=np.inf if norm == "linf" else 2, eps=eps, max_iter=q, batch_size=1024, verbose=False)
            row(f"{label} art", "art", lambda: measure(
                counted, x, y, norm, lambda: art_sq.generate(xn, y=y.numpy()), minimal=False, eps=eps))

        # HopSkipJump L2: one image at a time, the queried-adversarial envelope at each budget.
        xh, yh = x[: args.n_hsja], y[: args.n_hsja]

        def hsja(run_one: Callable[[Tensor, Tensor], Any]) -> dict[str, Any]:
            wall, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
            curves = []
            for i in range(xh.shape[0]):
                counted.track(xh[i], int(yh[i]), HSJA_BUDGETS[-1])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        run_one(xh[i : i + 1], yh[i : i + 1])
                    except _Budget:
                        pass
                curves.append([counted.envelope(b) for b in HSJA_BUDGETS])
                counted.track(None)
            medians = np.median(np.array(curves), axis=0)
            return {
                "n": int(xh.shape[0]), "norm": "l2",
                "median_l2_at": {str(b): float(m) for b, m in zip(HSJA_BUDGETS, medians, strict=True)},
                "wall_seconds": round(time.perf_counter() - wall, 2),
                "cpu_seconds": round(time.process_time() - cpu, 2), "loadavg_1min": [load, os.getloadavg()[0]],
            }

        label = f"{name} hsja l2"
        ours_h = make_attack("hsja", eps=1e3, norm="l2", queries=HSJA_BUDGETS[-1], iterations=1000, early_stop=False, seed=0)
        row(f"{label} hardened", "hardened", lambda: hsja(lambda xi, yi: ours_h(counted, xi, yi)))
        art_h = ArtHSJA(art_model, norm=2, max_iter=1000, batch_size=1024, verbose=False)
        row(f"{label} art", "art", lambda: hsja(lambda xi, yi: art_h.generate(xi.numpy(), y=yi.numpy())))

        def hsja_returned() -> dict[str, Any]:
            out: dict[str, Any] = {"n": int(xh.shape[0]), "norm": "l2", "median_l2_at": {}}
            wall, cpu = time.perf_counter(), time.process_time()
            for b in HSJA_BUDGETS:
                attack = make_attack("hsja", eps=1e3, norm="l2", queries=b, iterations=1000, early_stop=False, seed=0)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = attack(model, xh, yh)
                sizes = torch.where(result.success, result.norms["l2"].double(), torch.full((xh.shape[0],), math.inf, dtype=torch.float64))
                out["median_l2_at"][str(b)] = float(sizes.median())
            return out | {"wall_seconds": round(time.perf_counter() - wall, 2), "cpu_seconds": round(time.process_time() - cpu, 2)}

        row(f"{label} hardened (returned)", "hardened", hsja_returned)

        # One-pixel: the same population (ours: scipy's multiplier 10 × k(2+C) genes) and generations.
        xo, yo = x[: args.n_onepixel], y[: args.n_onepixel]
        for k in (1, 3):
            label = f"{name} onepixel k={k} gens={args.maxiter}"
            ours_o = make_attack("onepixel", max_pixels=k, popsize=10, maxiter=args.maxiter, seed=0)
            row(f"{label} hardened", "hardened", lambda: measure(
                counted, xo, yo, "l0", lambda: ours_o(counted, xo, yo).x_adv, minimal=False))
            ta_o = torchattacks.OnePixel(counted, pixels=k, steps=args.maxiter, popsize=10 * k * 3)
            row(f"{label} torchattacks", "torchattacks", lambda: measure(
                counted, xo, yo, "l0", lambda: ta_o(xo, yo), minimal=False))

        # C&W L2: 900 gradient steps each.
        label = f"{name} cw l2 900 steps"
        for lr in (0.01, 0.1):
            ours_c = make_attack("cw", steps=100, binary_steps=9, lr=lr)
            row(f"{label} hardened lr={lr}", "hardened", lambda: measure(
                counted, x, y, "l2", lambda: ours_c(counted, x, y).x_adv, minimal=True))
        ta_c = torchattacks.CW(counted, c=1, kappa=0, steps=900, lr=0.01)
        row(f"{label} torchattacks c=1", "torchattacks", lambda: measure(
            counted, x, y, "l2", lambda: ta_c(x, y), minimal=True))
        for lr in (0.01, 0.1):
            fb_c = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=9, steps=100, stepsize=lr)
            row(f"{label} foolbox lr={lr}", "foolbox", lambda: measure(
                counted, x, y, "l2", lambda: fb_c(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)[1],
                minimal=True))

        # FMN: 100 steps.
        for norm, fb_attack in (("l2", fb.attacks.L2FMNAttack), ("linf", fb.attacks.LInfFMNAttack)):
            label = f"{name} fmn {norm} 100 steps"
            ours_f = make_attack("fmn", norm=norm, steps=100)
            row(f"{label} hardened", "hardened", lambda: measure(
                counted, x, y, norm, lambda: ours_f(counted, x, y).x_adv, minimal=True))
            fb_f = fb_attack(steps=100)
            row(f"{label} foolbox", "foolbox", lambda: measure(
                counted, x, y, norm, lambda: fb_f(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)[1], minimal=True))
    write_json(args.out, report)


if __name__ == "__main__":
    main()
