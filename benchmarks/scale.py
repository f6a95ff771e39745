"""Scale-out benchmark: sharded certification and the sharded cascade, 2 processes x 1 thread
against 1 process x 2 threads and 1 process x 1 thread (gloo, ranks meeting at a store file), plus
a scaling model on paper for the published protocols. JSON to ``results/scale.json``.

    nice -n 10 python benchmarks/scale.py [--images 8] [--n 2000] [--cascade-images 48]
        [--standard-images 16] [--repeats 2] [--only certify,cascade,standard]

Times are measured inside the workers, from after the process group and the model are ready to
the end of the work (a barrier), so interpreter and torch start-up (seconds) are left out; they
are reported separately as ``start_seconds``. Each configuration runs ``--repeats`` times and the
fastest run counts (the machine is shared: slower runs measure the other jobs). Beside every run:
the load average before and after it and the CPU seconds its processes spent working
(``cpu_efficiency`` = CPU seconds of 1 x 1 / CPU seconds of the configuration: the work that
splitting adds, which the load of other jobs does not change, unlike the wall times).
Speed-up = t(1x1) / t(config); parallel efficiency = speed-up / cores used. ``standard`` times the
cascade's ``standard`` preset (AutoAttack's members at about a fifth of its cost) in one process,
the per-image cost behind the AutoAttack line of the model on paper. ``--only`` re-runs some jobs
and keeps the others' rows from the existing JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

PROTOCOL_IMAGES, PROTOCOL_N, PROTOCOL_N0 = 10_000, 100_000, 100  # Cohen et al. 2019 certification protocol
AUTOATTACK_FACTOR = 5  # the standard preset runs AutoAttack's members at about a fifth of its cost
WORKERS = (1, 8, 64)
OUT = RESULTS / "scale.json"


def _model(path: Path) -> torch.nn.Module:
    import hardened as hd
    from hardened.data import load_splits
    from hardened.train import TrainConfig, train

    if path.is_file():
        return hd.load_model(path).model.eval()
    splits = load_splits("mnist-5k")
    torch.manual_seed(0)
    model = hd.build_model("lenet", input_shape=splits.train.input_shape)
    train(model, splits.train, config=TrainConfig(epochs=2, batch_size=128, lr=1e-3, seed=0))
    hd.save_model(model, path, arch="lenet", arch_kwargs={"input_shape": splits.train.input_shape},
                  input_shape=splits.train.input_shape, classes=splits.train.classes)
    return model.eval()


def _work(rank: int, world: int, store: str, threads: int, job: dict[str, Any], out: str) -> None:
    began = time.perf_counter()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    from hardened.certify.runs import certify_sharded
    from hardened.data import load_splits
    from hardened.distributed import all_gather_objects, barrier, process_group
    from hardened.evaluate.cascade import run_cascade

    with process_group(init_method=store):
        model = _model(Path(job["model"]))
        test = load_splits("mnist-5k").test
        x, y = test.x[: job["images"]], test.y[: job["images"]]
        folder = Path(job["folder"])
        barrier()
        start, cpu = time.perf_counter(), time.process_time()
        if job["kind"] == "certify":
            certify_sharded(model, x, y, log_path=folder / "samples.jsonl", sigma=0.25, n0=PROTOCOL_N0, n=job["n"],
                            alpha=0.001, seed=0, batch_size=1000)
        else:
            run_cascade(model, x, y, eps=0.1, preset=job["preset"], batch_size=job["batch"], masking="off",
                        state_dir=folder / "state")
        cpu = time.process_time() - cpu
        barrier()
        seconds = time.perf_counter() - start
        cpus = all_gather_objects(cpu)
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds": seconds, "start_seconds": start - began,
                                         "cpu_seconds": sum(cpus)}))


def _run(world: int, threads: int, job: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        job = {**job, "folder": tmp}
        out = str(Path(tmp) / "time.json")
        load = os.getloadavg()
        mp.spawn(_work, args=(world, f"file://{tmp}/store", threads, job, out), nprocs=world, join=True)
        row = json.loads(Path(out).read_text())
        return row | {"processes": world, "threads": threads, "loadavg_before": load, "loadavg_after": os.getloadavg()}


def _fastest(world: int, threads: int, job: dict[str, Any], repeats: int) -> dict[str, Any]:
    runs = [_run(world, threads, job) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["seconds"])
    return best | {"all_seconds": [r["seconds"] for r in runs]}


def _scaled(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base, cpu = rows[0]["seconds"], rows[0]["cpu_seconds"]
    for row in rows:
        row["speedup"] = base / row["seconds"]
        row["efficiency"] = row["speedup"] / (row["processes"] * row["threads"])
        row["cpu_efficiency"] = cpu / row["cpu_seconds"]  # the work's overhead, whatever the load
    return rows


def _model_on_paper(report: dict[str, Any]) -> dict[str, Any]:
    settings, results = report["settings"], report["results"]
    # per-image costs from the CPU seconds of the 1 x 1 runs: one busy core's wall time, and
    # unlike the wall time not stretched by the other jobs of a shared machine
    per_forward = results["certify"][0]["cpu_seconds"] / (settings["images"] * (settings["n"] + PROTOCOL_N0))
    cascade = results["cascade"][0]["cpu_seconds"] / settings["cascade_images"]
    standard = results["standard"][0]["cpu_seconds"] / settings["standard_images"]
    eff = {"certify": results["certify"][2]["cpu_efficiency"], "cascade": results["cascade"][2]["cpu_efficiency"]}

    def hours(per_image: float, kind: str) -> dict[str, float]:
        return {str(w): PROTOCOL_IMAGES * per_image / (w * (eff[kind] if w > 1 else 1.0)) / 3600 for w in WORKERS}

    return {
        "assumptions": (
            "1 worker = 1 CPU core as measured here (LeNet, MNIST, 1 process x 1 thread, CPU seconds of the "
            "work); the images split "
            "evenly over the workers, each at the 2-process CPU efficiency measured here (CPU seconds of 1 process "
            "over those of 2; not measured beyond 2 workers, and no wait for stragglers); "
            f"AutoAttack = {AUTOATTACK_FACTOR} x the measured standard preset per image (its members at full cost), "
            "on a model where every point is attacked by every member as long as it stays robust"),
        "seconds_per_noise_sample": per_forward,
        "cascade_quick_seconds_per_image": cascade,
        "cascade_standard_seconds_per_image": standard,
        "certify_protocol_hours": hours(per_forward * (PROTOCOL_N + PROTOCOL_N0), "certify"),
        "cascade_quick_10k_hours": hours(cascade, "cascade"),
        "cascade_standard_10k_hours": hours(standard, "cascade"),
        "autoattack_10k_hours": hours(AUTOATTACK_FACTOR * standard, "cascade"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="certified images")
    parser.add_argument("--n", type=int, default=2000, help="noise samples per certified image")
    parser.add_argument("--cascade-images", type=int, default=48)
    parser.add_argument("--standard-images", type=int, default=16, help="images of the standard-preset timing")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default="certify,cascade,standard",
                        help="jobs to (re-)run; '' keeps every row and recomputes the model on paper")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    model = RESULTS / "scale-lenet.safetensors"
    _model(model)
    jobs = {
        "certify": ({"kind": "certify", "model": str(model), "images": args.images, "n": args.n},
                    [(1, 1), (1, 2), (2, 1)]),
        "cascade": ({"kind": "cascade", "model": str(model), "images": args.cascade_images, "batch": 16,
                     "preset": "quick"}, [(1, 1), (1, 2), (2, 1)]),
        "standard": ({"kind": "cascade", "model": str(model), "images": args.standard_images, "batch": 16,
                      "preset": "standard"}, [(1, 1)]),
    }
    only = [name for name in args.only.split(",") if name]
    unknown = [name for name in only if name not in jobs]
    if unknown:
        parser.error(f"unknown jobs {unknown}: choose from {', '.join(jobs)}")
    old = json.loads(OUT.read_text()) if OUT.is_file() else {}
    report: dict[str, Any] = {"machine": machine(), "nice": os.nice(0),
                              "settings": {k: v for k, v in vars(args).items() if k != "only"},
                              "results": {k: _scaled(v) for k, v in old.get("results", {}).items()
                                          if k in jobs and k not in only}}
    if any(k in report["results"] for k in jobs) and old.get("settings") != report["settings"]:
        parser.error("the kept rows were measured with other settings: re-run every job (drop --only)")
    for name in only:
        job, configs = jobs[name]
        rows = _scaled([_fastest(world, threads, job, args.repeats) for world, threads in configs])
        for row in rows:
            print(f"{name}: {row['processes']} proc x {row['threads']} thread: {row['seconds']:.2f} s "
                  f"(speed-up {row['speedup']:.2f}, efficiency {row['efficiency']:.2f}, "
                  f"load {row['loadavg_before'][0]:.1f} -> {row['loadavg_after'][0]:.1f})")
        report["results"][name] = rows
    if all(k in report["results"] for k in jobs):
        report["model_on_paper"] = _model_on_paper(report)
        print(json.dumps(report["model_on_paper"], indent=2))
    OUT.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
