"""``hardened evaluate``: robust accuracy over an eps sweep, to JSON and PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hardened.cli._common import (
    BatchOption,
    DataDirOption,
    DataOption,
    DeviceOption,
    DownloadOption,
    ModelOption,
    SeedOption,
    WeightsOption,
    load_data,
    load_model_for,
    out,
    parse_floats,
    resolve_device,
    seed_everything,
)
from hardened.evaluate import robust_accuracy_sweep, save_result
from hardened.report.plots import plot_sweeps


def evaluate_command(
    model: ModelOption,
    data: DataOption = "mnist-5k",
    attack: Annotated[str, typer.Option("--attack", help="fgsm, fgm, bim, pgd, mifgsm")] = "pgd",
    norm: Annotated[str, typer.Option("--norm", help="linf, l2 or l1")] = "linf",
    eps: Annotated[str, typer.Option("--eps", help="comma-separated eps values")] = "0,0.05,0.1,0.2,0.3",
    steps: Annotated[int | None, typer.Option("--steps", help="iterations (iterative attacks)")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="number of test images")] = 1000,
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("evaluate-results"),
    weights: WeightsOption = None,
    batch_size: BatchOption = 250,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
) -> None:
    """Robust accuracy against eps; prints a table, writes sweep.json and sweep.png."""
    seed_everything(seed)
    eps_values = parse_floats(eps, "--eps")
    target = resolve_device(device)
    test = load_data(data, data_dir, download, seed).test.head(n)
    loaded = load_model_for(model, weights, test, target)
    options: dict[str, object] = {}
    if steps is not None:
        options["steps"] = steps
    sweep = robust_accuracy_sweep(
        loaded.model, test.x.to(target), test.y.to(target), eps_values=eps_values, attack=attack,
        norm=norm, batch_size=batch_size, progress=True, **options,
    )
    table = Table(title=f"{attack} ({norm}) on {len(test)} {data} test images")
    table.add_column("eps", justify="right")
    table.add_column("accuracy", justify="right")
    for value, accuracy in zip(sweep.eps, sweep.robust_accuracy, strict=True):
        table.add_row(f"{value:g}", f"{100 * accuracy:.1f}%")
    out.print(table)
    save_result(sweep, out_dir / "sweep.json")
    plot_sweeps([sweep], out_dir / "sweep.png")
    out.print(f"wrote {out_dir / 'sweep.json'} and {out_dir / 'sweep.png'}")
