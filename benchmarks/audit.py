"""Time ``hardened audit --budget quick`` end to end and per stage, so regressions show.

Runs the real command in a subprocess twice: cold (empty model cache: includes training the
default lenet) and warm (model reused), each into a fresh folder. Per-stage seconds come from
the audit's own ``audit.json``. Writes ``benchmarks/results/audit.json``.

    python benchmarks/audit.py [--budget quick] [--repeats 1]

With ``--model resnet18-cifar`` or ``--model resnet18-224`` it instead audits a ResNet-18 on
real CIFAR-10 or ImageNet sample images in this process, with the wall and CPU seconds and the
peak memory of each section (``benchmarks/audit_models.py``), into
``benchmarks/results/audit_<model>.json``. Run it under ``nice -n 10``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hardened._util.atomic import write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def run_once(budget: str, cache: Path, folder: Path) -> dict[str, Any]:
    env = {**os.environ, "HARDENED_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "hardened.cli.main", "audit", "--budget", budget, "--out", str(folder)],
        env=env, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - start
    report = json.loads((folder / "audit.json").read_text()) if (folder / "audit.json").is_file() else {}
    return {
        "exit_code": done.returncode,
        "seconds_end_to_end": seconds,
        "audit_seconds": report.get("seconds"),
        "stages": {s["name"]: {"status": s["status"], "seconds": s["seconds"]} for s in report.get("stages", [])},
        "verdict": report.get("verdict"),
        "load_average": os.getloadavg(),
        "stderr_tail": done.stderr[-500:] if done.returncode else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="quick")
    parser.add_argument("--repeats", type=int, default=1, help="warm runs (medians reported)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/...)")
    parser.add_argument("--model", choices=("resnet18-cifar", "resnet18-224"), default=None,
                        help="audit a ResNet-18 on real sample images, time and peak memory per section")
    parser.add_argument("--epochs", type=int, default=1, help="--model: brief training epochs (0: random weights)")
    args = parser.parse_args()
    if args.model is not None:
        from audit_models import run_setting

        with tempfile.TemporaryDirectory() as tmp:
            record = run_setting(args.model, Path(tmp), args.epochs, args.budget,
                                 progress=RESULTS / f"audit_{args.model}.partial.json")
        record["machine"] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                             "python": platform.python_version(), "torch": torch.__version__}
        write_json(args.out or Path(__file__).parent / "results" / f"audit_{args.model}.json", record)
        print(json.dumps({k: record[k] for k in ("budget", "batch_size", "sections", "status")}, indent=2))
        return
    args.out = args.out or Path(__file__).parent / "results" / "audit.json"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cold = run_once(args.budget, root / "cache", root / "cold")
        warm = [run_once(args.budget, root / "cache", root / f"warm{i}") for i in range(args.repeats)]
    warm_totals = sorted(w["seconds_end_to_end"] for w in warm)
    result = {
        "benchmark": "audit",
        "budget": args.budget,
        "machine": {"cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "cold": cold,
        "warm": warm,
        "warm_median_seconds": warm_totals[len(warm_totals) // 2],
    }
    write_json(args.out, result)
    print(json.dumps({"cold_seconds": cold["seconds_end_to_end"], "warm_median_seconds": result["warm_median_seconds"],
                      "stages": warm[0]["stages"]}, indent=2))


if __name__ == "__main__":
    main()
