"""Scale-out benchmark: sharded certification and the sharded cascade, 2 processes x 1 thread
against 1 process x 2 threads and 1 process x 1 thread (gloo on 127.0.0.1), plus a scaling model
on paper for the published protocols. JSON to ``results/scale.json``.

    python benchmarks/scale.py [--images 16] [--n 2000] [--cascade-images 64]

Times are measured inside the workers, from after the process group and the model are ready to
the end of the work (a barrier), so interpreter and torch start-up (seconds) are left out; they
are reported separately as ``start_seconds``. Speed-up = t(1x1) / t(config); parallel efficiency
= speed-up / cores used.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

PROTOCOL_IMAGES, PROTOCOL_N = 10_000, 100_000  # Cohen et al. 2019 certification protocol


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


def _work(rank: int, world: int, port: int, threads: int, job: dict[str, Any], out: str) -> None:
    began = time.perf_counter()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    from hardened.certify.runs import certify_sharded
    from hardened.data import load_splits
    from hardened.distributed import barrier, process_group
    from hardened.evaluate.cascade import run_cascade

    with process_group():
        model = _model(Path(job["model"]))
        test = load_splits("mnist-5k").test
        barrier()
        start = time.perf_counter()
        folder = Path(job["folder"])
        if job["kind"] == "certify":
            x, y = test.x[: job["images"]], test.y[: job["images"]]
            certify_sharded(model, x, y, log_path=folder / "samples.jsonl", sigma=0.25, n0=100, n=job["n"],
                            alpha=0.001, seed=0, batch_size=1000)
        else:
            x, y = test.x[: job["images"]], test.y[: job["images"]]
            run_cascade(model, x, y, eps=0.1, preset="quick", batch_size=job["batch"], masking="off",
                        state_dir=folder / "state")
        barrier()
        seconds = time.perf_counter() - start
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds": seconds, "start_seconds": start - began}))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(world: int, threads: int, job: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        job = {**job, "folder": tmp}
        out = str(Path(tmp) / "time.json")
        mp.spawn(_work, args=(world, _free_port(), threads, job, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text()) | {"processes": world, "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="certified images")
    parser.add_argument("--n", type=int, default=2000, help="noise samples per certified image")
    parser.add_argument("--cascade-images", type=int, default=64)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    model = RESULTS / "scale-lenet.safetensors"
    _model(model)
    jobs = {
        "certify": {"kind": "certify", "model": str(model), "images": args.images, "n": args.n},
        "cascade": {"kind": "cascade", "model": str(model), "images": args.cascade_images, "batch": 16},
    }
    report: dict[str, Any] = {"machine": machine(), "settings": vars(args), "results": {}}
    for name, job in jobs.items():
        rows = [_run(1, 1, job), _run(1, 2, job), _run(2, 1, job)]
        base = rows[0]["seconds"]
        for row in rows:
            cores = row["processes"] * row["threads"]
            row["speedup"] = base / row["seconds"]
            row["efficiency"] = row["speedup"] / cores
            print(f"{name}: {row['processes']} proc x {row['threads']} thread: {row['seconds']:.2f} s "
                  f"(speed-up {row['speedup']:.2f}, efficiency {row['efficiency']:.2f})")
        report["results"][name] = rows
    certify_rows = report["results"]["certify"]
    per_image_sample = certify_rows[0]["seconds"] / (args.images * (args.n + 100))
    cascade_per_image = report["results"]["cascade"][0]["seconds"] / args.cascade_images
    efficiency = certify_rows[2]["efficiency"]
    report["model_on_paper"] = {
        "assumptions": "1 worker = 1 CPU core as measured here (LeNet, MNIST); ideal split of images, "
                       "times the measured 2-process efficiency; cascade 'quick' stands for AutoAttack",
        "certify_protocol_hours": {
            str(w): PROTOCOL_IMAGES * (PROTOCOL_N + 100) * per_image_sample / (w * (efficiency if w > 1 else 1)) / 3600
            for w in (1, 8, 64)
        },
        "cascade_10k_hours": {
            str(w): PROTOCOL_IMAGES * cascade_per_image / (w * (efficiency if w > 1 else 1)) / 3600
            for w in (1, 8, 64)
        },
    }
    print(json.dumps(report["model_on_paper"], indent=2))
    (RESULTS / "scale.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
