"""``hardened audit``: one command, one robustness report (index.html + audit.json + PNGs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hardened.audit import check_budget, check_output_dir, default_model, run_audit
from hardened.cli._common import (
    DataDirOption,
    DeviceOption,
    DownloadOption,
    SeedOption,
    WeightsOption,
    check_fit,
    console,
    load_data,
    out,
    resolve_device,
    seed_everything,
)
from hardened.models import LoadedModel, ModelInfo, load_model


def audit_command(
    model: Annotated[str | None, typer.Option("--model", help="model file or pkg.module:factory; default: a lenet trained on mnist-5k (cached)")] = None,
    data: Annotated[str, typer.Option("--data", help="mnist-5k, digits, mnist, fashion-mnist, a folder or .npz")] = "mnist-5k",
    out_dir: Annotated[Path, typer.Option("--out", help="report folder (new, empty, or a previous audit)")] = Path("audit-report"),
    budget: Annotated[str, typer.Option("--budget", help="quick, standard or thorough")] = "quick",
    weights: WeightsOption = None,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
) -> None:
    """Audit a model's robustness and write one report a person can read.

    Exit code 0: every section measured; 3: some section was skipped or failed (see the report).
    """
    check_budget(budget)
    check_output_dir(out_dir)
    seed_everything(seed)
    target = resolve_device(device)
    splits = load_data(data, data_dir, download, seed)
    if model is None:
        if data != "mnist-5k":
            console.print(f"no --model given: training the default lenet on {data}")
        network, path = default_model(splits, seed=seed, progress=True)
        loaded = LoadedModel(network, ModelInfo(arch="lenet", input_shape=splits.train.input_shape,
                                                classes=splits.train.classes, source=str(path)))
        name = f"lenet (default, {path})"
    else:
        loaded = load_model(model, weights)
        name = model
    loaded.model.to(target)
    check_fit(loaded, splits.test, target)
    result = run_audit(loaded.model, splits, out_dir=out_dir, budget=budget, seed=seed,
                       model_name=name, progress=True)
    out.print(result.verdict)
    out.print(f"report: {out_dir / 'index.html'}  figures: {out_dir / 'audit.json'}")
    incomplete = [s for s in result.stages if s.status != "ok"]
    if incomplete:
        for stage in incomplete:
            console.print(f"[yellow]{stage.status}[/yellow] {stage.title}: {stage.message}")
        raise typer.Exit(code=3)
