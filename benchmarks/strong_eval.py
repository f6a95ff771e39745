"""Strong evaluation: our cascade presets against the reference AutoAttack, on the same images.

For each (model, threat model) row, on the first ``--n`` images of the mnist-5k test split, in
one process and one thread: the reference AutoAttack (``pyautoattack``, Croce & Hein's code,
``version="standard"``), torchattacks' AutoAttack (stock settings), and our cascade presets
``quick``, ``standard`` and ``thorough`` (``hardened.evaluate.run_cascade``, masking checks on
``auto``). Each entry gives robust accuracy, wall time, forward and backward passes (images
through the model, counted by one ``CountingModel`` wrapper for every method) and queries (ours:
the cascade's count; the peers report none, so their forward images are given).

Models: ``standard`` (the audit's default lenet), ``pgd`` and ``trades`` (adversarially trained
lenets, files given by ``--pgd`` / ``--trades``), ``quantised`` (the standard lenet behind
``round(4x)/4``, as traced TorchScript) and ``randomized`` (uniform noise +-0.1, then the
quantiser, then the lenet). Threat models: Linf 0.3 and L2 2.0.

    hardened train --data mnist-5k --arch lenet --method pgd --eps 0.3 --steps 10 \\
        --eps-warmup 0.4 --epochs 20 --seed 0 --out /tmp/pgd-lenet.safetensors
    hardened train --data mnist-5k --arch lenet --method trades --eps 0.3 --steps 10 \\
        --eps-warmup 0.4 --epochs 20 --seed 0 --out /tmp/trades-lenet.safetensors
    nice -n 5 python benchmarks/strong_eval.py --n 200 --resume

Writes ``benchmarks/results/strong_eval.json`` atomically after each entry, so a partial run
keeps its figures; ``--resume`` skips the entries already there (same n and seed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import hardened as hd
from hardened._util.atomic import write_json
from hardened.audit import default_model
from hardened.evaluate.cascade import run_cascade
from hardened.evaluate.counting import CountingModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402
from strong_eval_members import reference  # noqa: E402

THREATS = {"linf": 0.3, "l2": 2.0}
METHODS = ("reference", "torchattacks", "quick", "standard", "thorough")


class Quantise(nn.Module):
    """``round(4x) / 4``: a shattered-gradient input defence (zero gradient almost everywhere)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.round(4 * x) / 4


class UniformNoise(nn.Module):
    """``clip(x + U(-0.1, 0.1), 0, 1)``: a randomized input defence."""

    def forward(self, x: Tensor) -> Tensor:
        return (x + 0.1 * (2 * torch.rand_like(x) - 1)).clamp(0, 1)


def _traced(net: nn.Module, *front: nn.Module) -> nn.Module:
    """``net`` behind ``front`` as traced TorchScript, as a user would ship the defended model."""
    module = nn.Sequential(*front, net).eval()
    traced = torch.jit.trace(module, torch.rand(2, 1, 28, 28), check_trace=False)
    return traced.eval()


def load_models(args: argparse.Namespace) -> dict[str, nn.Module]:
    splits = hd.load_splits("mnist-5k")
    standard, _ = default_model(splits)
    standard = standard.eval().requires_grad_(False)
    models: dict[str, nn.Module] = {"standard": standard}
    for name, path in (("pgd", args.pgd), ("trades", args.trades)):
        if path.is_file():
            models[name] = hd.load_model(path).model.eval().requires_grad_(False)
        else:
            print(f"skipping {name}: {path} not found (train it with the command in the docstring)")
    models["quantised"] = _traced(standard, Quantise())
    models["randomized"] = _traced(standard, UniformNoise(), Quantise())
    return models


def _torchattacks(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, seed: int) -> dict[str, Any]:
    """torchattacks' AutoAttack with its stock settings (APGD-CE, APGD-T, FAB-T, Square)."""
    import torchattacks

    start = time.perf_counter()
    attack = torchattacks.AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps,
                                     version="standard", n_classes=10, seed=seed)
    adv = attack(x, y)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        robust = model(adv).argmax(1) == y
    return {"robust_accuracy": float(robust.float().mean()), "seconds": round(seconds, 2)}


def _ours(preset: str) -> Callable[..., dict[str, Any]]:
    def run(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, seed: int) -> dict[str, Any]:
        result = run_cascade(model, x, y, eps=eps, norm=norm, preset=preset, seed=seed)
        return {
            "robust_accuracy": result.robust_accuracy,
            "clean_accuracy": result.clean_accuracy,
            "seconds": round(result.seconds, 2),
            "queries": result.queries,
            "forwards": result.forwards,
            "backwards": result.backwards,
            "contributions": [
                {k: c.to_dict()[k] for k in ("label", "attacked", "broken", "seconds", "queries")}
                for c in result.contributions
            ],
            "fired": [f.name for f in result.findings if f.fired],
            "countermeasures": list(result.countermeasures),
        }

    return run


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "reference": reference, "torchattacks": _torchattacks,
    **{p: _ours(p) for p in ("quick", "standard", "thorough")},
}


def measure(method: str, model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, seed: int) -> dict[str, Any]:
    """One method on one row. Passes through the model: the peers' counted by a ``CountingModel``
    wrapper, ours by the cascade's own (the same wrapper class, inside ``run_cascade``; wrapping
    twice would hide the model's input stages from the masking checks' BPDA search)."""
    ours = method in ("quick", "standard", "thorough")
    counter = CountingModel(model)
    load = os.getloadavg()[0]
    cpu = time.process_time()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        record = RUNNERS[method](model if ours else counter, x, y, norm, eps, seed)
    record["cpu_seconds"] = round(time.process_time() - cpu, 2)
    record["loadavg"] = [round(load, 2), round(os.getloadavg()[0], 2)]  # 1-minute, at start and end
    record["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    record.pop("robust", None)
    if not ours:
        record["forwards"], record["backwards"] = counter.counts()
    record.setdefault("queries", record["forwards"])
    return record


def _passes(record: dict[str, Any]) -> int:
    return int(record["forwards"]) + int(record["backwards"])


def verdict(row: dict[str, Any]) -> dict[str, Any]:
    """The targets: standard within 0.5 points of the reference (never above by more) in at
    most 1/5 of its time; thorough at or below the reference.

    Time is judged on CPU seconds (one thread: the compute, whatever else shares the cores) where
    both entries have them, else on passes through the model (forwards + backwards), which
    dominate the cost of every method here; wall seconds are reported beside them."""
    methods = row["methods"]
    if "reference" not in methods:
        return {}
    ref = methods["reference"]
    out: dict[str, Any] = {}
    for preset in ("quick", "standard", "thorough"):
        if preset in methods:
            mine = methods[preset]
            out[preset] = {
                "gap_points": round(100 * (mine["robust_accuracy"] - ref["robust_accuracy"]), 2),
                "time_ratio": round(mine["seconds"] / ref["seconds"], 3) if ref["seconds"] else None,
                "pass_ratio": round(_passes(mine) / _passes(ref), 3) if _passes(ref) else None,
            }
            if "cpu_seconds" in mine and ref.get("cpu_seconds"):
                out[preset]["cpu_ratio"] = round(mine["cpu_seconds"] / ref["cpu_seconds"], 3)
    if "standard" in out:
        s = out["standard"]
        cost = s.get("cpu_ratio", s["pass_ratio"])
        s["target_met"] = s["gap_points"] <= 0.5 and cost is not None and cost <= 0.2
    if "thorough" in out:
        out["thorough"]["target_met"] = out["thorough"]["gap_points"] <= 0.0
    return out


def table(rows: dict[str, dict[str, Any]]) -> str:
    """The README's markdown table: one line per (row, method)."""
    lines = ["| model, threat, images | method | robust | wall s | CPU s | passes × reference | forwards | backwards | queries |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows.values():
        ref = row["methods"].get("reference")
        first = f"{row['model']}, {row['norm']} {row['eps']:g}, {row['n']}"
        for method, m in row["methods"].items():
            ratio = f"{_passes(m) / _passes(ref):.3f}" if ref else "–"
            cpu = f"{m['cpu_seconds']:.1f}" if "cpu_seconds" in m else "–"
            kept = " (kept)" if "kept_from" in m else ""  # an earlier run's entry, same images
            lines.append(f"| {first} | {method}{kept} | {100 * m['robust_accuracy']:.1f}% | {m['seconds']:.1f} | {cpu} | {ratio} | "
                         f"{m['forwards']:,} | {m['backwards']:,} | {m['queries']:,} |")
            first = ""
    return "\n".join(lines)


def merge(files: list[Path], out_path: Path) -> None:
    """Fold the rows' method entries of ``files`` into ``out_path`` (same seed; later wins)."""
    out = json.loads(out_path.read_text(encoding="utf-8")) if out_path.is_file() else {"rows": {}}
    for f in files:
        part = json.loads(f.read_text(encoding="utf-8"))
        out.setdefault("data", part["data"])
        out.setdefault("seed", part["seed"])
        out["machine"] = part["machine"]
        if part["seed"] != out["seed"]:
            sys.exit(f"{f}: seed {part['seed']} differs from {out_path}'s {out['seed']}")
        for key, row in part["rows"].items():
            mine = out["rows"].get(key)
            if mine is None or mine["n"] != row["n"]:
                out["rows"][key] = mine = {**row, "methods": {}}
            mine["methods"].update(row["methods"])
            mine["verdict"] = verdict(mine)
    write_json(out_path, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images per Linf row")
    parser.add_argument("--n-l2", type=int, default=None, help="images per L2 row (default: --n)")
    parser.add_argument("--n-masked", type=int, default=None, help="images for quantised / randomized (default: --n)")
    parser.add_argument("--rows", default="pgd:linf,standard:linf,trades:linf,quantised:linf,randomized:linf,"
                        "pgd:l2,standard:l2,trades:l2", help="model:norm pairs, in order")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--pgd", type=Path, default=Path("/tmp/pgd-lenet.safetensors"))
    parser.add_argument("--trades", type=Path, default=Path("/tmp/trades-lenet.safetensors"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="keep the entries already in --out")
    parser.add_argument("--out", type=Path, default=RESULTS / "strong_eval.json")
    parser.add_argument("--table", type=Path, nargs="*", help="print the markdown table of these JSON files and exit")
    parser.add_argument("--merge", type=Path, nargs="*",
                        help="fold these JSON files' entries into --out (later files win) and exit: rows run in "
                             "parallel processes write one file each")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    if args.table:
        rows = {k: v for f in args.table for k, v in json.loads(f.read_text(encoding="utf-8"))["rows"].items()}
        print(table(rows))
        return
    torch.set_num_threads(1)
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    models = load_models(args)
    test = hd.load_splits("mnist-5k").test
    out: dict[str, Any] = {"data": "mnist-5k test", "seed": args.seed, "machine": machine(), "rows": {}}
    if args.resume and args.out.is_file():
        stored = json.loads(args.out.read_text(encoding="utf-8"))
        if stored.get("seed") == args.seed:
            out["rows"] = stored.get("rows", {})
    for pair in args.rows.split(","):
        name, norm = pair.split(":")
        if name not in models:
            continue
        masked = name in ("quantised", "randomized")
        n = (args.n_masked if masked else args.n_l2 if norm == "l2" else None) or args.n
        key = f"{name}/{norm}"
        row = out["rows"].get(key)
        if row is None or row["n"] != n:
            row = {"model": name, "norm": norm, "eps": THREATS[norm], "n": n, "methods": {}}
        out["rows"][key] = row
        x, y = test.x[:n].contiguous(), test.y[:n].contiguous()
        for method in args.methods.split(","):
            if method in row["methods"]:
                continue
            record = measure(method, models[name], x, y, norm, THREATS[norm], args.seed)
            row["methods"][method] = record
            row["verdict"] = verdict(row)
            write_json(args.out, out)
            print(f"{key} n={n} {method}: {record['robust_accuracy']:.1%} in {record['seconds']} s "
                  f"({record['forwards']} fwd, {record['backwards']} bwd)", flush=True)
        print(key, row.get("verdict"), flush=True)


if __name__ == "__main__":
    main()
