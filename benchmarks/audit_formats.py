"""The quick audit of the default ``lenet`` in every model format: sections present, figures per
section beside the safetensors model's, and time per section.

Formats: safetensors (the reference), TorchScript (``torch.jit.trace``, saved and loaded back),
ONNX through onnx2torch (white-box) and ONNX through onnxruntime (outputs only, with transfer
from a second lenet trained with another seed: the default surrogate would be the audited model
itself). Every model is loaded with ``hardened.load_model`` as ``hardened audit`` loads it.
onnx2torch imports torchvision for two detection-only converters; where no torchvision build
matches the installed torch, ``--torchvision-stand-in`` (default on) gives it the same bare stand-in
the tests use, and the JSON says so. Writes ``benchmarks/results/audit_formats.json``.

    nice -n 10 python benchmarks/audit_formats.py [--budget quick] [--formats safetensors,torchscript,...]

Formats not run keep their previous record in the JSON (same budget), so a run can be split.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import resource
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

from hardened._util.atomic import write_json  # noqa: E402
from hardened.audit import default_model, run_audit  # noqa: E402
from hardened.data import load_splits  # noqa: E402
from hardened.models import load_model  # noqa: E402

FORMATS = ("safetensors", "torchscript", "onnx-onnx2torch", "onnx-onnxruntime")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _stand_in_torchvision() -> str:
    """Import torchvision, or install the tests' bare stand-in; say which."""
    try:
        importlib.import_module("torchvision")
        return "torchvision imported"
    except Exception as error:  # no build matching this torch
        fake = types.ModuleType("torchvision")
        fake.ops = types.ModuleType("torchvision.ops")  # type: ignore[attr-defined]
        fake.ops.roi_align = None  # type: ignore[attr-defined]
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = fake, fake.ops  # type: ignore[attr-defined]
        return f"stand-in (torchvision: {type(error).__name__}; a classifier never reaches NMS or RoIAlign)"


def _export(model: torch.nn.Module, folder: Path, fmt: str, shape: tuple[int, ...]) -> Path:
    if fmt == "torchscript":  # traced (the zoo's modules use postponed annotations, which script cannot read)
        path = folder / "lenet.pt"
        torch.jit.trace(model, torch.rand(2, *shape)).save(str(path))
        return path
    path = folder / "lenet.onnx"
    if not path.is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (torch.rand(2, *shape),), str(path), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    return path


def _numbers(summary: dict[str, Any] | None) -> dict[str, float]:
    """The numeric fields of a stage's summary (the section's headline figures)."""
    return {k: v for k, v in (summary or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def _audit(fmt: str, model: Any, splits: Any, folder: Path, budget: str, surrogate: Any) -> dict[str, Any]:
    load, cpu, start = os.getloadavg(), _cpu_seconds(), time.perf_counter()
    result = run_audit(model, splits, out_dir=folder, budget=budget, seed=0, model_name=fmt, surrogate=surrogate)
    return {
        "format": fmt,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "access": result.access,
        "queries": result.queries,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": _cpu_seconds() - cpu,
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
        "sections": {
            s.name: {"status": s.status, "seconds": round(s.seconds, 2), "message": s.message,
                     "figures": _numbers(s.summary.to_dict() if s.summary else None),
                     "summary": s.summary.to_dict() if s.summary else None,
                     "notes": [n for n in s.notes if "not applicable" in n or "left out" in n or "skipped" in n],
                     "queries": s.data.get("queries"),
                     **({"sweeps": {f"{w['norm']} {w['attack']}": dict(zip(w["eps"], w["robust_accuracy"], strict=True))
                                    for w in s.data.get("sweeps", [])}} if s.name == "robustness" else {})}
            for s in result.stages
        },
        "verdict": result.verdict,
    }


def _differences(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per section and figure: other minus the safetensors model's (sections measured in both)."""
    out = {}
    for name, section in other["sections"].items():
        base = reference["sections"].get(name, {}).get("figures", {})
        shared = set(base) & set(section["figures"])
        out[name] = {k: round(section["figures"][k] - base[k], 4) for k in sorted(shared)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="quick")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--torchvision-stand-in", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=RESULTS / "audit_formats.json")
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    splits = load_splits("mnist-5k", seed=0)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    reference, path = default_model(splits, seed=0)
    surrogate, surrogate_path = default_model(splits, seed=1)
    notes = {**previous.get("notes", {}),
             "surrogate": f"the default lenet trained with seed 1 ({surrogate_path}), for the onnxruntime audit"}
    if "onnx-onnx2torch" in formats and args.torchvision_stand_in:
        notes["torchvision"] = _stand_in_torchvision()
    runs: dict[str, Any] = dict(previous.get("runs", {})) if previous.get("budget") == args.budget else {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for fmt in formats:
            try:
                if fmt == "safetensors":
                    model = load_model(path).model
                elif fmt == "torchscript":
                    model = load_model(_export(reference, root, fmt, splits.train.input_shape)).model
                else:
                    backend = "torch" if fmt == "onnx-onnx2torch" else "onnxruntime"
                    model = load_model(_export(reference, root, fmt, splits.train.input_shape), backend=backend).model
            except Exception as error:  # a format that cannot load here (an extra missing) is reported
                runs[fmt] = {"format": fmt, "unavailable": f"{type(error).__name__}: {error}"}
                print(f"{fmt}: unavailable ({error})", flush=True)
                continue
            runs[fmt] = _audit(fmt, model, splits, root / fmt, args.budget,
                               surrogate if fmt == "onnx-onnxruntime" else None)
            sections = runs[fmt]["sections"]
            print(f"{fmt}: {runs[fmt]['seconds']:.0f} s, " + ", ".join(f"{n} {s['status']}" for n, s in sections.items()),
                  flush=True)
    if "safetensors" in runs and "sections" in runs["safetensors"]:
        for run in runs.values():
            if "sections" in run:
                run["minus_safetensors"] = _differences(runs["safetensors"], run)
    write_json(args.out, {"benchmark": "audit_formats", "budget": args.budget, "data": "mnist-5k",
                          "model": f"lenet (default, {path})", "machine": machine(), "notes": notes,
                          "nice": os.nice(0), "runs": runs})
    print(json.dumps({f: {n: (s["status"], s["seconds"]) for n, s in r.get("sections", {}).items()}
                      for f, r in runs.items()}, indent=1))


if __name__ == "__main__":
    main()
