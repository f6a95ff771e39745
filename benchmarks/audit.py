"""Time ``hardened audit --budget quick`` end to end and per stage, so regressions show.

Runs the real command in a subprocess twice: cold (empty model cache: includes training the
default lenet) and warm (model reused), each into a fresh folder. Per-stage seconds come from
the audit's own ``audit.json``. Writes ``benchmarks/results/audit.json``.

    python benchmarks/audit.py [--budget quick] [--repeats 1]
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
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "audit.json")
    args = parser.parse_args()
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
