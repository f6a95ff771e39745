"""``hardened certify``: randomized smoothing (resumable) or IBP certificates for one or several
models; per-sample JSON lines, summary JSON + markdown tables and the certified-accuracy curve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from hardened._util.atomic import write_json, write_text
from hardened._util.lock import locks_output
from hardened._util.memory import resolve_batch_size
from hardened.certify import CERTIFIERS
from hardened.certify.ibp import certify_ibp
from hardened.certify.report import (
    CertifySummary,
    check_radii,
    comparison_markdown,
    comparison_table,
    default_radii,
    plot_certified_accuracy,
    summarize,
    summary_markdown,
)
from hardened.certify.runs import certify_sharded
from hardened.certify.smoothing import check_certify_settings
from hardened.cli._common import (
    Common,
    Option,
    out,
    parse_floats,
    setup,
    shared_options,
)
from hardened.data import Dataset
from hardened.distributed import process_group, world
from hardened.errors import ConfigError
from hardened.models import LoadedModel
from hardened.threat import check_norm


def _names(models: tuple[str, ...], names: list[str] | None) -> list[str]:
    """Labels for the models: ``--name`` values, else file stems made unique; each must be one
    path component, since several models are written to ``OUT/<label>``."""
    if names:
        if len(names) != len(models):
            raise ConfigError(f"give one --name per --model ({len(models)} models, {len(names)} names)")
        labels = list(names)
    else:
        labels = []
        for spec in models:
            stem = Path(spec).stem or spec
            label, k = stem, 2
            while label in labels:
                label, k = f"{stem}-{k}", k + 1
            labels.append(label)
    for label in labels:
        if label in ("", ".", "..") or Path(label).name != label or "\\" in label or "\0" in label:
            raise ConfigError(
                f"--name {label!r} is not a plain name: it becomes a folder inside --out, so give one "
                "path component without '/', '\\', '.' or '..' (e.g. --name robust)"
            )
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--name values must differ, got {labels}")
    return labels


def _subset(test: Dataset, images: int, every: int) -> Dataset:
    return test.subset(slice(0, None, every)).head(images)


def _print_summary(summary: CertifySummary) -> None:
    table = Table(title=f"{summary.name}: certified accuracy ({summary.num_samples} images)")
    table.add_column("L2 radius", justify="right")
    table.add_column("certified accuracy", justify="right")
    for radius, accuracy in zip(summary.radii, summary.certified_accuracy, strict=True):
        table.add_row(f"{radius:g}", f"{100 * accuracy:.1f}%")
    out.print(table)
    acr = summary.average_radius_correct
    out.print(
        f"correctly certified {summary.correct_certified}/{summary.num_samples}, average radius "
        f"{'–' if acr is None else f'{acr:.3f}'} (correct) / {summary.average_radius_all:.3f} (all), "
        f"abstained {100 * summary.abstention_rate:.1f}%, {summary.seconds_per_sample:.2f} s/image"
    )


def _smoothing(
    specs: tuple[str, ...], loaded_models: tuple[LoadedModel, ...], labels: list[str], test: Dataset, target: torch.device,
    out_dir: Path, sigma: float, n0: int, n: int, alpha: float, seed: int, batch_size: int | None,
    radii: list[float] | None, context: dict[str, Any],
) -> None:
    runs = []
    for spec, loaded, label in zip(specs, loaded_models, labels, strict=True):
        folder = out_dir if len(specs) == 1 else out_dir / label
        info = world()
        if info.is_main:
            out.print(f"certifying {label} on {len(test)} images (sigma={sigma:g}, n={n}) -> {folder}"
                      + (f" on {info.size} processes" if info.distributed else ""))
        run = certify_sharded(loaded.model, test.x.to(target), test.y.to(target), log_path=folder / "samples.jsonl",
                              sigma=sigma, n0=n0, n=n, alpha=alpha, seed=seed, batch_size=batch_size, progress=True)
        if run is None:
            continue
        if run.resumed_from:
            out.print(f"resumed after {run.resumed_from} finished samples")
        settings = {**run.settings, **context, "model": spec}
        summary = summarize(run.records, name=label, radii=radii, settings=settings)
        write_json(folder / "summary.json", summary.to_dict())
        write_text(folder / "summary.md", summary_markdown(summary))
        plot_certified_accuracy([(label, run.records)], folder / "curve.png",
                                title=f"{label}: sigma={sigma:g}, n={n}, {len(test)} images")
        _print_summary(summary)
        runs.append((label, run, settings))
    if len(runs) > 1:
        top = max((r.radius for _, run, _ in runs for r in run.records), default=0.0)
        grid = radii if radii is not None else list(default_radii(top))
        summaries = [summarize(run.records, name=label, radii=grid, settings=s) for label, run, s in runs]
        table = comparison_table(summaries, grid)
        write_json(out_dir / "comparison.json", table)
        write_text(out_dir / "comparison.md",
                   f"sigma = {sigma:g}, n0 = {n0}, n = {n}, alpha = {alpha:g}, {len(test)} images\n\n"
                   + comparison_markdown(table))
        plot_certified_accuracy([(label, run.records) for label, run, _ in runs],
                                out_dir / "comparison.png",
                                title=f"sigma={sigma:g}, n={n}, {len(test)} images")
        out.print(comparison_markdown(table))
        out.print(f"wrote {out_dir / 'comparison.json'}, {out_dir / 'comparison.md'}, {out_dir / 'comparison.png'}")


def _ibp(
    specs: tuple[str, ...], loaded_models: tuple[LoadedModel, ...], labels: list[str], test: Dataset, target: torch.device,
    out_dir: Path, eps_values: list[float], norm: str, batch_size: int | None, context: dict[str, Any],
) -> None:
    rows: list[dict[str, Any]] = []
    for spec, loaded, label in zip(specs, loaded_models, labels, strict=True):
        results = [
            certify_ibp(loaded.model, test.x.to(target), test.y.to(target), eps=e, norm=norm,
                        batch_size=resolve_batch_size(batch_size, loaded.model, test.x[:1].to(target), grad=False))
            for e in eps_values
        ]
        rows.append({"name": label, "model": spec, "results": [r.to_dict() for r in results]})
    write_json(out_dir / "ibp.json", {**context, "norm": norm, "eps": eps_values, "models": rows})
    head = ["model", "clean accuracy", *[f"eps={e:g}" for e in eps_values]]
    lines = [f"IBP certified accuracy ({norm}), {len(test)} images", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table = Table(title=f"IBP certified accuracy ({norm}) on {len(test)} images")
    for column in head:
        table.add_column(column, justify="right")
    for row in rows:
        clean = row["results"][0]["clean_accuracy"] if row["results"] else None
        cells = [row["name"], "–" if clean is None else f"{100 * clean:.1f}%",
                 *[f"{100 * r['certified_rate']:.1f}%" for r in row["results"]]]
        lines.append("| " + " | ".join(cells) + " |")
        table.add_row(*cells)
    write_text(out_dir / "ibp.md", "\n".join(lines) + "\n")
    out.print(table)
    out.print(f"wrote {out_dir / 'ibp.json'} and {out_dir / 'ibp.md'}")


def _methods_help() -> str:
    """``smoothing (l2, probabilistic), ibp (linf/l2, deterministic)`` from the registry."""
    kinds = {True: "deterministic", False: "probabilistic"}
    return ", ".join(
        f"{name} ({'/'.join(cls.norms)}, {kinds[bool(cls.deterministic)]})"
        for name, cls in ((name, CERTIFIERS.get(name)) for name in CERTIFIERS.names())
    )


@shared_options("models", "data", "out", "weights", "device", "seed", "data_dir", "download",
                out=Option(Path("certify-results"), "output folder (a re-run resumes there)"))
@locks_output("common.out")
def certify_command(
    common: Common,
    method: Annotated[str, typer.Option("--method", help=f"certificate: {_methods_help()}")] = "smoothing",
    sigma: Annotated[float, typer.Option("--sigma", help="smoothing noise level")] = 0.25,
    n: Annotated[int, typer.Option("--n", min=1, help="estimation samples per image")] = 100_000,
    n0: Annotated[int, typer.Option("--n0", min=1, help="selection samples per image")] = 100,
    alpha: Annotated[float, typer.Option("--alpha", help="failure probability")] = 0.001,
    eps: Annotated[str, typer.Option("--eps", help="IBP radius, or comma-separated radii")] = "0.1",
    norm: Annotated[str, typer.Option("--norm", help="IBP ball: linf or l2")] = "linf",
    images: Annotated[int, typer.Option("--images", min=1, help="number of test images")] = 100,
    every: Annotated[int, typer.Option("--every", min=1, help="take every k-th test image")] = 1,
    radii: Annotated[str | None, typer.Option("--radii", help="comma-separated radii for the table")] = None,
    name: Annotated[list[str] | None, typer.Option("--name", help="label per --model (default: file name)")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="noisy copies per forward pass (default: sized to memory)")] = None,
) -> None:
    """Certify test images: smoothing writes samples.jsonl (resumable), summary.json/.md and
    curve.png per model, plus comparison.json/.md/.png for several models; ibp writes ibp.json/.md."""
    key = CERTIFIERS.canonical(method)
    if key not in ("smoothing", "ibp"):
        raise ConfigError(
            f"the certify command reports smoothing and ibp; certify with {key} from Python: "
            f"hardened.certify.CERTIFIERS.make({key!r}, ...).radii(model, x, y)"
        )
    labels = _names(common.models, name)
    out_dir, seed = common.out, common.seed
    eps_values = parse_floats(eps, "--eps") if key == "ibp" else []
    if key == "ibp" and check_norm(norm) not in CERTIFIERS.get("ibp").norms:
        raise ConfigError(f"--method ibp certifies in {', '.join(CERTIFIERS.get('ibp').norms)}, not {norm!r}")
    if key == "smoothing":
        check_certify_settings(sigma, n0, n, alpha, batch_size)
    grid = check_radii(parse_floats(radii, "--radii")) if radii else None
    session = setup(common, writes=[(out_dir, True)])
    target, models = session.device, session.models
    test = _subset(session.splits.test, images, every)
    context = {"data": common.data, "images": len(test), "every": every, "device": str(target)}
    if key == "ibp":
        _ibp(common.models, models, labels, test, target, out_dir, eps_values, norm, batch_size, context)
        return
    with process_group(backend="gloo"):  # certification only gathers records: CPU collectives
        _smoothing(common.models, models, labels, test, target, out_dir, sigma, n0, n, alpha, seed, batch_size,
                   grid, context)
