"""Published-strength adversarial training on full MNIST (60,000 images), measured by the cascade.

Each run starts from a recipe of ``hardened.train.recipes`` and changes only what the CPU budget
forces (the JSON lists every override beside the recipe): ``fast`` is ``fast-mnist`` as
published (Wong et al. 2020: 10 epochs), ``fast-raw`` / ``fast-lr7e-3`` / ``fast-lr1e-2`` /
``fast-nfgsm`` change one thing each (raw pixels, the peak lr, N-FGSM) and ``fast-wide`` is the
``fast-mnist-wide`` recipe (Madry et al.'s network widths); ``pgd`` and ``trades``
are ``madry-mnist`` / ``trades-mnist`` with 10 attack steps, the ``strided_cnn`` network and as
many epochs as ``--pgd-epochs`` / ``--trades-epochs`` give. The semi-supervised comparison
(Carmon et al. 2019): ``semi-trades`` keeps the labels of 2,000 training images and
pseudo-labels the other 58,000 (TRADES on both halves, equally weighted), against
``trades-2k`` / ``pgd-2k`` (the same 2,000 labelled images, as many steps) and
``trades-2k-x2`` (twice the steps), ``--semi-epochs`` epochs over the 2,000. ``NAME@SEED``
runs NAME with another seed. Evaluation: clean accuracy on the 10,000 test images, PGD-40
(step 2.5·eps/40, random start) on the first ``--n-pgd`` and the cascade preset ``--preset``
(``standard``) on the first ``--n-cascade``; ``--reference N`` adds the reference AutoAttack on
the first N of those and the cascade on the same N; ``--reevaluate`` reruns the cascade of runs
measured with an older version of the preset (the old figure is kept as ``cascade_before``).

Resumable: training checkpoints into ``--work/NAME`` every epoch (and every
``--checkpoint-every`` steps), the cascade keeps its state there too, and finished runs are kept
in the JSON; rerunning the same command continues where it stopped. Runs one after another in
the order given; for the 2 shared CPU cores run it under ``nice -n 10`` in the background::

    nohup nice -n 10 python benchmarks/defend_mnist.py --runs fast,pgd,trades &

Writes ``benchmarks/results/defend_mnist.json`` atomically after each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

import hardened as hd
from hardened._util.atomic import write_json
from hardened.evaluate import robust_accuracy_sweep
from hardened.evaluate.cascade import run_cascade
from hardened.models import arch_kwargs_for, build_model
from hardened.train import TrainConfig, Trainer, accuracy, make_method, split_unlabeled
from hardened.train.options import collapse_guard
from hardened.train.recipes import get_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

PUBLISHED = {
    "fast-raw": "Wong et al. 2020: 97.5% clean / 88.8% PGD / 82.9% AutoAttack (10 epochs)",
    "fast": "Wong et al. 2020: 97.5% clean / 88.8% PGD / 82.9% AutoAttack (10 epochs)",
    "fast-lr1e-2": "Wong et al. 2020: 97.5% clean / 88.8% PGD / 82.9% AutoAttack (10 epochs, lr 5e-3)",
    "fast-lr7e-3": "Wong et al. 2020: 97.5% clean / 88.8% PGD / 82.9% AutoAttack (10 epochs, lr 5e-3)",
    "fast-wide": "Wong et al. 2020: 97.5% clean / 88.8% PGD / 82.9% AutoAttack (10 epochs, 16/32 channels, 100 hidden)",
    "fast-wide-gradalign": "Andriushchenko & Flammarion 2020 (GradAlign; no MNIST figure at this budget); Wong et al. "
                           "2020 fast FGSM: 82.9% AutoAttack",
    "fast-nfgsm": "de Jorge et al. 2022 (N-FGSM, no MNIST figure); Wong et al. 2020 fast FGSM: 82.9% AutoAttack",
    "pgd": "Madry et al. 2018: 98.8% clean / ~89% PGD / 88.5% AutoAttack (100,000 steps of PGD-40)",
    "semi-trades": "Carmon et al. 2019 (robust self-training): +5 to +10 points of robust accuracy over the "
                   "labelled-only baseline (CIFAR-10 + 500k pseudo-labelled images; no MNIST figure)",
    "trades-2k": "baseline of semi-trades: TRADES on the same 2,000 labelled images, as many steps",
    "trades-2k-x2": "baseline of semi-trades: TRADES on the same 2,000 labelled images, twice the steps",
    "pgd-2k": "baseline of semi-trades: PGD-10 on the same 2,000 labelled images, as many steps",
    "trades": "Zhang et al. 2019: 99.48% clean / 96.07% PGD-40 / 92.81% AutoAttack (100 epochs, SmallCNN)",
}


def runs(args: argparse.Namespace) -> dict[str, tuple[str, dict[str, Any]]]:
    """Run name -> (recipe, overrides of its options)."""
    # eps warm-up over the first 30%: PGD-10 at the full 0.3 from the first step left the network
    # at chance after its first epoch (test accuracy 11.4%, lr 1e-3 cyclic)
    small = {"arch": "strided_cnn", "steps": 10, "step_size": 0.075, "batch_size": 100, "eps_warmup": 0.3}
    semi = small | {"labels": SEMI_LABELS, "epochs": args.semi_epochs, "optimizer": "adam", "lr": 1e-3,
                    "lr_schedule": "cyclic", "beta": 6.0}
    return {
        "fast": ("fast-mnist", {}),
        # the authors feed raw [0, 1] pixels: an identity Normalize layer instead of the data's mean/std
        "fast-raw": ("fast-mnist", {"arch_kwargs": {"mean": [0.0], "std": [1.0]}}),
        # the recipe at a higher peak lr than Wong et al.'s 5e-3 (what short runs need)
        "fast-lr1e-2": ("fast-mnist", {"lr": 1e-2}),
        "fast-lr7e-3": ("fast-mnist", {"lr": 7e-3}),
        # the recipe on a wider network: Madry et al.'s MNIST widths (32/64 channels, 1,024 hidden);
        # seeds 0-2 ran as fast-mnist with these arch_kwargs, the same network as this recipe's
        "fast-wide": ("fast-mnist-wide", {}),
        # the wide recipe with GradAlign (lambda 1): against the gradient masking of its seed 3
        "fast-wide-gradalign": ("fast-mnist-wide", {"grad_align": 1.0}),
        # N-FGSM (de Jorge et al. 2022): noise U[-2·eps, 2·eps], step eps, no projection
        "fast-nfgsm": ("fast-mnist", {"nfgsm_noise": 2.0, "step_size": 0.3}),
        "pgd": ("madry-mnist", small | {"epochs": args.pgd_epochs, "lr": 1e-3, "lr_schedule": "cyclic"}),
        "trades": ("trades-mnist", small | {"epochs": args.trades_epochs, "optimizer": "adam", "lr": 1e-3,
                                            "lr_schedule": "cyclic", "beta": 6.0}),
        # semi-supervised (Carmon et al. 2019): 2,000 labelled images, the other 58,000 as the pool;
        # the same labelled images and steps for the TRADES / PGD baselines (2k: same steps; 2k-x2: twice)
        "trades-2k": ("trades-mnist", semi | {"method": "trades"}),
        "trades-2k-x2": ("trades-mnist", semi | {"method": "trades", "epochs": 2 * args.semi_epochs}),
        "pgd-2k": ("madry-mnist", semi | {"method": "pgd"}),
        "semi-trades": ("trades-mnist", semi | {"method": "semi-supervised", "robust_loss": "trades"}),
    }


SEMI_LABELS = 2000


def labelled_split(train_set: hd.Dataset, labels: int | None, seed: int) -> tuple[hd.Dataset, torch.Tensor | None]:
    """The first ``labels`` images of a seeded permutation keep their labels; the rest is the pool."""
    if labels is None:
        return train_set, None
    return split_unlabeled(train_set, (len(train_set) - labels) / len(train_set), seed=seed)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build(
    recipe_name: str, overrides: dict[str, Any], seed: int, train_set: hd.Dataset, guard: str,
    pool: torch.Tensor | None = None,
) -> tuple[Any, ...]:
    recipe = get_recipe(recipe_name)
    o = dict(recipe.options) | {k: v for k, v in overrides.items() if k not in ("arch_kwargs", "labels")}
    own = dict(recipe.arch_kwargs) if o["arch"] == recipe.options["arch"] else {"channels": (16, 32), "hidden": 100}
    arch_kwargs = arch_kwargs_for(train_set) | own | dict(overrides.get("arch_kwargs", {}))
    torch.manual_seed(seed)
    model = build_model(o["arch"], **arch_kwargs)
    method_options: dict[str, Any] = {"eps": o["eps"], "norm": o["norm"], "step_size": o.get("step_size"),
                                      "eps_warmup": o.get("eps_warmup", 0.0)}
    if o["method"] == "fgsm":  # the recipe's detector; --guard report logs it without acting
        method_options |= {"guard": collapse_guard(guard, 0.3, 0), "random_start": o.get("random_start", True),
                           "noise": o.get("nfgsm_noise"), "grad_align": o.get("grad_align", 0.0)}
    else:
        method_options["steps"] = o["steps"]
    if o["method"] == "trades":
        method_options["beta"] = o["beta"]
    if o["method"] == "semi-supervised":  # Carmon et al.: the robust loss on both halves, equally weighted
        method_options |= {"pool": pool, "robust_loss": o["robust_loss"], "beta": o["beta"],
                           "labelled": "adversarial", "adversarial_lr_scale": 1.0}
    method = make_method(o["method"], **method_options)
    config = TrainConfig(
        epochs=o["epochs"], batch_size=o["batch_size"], lr=o["lr"], optimizer=o["optimizer"], seed=seed,
        lr_schedule=o["lr_schedule"], lr_peak=o.get("lr_peak", 0.4), lr_milestones=tuple(o.get("lr_milestones", ())),
        lr_gamma=o.get("lr_gamma", 0.1), momentum=o.get("momentum", 0.9), weight_decay=o.get("weight_decay", 0.0),
        eval_n=500, checkpoint_every=200,
    )
    return model, method, config, o, arch_kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="fast,pgd,trades")
    parser.add_argument("--data-dir", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--work", type=Path, default=Path("runs/defend_mnist"))
    parser.add_argument("--pgd-epochs", type=int, default=3)
    parser.add_argument("--trades-epochs", type=int, default=3)
    parser.add_argument("--semi-epochs", type=int, default=60, help="epochs over the 2,000 labelled images")
    parser.add_argument("--n-pgd", type=int, default=1000)
    parser.add_argument("--n-cascade", type=int, default=1000)
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guard", default="stop", help="the fgsm run's detector action (report: log only)")
    parser.add_argument("--out", type=Path, default=RESULTS / "defend_mnist.json")
    parser.add_argument("--reevaluate", action="store_true",
                        help="rerun the cascade of finished runs measured with an older preset (kept as cascade_before)")
    parser.add_argument("--reference", type=int, default=0, metavar="N",
                        help="also run the reference AutoAttack (pyautoattack, standard) on the first N test "
                             "images of each finished run, beside the cascade on the same images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    allocator = hd.keep_freed_memory()  # as the hardened command does (benchmarks/allocator.py)
    splits = hd.load_splits("mnist", data_dir=args.data_dir)
    header = {"machine": machine(), "allocator": allocator, "data": "mnist", "train_size": len(splits.train), "eps": 0.3,
              "preset": args.preset, "n_pgd": args.n_pgd, "n_cascade": args.n_cascade}
    table = runs(args)
    for name in [r.strip() for r in args.runs.split(",") if r.strip()]:
        base, _, seed_text = name.partition("@")  # NAME@S: the run NAME with seed S
        if base not in table:
            parser.error(f"unknown run {base!r}; choose from {', '.join(table)} (NAME@SEED for another seed)")
        seed = int(seed_text) if seed_text else args.seed
        recipe_name, overrides = table[base]
        row = (load_report(args.out) or {}).get("runs", {}).get(name, {})
        if row.get("done"):
            if args.reevaluate and row.get("cascade_preset_version") != CASCADE_VERSION:
                reevaluate(row, args.work / name, splits.test.head(args.n_cascade), seed, args.preset)
                save(args.out, header, name, row)
                print(f"{name}: cascade {row['cascade']:.3f} (was {row['cascade_before']['cascade']:.3f})", flush=True)
            version, old = row.get("cascade_preset_version", 1), row.get("reference", {})
            if args.reference and (old.get("n"), old.get("cascade_preset_version", 1)) != (args.reference, version):
                row["reference"] = reference_row(args.work / name, splits.test.head(args.n_cascade), args.reference,
                                                 seed, args.preset, version, old if old.get("n") == args.reference else {})
                save(args.out, header, name, row)
                print(f"{name}: AutoAttack {row['reference']['autoattack']:.3f}, cascade "
                      f"{row['reference']['cascade']:.3f} on the first {args.reference}", flush=True)
            continue
        row |= {"recipe": recipe_name, "overrides": overrides, "published": PUBLISHED[base], "seed": seed,
                "guard": args.guard if base.startswith("fast") else None}
        train_set, pool = labelled_split(splits.train, overrides.get("labels"), seed)
        model, method, config, options, arch_kwargs = build(recipe_name, overrides, seed, train_set, args.guard, pool)
        row |= {"options": options, "arch_kwargs": arch_kwargs}
        folder = args.work / name
        tick, cpu = time.perf_counter(), cpu_seconds()
        result = Trainer(model, train_set, method=method, config=config, test_data=splits.test,
                         checkpoint_dir=folder, log_path=folder / "log.jsonl", progress=False).fit(resume=True)
        row.setdefault("invocations", []).append({
            "train_wall_s": time.perf_counter() - tick, "train_cpu_s": cpu_seconds() - cpu,
            "loadavg": os.getloadavg(), "resumed_from_step": result.resumed_from_step,
        })
        row |= {"train_seconds": sum(r.seconds for r in result.history), "steps": result.steps,
                "stopped": result.stopped, "epochs_run": len(result.history),
                "history": [{"epoch": r.epoch, "test_accuracy": r.test_accuracy, "pgd10_500": r.robust_accuracy,
                             "seconds": r.seconds, "guard": r.extra.get("guard"),
                             "guard_events": r.extra.get("guard_events")} for r in result.history]}
        save(args.out, header, name, row)
        model.eval()
        tick, cpu = time.perf_counter(), cpu_seconds()
        pgd_data, cascade_data = splits.test.head(args.n_pgd), splits.test.head(args.n_cascade)
        row["clean"] = accuracy(model, splits.test)
        row["pgd40"] = robust_accuracy_sweep(model, pgd_data.x, pgd_data.y, eps_values=[0.3], attack="pgd",
                                             steps=40, seed=seed).robust_accuracy[0]
        save(args.out, header, name, row)
        cascade = run_cascade(model, cascade_data.x, cascade_data.y, eps=0.3, preset=args.preset, seed=seed,
                              state_dir=cascade_dir(folder, args.preset, CASCADE_VERSION))
        row |= {"cascade": cascade.robust_accuracy, "cascade_clean": cascade.clean_accuracy,
                "cascade_preset_version": CASCADE_VERSION,
                "cascade_members": members(cascade),
                "eval_wall_s": time.perf_counter() - tick, "eval_cpu_s": cpu_seconds() - cpu,
                "eval_loadavg": os.getloadavg(), "done": True}
        hd.save_model(model, folder / "model.safetensors", arch=options["arch"],
                      arch_kwargs=arch_kwargs,
                      input_shape=splits.train.input_shape, classes=splits.train.classes,
                      training={**result.to_dict(), "data": "mnist", "recipe": recipe_name})
        save(args.out, header, name, row)
        print(f"{name}: clean {row['clean']:.4f} pgd40 {row['pgd40']:.3f} cascade {row['cascade']:.3f} "
              f"train {row['train_seconds']:.0f}s ({result.stopped or 'ran to the end'})", flush=True)


CASCADE_VERSION = 2
"""2: ``standard`` has Square at 1,000 queries, escalated to 5,000 when it breaks a point the
gradient attacks missed (1: Square at 300, no escalation)."""


def members(result: Any) -> list[dict[str, Any]]:
    """Each cascade member's share, as the JSON keeps it."""
    return [{k: c.to_dict()[k] for k in ("label", "attacked", "broken", "escalated", "queries")}
            for c in result.contributions]


def cascade_dir(folder: Path, preset: str, version: int) -> Path:
    """Where a run's cascade keeps its state, per preset version."""
    return folder / (f"cascade-{preset}" if version == 1 else f"cascade-{preset}-v{version}")


def reevaluate(row: dict[str, Any], folder: Path, data: hd.Dataset, seed: int, preset: str) -> None:
    """The cascade of a finished run again, with this version's preset (the old figure is kept)."""
    model = hd.load_model(folder / "model.safetensors").model.eval()
    tick, cpu = time.perf_counter(), cpu_seconds()
    result = run_cascade(model, data.x, data.y, eps=0.3, preset=preset, seed=seed,
                         state_dir=cascade_dir(folder, preset, CASCADE_VERSION))
    row.setdefault("cascade_before", {"cascade": row.get("cascade"), "cascade_preset_version": 1})
    row |= {"cascade": result.robust_accuracy, "cascade_preset_version": CASCADE_VERSION,
            "cascade_members": members(result),
            "reeval_wall_s": round(time.perf_counter() - tick, 1), "reeval_cpu_s": round(cpu_seconds() - cpu, 1)}


def reference_row(
    folder: Path, data: hd.Dataset, n: int, seed: int, preset: str, version: int, done: dict[str, Any]
) -> dict[str, Any]:
    """The reference AutoAttack on the first ``n`` of the cascade's images ``data`` (kept from
    ``done`` when it holds it) and the cascade on the same ones (its per-image result read back
    from the run's cascade state)."""
    from strong_eval_members import reference

    model = hd.load_model(folder / "model.safetensors").model.eval().requires_grad_(False)
    out = {k: v for k, v in done.items() if k.startswith("autoattack")}
    if not out:
        tick, cpu = time.perf_counter(), cpu_seconds()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            auto = reference(model, data.x[:n].contiguous(), data.y[:n].contiguous(), "linf", 0.3, seed)
        out = {"autoattack": auto["robust_accuracy"], "autoattack_after_each": auto["after_each"],
               "autoattack_seconds": round(time.perf_counter() - tick, 1),
               "autoattack_cpu_s": round(cpu_seconds() - cpu, 1), "autoattack_loadavg": os.getloadavg()}
    cascade = run_cascade(model, data.x, data.y, eps=0.3, preset=preset, seed=seed,
                          state_dir=cascade_dir(folder, preset, version))
    return {"n": n, "cascade_preset_version": version, **out, "cascade": float(cascade.robust[:n].float().mean())}


def load_report(path: Path) -> dict[str, Any] | None:
    """The report of an earlier, interrupted invocation (finished runs are kept)."""
    return json.loads(path.read_text()) if path.is_file() else None


def save(path: Path, header: dict[str, Any], name: str, row: dict[str, Any]) -> None:
    """Merge this run's row into the report on disk (other invocations may own other runs)."""
    report = load_report(path) or {}
    report |= header
    report.setdefault("runs", {})[name] = row
    write_json(path, report)


if __name__ == "__main__":
    main()
