"""``benchmarks/audit.py --model NAME``: the audit's time and peak memory per section on real images.

Two settings (issue 13, items 5 and 6):

- ``resnet18-cifar``: the zoo's CIFAR-shape ResNet-18 (11.2M parameters) on foolbox's 20 real
  CIFAR-10 test images;
- ``resnet18-224``: ResNet-18 with ImageNet's stem (``resnet18(stem="imagenet")``) at 3×224×224
  on foolbox's 20 real ImageNet validation images, resized to 224×224.

Twenty images cannot feed an audit (the guard section fits on the training part and calibrates
on a quarter of it, at least 20 images), so each image is used with 5 shifted or mirrored copies
(120 images; a stratified 80/20 split, so near-duplicates sit on both sides: the accuracies
measure memorisation, not generalisation; this benchmark measures cost). The model is briefly
trained on the training part (``--epochs``, 0: random weights), said in the output.

Per section: wall and CPU seconds and the peak resident memory (VmHWM, reset before each section
through ``/proc/self/clear_refs``), plus a guard section on the 9 photographs of
``shared/data/ood-samples/natural`` as the OOD set (energy and Mahalanobis scores), which the
audit's own guard section does not take. Writes ``benchmarks/results/audit_<model>.json``.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hardened._util.atomic import write_json
from hardened.data import Dataset
from hardened.data.dataset import stratified_split
from hardened.data.files import load_image_folder

MODELS = ("resnet18-cifar", "resnet18-224")
NATURAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ood-samples" / "natural"
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def foolbox_samples(prefix: str, folder: Path, size: tuple[int, int] | None) -> Dataset:
    """foolbox's ``<prefix>_<index>_<label>.*`` samples as a class-folder dataset under ``folder``."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise SystemExit("foolbox is not installed: its wheel ships the sample images (pip install foolbox)")
    files = sorted((Path(spec.origin).parent / "data").glob(f"{prefix}_*"))
    for file in files:
        label = file.stem.split("_")[-1]
        (folder / f"class{int(label):04d}").mkdir(parents=True, exist_ok=True)
        (folder / f"class{int(label):04d}" / file.name).write_bytes(file.read_bytes())
    return load_image_folder(folder, size=size)


def with_copies(data: Dataset) -> Dataset:
    """Each image, its mirror, and both shifted by 2 pixels left/down/right...: 6 per image."""
    views = [data.x, data.x.flip(3)]
    for shift in ((2, 0), (0, 2)):
        views += [data.x.roll(shift, dims=(2, 3)), data.x.flip(3).roll(shift, dims=(2, 3))]
    x = torch.cat(views)
    return Dataset(x, data.y.repeat(len(views)), data.classes, f"{data.name} ×{len(views)} copies")


def peak_rss_reset() -> None:
    """Reset the kernel's resident-memory high-water mark of this process (Linux >= 4.0)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """VmHWM of this process in MiB (since the last reset), else ru_maxrss."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measured(name: str, run: Callable[..., Any], records: dict[str, dict[str, float]],
             progress: Path | None = None) -> Callable[..., Any]:
    """``run`` that records its wall and CPU seconds and peak RSS under ``records[name]`` (and
    writes ``records`` to ``progress`` after each section, so a long run's figures survive)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        peak_rss_reset()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return run(*args, **kwargs)
        finally:
            records[name] = {"wall_seconds": round(time.perf_counter() - wall, 1),
                             "cpu_seconds": round(time.process_time() - cpu, 1),
                             "peak_rss_mib": round(peak_rss_mib(), 0), "load_average": os.getloadavg()[0]}
            if progress is not None:
                write_json(progress, records)

    return wrapper


def setting(name: str, folder: Path) -> tuple[torch.nn.Module, Dataset, dict[str, Any]]:
    """The model (unfitted) and the data of one setting."""
    from hardened.models import arch_kwargs_for, build_model

    if name == "resnet18-cifar":
        data = with_copies(foolbox_samples("cifar10", folder, None))
        kwargs: dict[str, Any] = {}
    else:
        data = with_copies(foolbox_samples("imagenet", folder, (224, 224)))
        kwargs = {"stem": "imagenet"}
    fitted = arch_kwargs_for(data)
    torch.manual_seed(0)
    model = build_model("resnet18", **fitted, **kwargs)
    arch = {"arch": "resnet18", **kwargs, "parameters": sum(p.numel() for p in model.parameters())}
    return model, data, arch


def brief_training(model: torch.nn.Module, train: Dataset, epochs: int) -> dict[str, Any]:
    """``epochs`` of Adam (lr 1e-3, batch 16) on the training part; a record of it."""
    from hardened.train import TrainConfig
    from hardened.train import train as fit

    if epochs == 0:
        return {"weights": "random (seed 0)"}
    start, cpu = time.perf_counter(), time.process_time()
    config = TrainConfig(epochs=epochs, batch_size=16, lr=1e-3, optimizer="adam", seed=0)
    result = fit(model, train, config=config, progress=False)
    return {"weights": f"briefly trained: {epochs} epochs of Adam on {len(train)} images",
            "train_wall_seconds": round(time.perf_counter() - start, 1),
            "train_cpu_seconds": round(time.process_time() - cpu, 1),
            "train_accuracy": result.history[-1].train_accuracy if result.history else None}


def natural_guard(model: torch.nn.Module, train: Dataset, test: Dataset, batch: int) -> dict[str, Any]:
    """Energy and Mahalanobis guards fitted on ``train``, calibrated on half of it, evaluated on
    ``test`` against the 9 natural photographs (resized to the input shape) as the OOD set."""
    from hardened.guard import GuardedClassifier, make_score
    from hardened.guard.evaluation import evaluate_guard
    from hardened.guard.probes import folder_images

    photos = folder_images(NATURAL, test.input_shape)
    half = len(train) // 2
    out: dict[str, Any] = {"ood": f"{len(photos)} photographs from {NATURAL}"}
    for score_name in ("energy", "mahalanobis"):
        score = make_score(score_name, model, batch_size=batch).fit(train.head(half))
        guard = GuardedClassifier(model, score, batch_size=batch)
        guard.calibrate(train.x[half:], fpr=0.1)
        evaluation = evaluate_guard(guard, test.x, {"natural-photos": photos}, id_name=test.name)
        out[score_name] = {"auroc": round(evaluation.ood[0].auroc, 3), "fnr": round(evaluation.ood[0].fnr, 3),
                           "id_fpr": round(evaluation.id_fpr, 3)}
    return out


def run_setting(name: str, root: Path, epochs: int, budget: str, progress: Path | None = None) -> dict[str, Any]:
    """Train briefly, audit with each section measured, and run the natural-photo guard;
    ``progress``: where the sections measured so far are written as they finish."""
    from hardened._util.memory import fit_batch_size
    from hardened.audit import run_audit
    from hardened.audit.pipeline import all_stages

    model, data, arch = setting(name, root / "images")
    splits = stratified_split(data, test_fraction=0.2, seed=0)
    records: dict[str, dict[str, float]] = {}
    training = measured("train", brief_training, records, progress)(model, splits.train, epochs)
    model.eval()
    batch = measured("batch sizing", fit_batch_size, records, progress)(model, splits.test.x[:1])
    stages = list(all_stages())
    for stage in stages:
        stage.run = measured(stage.name, stage.run, records, progress)  # type: ignore[method-assign]
    result = measured("audit (total)", run_audit, records, progress)(model, splits, out_dir=root / "report", budget=budget,
                                                             seed=0, model_name=name, stages=stages, batch_size=batch)
    guard = measured("guard on natural photos", natural_guard, records, progress)(model, splits.train, splits.test, batch)
    return {
        "model": name, **arch, "training": training,
        "data": {"name": data.name, "input_shape": list(data.input_shape), "train": len(splits.train),
                 "test": len(splits.test), "classes": data.num_classes},
        "budget": result.budget, "batch_size": batch,
        "sections": records,
        "status": {s.name: s.status if s.status == "ok" else f"{s.status}: {s.message}" for s in result.stages},
        "verdict": result.verdict,
        "natural_guard": guard,
    }
