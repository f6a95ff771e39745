"""``hardened explain``: relevance heatmaps for chosen test images (PNG, JSON, .npz), and
optionally pixel-flipping curves comparing the explanation methods."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.table import Table

from hardened._util.atomic import write_bytes, write_json
from hardened._util.lock import locks_output
from hardened._util.memory import resolve_batch_size
from hardened.cli._common import SIZED_BATCH, Common, out, parse_ints, setup, shared_options
from hardened.errors import ConfigError, HardenedWarning
from hardened.explain import COMPOSITES, explain_images, make_composite
from hardened.explain.attribute import canonical_method
from hardened.explain.quality import QUALITY_METHODS, compare_explanations
from hardened.report.heatmaps import plot_deletion_curves, plot_heatmap, plot_heatmap_grid


@shared_options("model", "data", "out", "weights", "backend", "trust_pickle", "device", "seed", "data_dir", "download",
                "batch_size", out=Path("explain-results"), batch_size=SIZED_BATCH)
@locks_output("common.out")
def explain_command(
    common: Common,
    index: Annotated[str, typer.Option("--index", help="comma-separated test-image indices")] = "0,1,2",
    method: Annotated[str, typer.Option("--method", help="lrp, gradient, saliency, gradient-x-input, integrated-gradients, smoothgrad")] = "lrp",
    composite: Annotated[str, typer.Option("--composite", help=f"LRP rules: {', '.join(COMPOSITES)}")] = "epsilon-gamma-box",
    target: Annotated[int | None, typer.Option("--target", min=0, help="class to explain (default: the prediction)")] = None,
    compare: Annotated[str, typer.Option("--compare", help="more methods for the grid, comma-separated")] = "",
    quality: Annotated[int, typer.Option("--quality", min=0, help="pixel-flipping curves on this many test images (0: off)")] = 0,
) -> None:
    """Explain the model's decision on chosen test images and draw heatmaps."""
    indices = parse_ints(index, "--index")
    if not indices:
        raise ConfigError("--index needs at least one test-image index, e.g. --index 0,1,2")
    chosen = [canonical_method(m) for m in (method, *(c.strip() for c in compare.split(","))) if m]
    if "lrp" in chosen or quality:
        make_composite(composite)
    out_dir, model, data, seed = common.out, common.model, common.data, common.seed
    session = setup(common, writes=[(out_dir, True)])
    where, loaded, test = session.device, session.model, session.splits.test
    bad = [i for i in indices if not 0 <= i < len(test)]
    if bad:
        raise ConfigError(f"--index {bad} out of range: {data} has {len(test)} test images (0..{len(test) - 1})")
    x = test.x[indices].to(where)
    labels = test.y[indices]
    goal = None if target is None else torch.full((len(indices),), int(target), dtype=torch.long, device=where)
    options: dict[str, Any] = {"composite": composite, "seed": seed, "fallback": "gradient-x-input",
                               "batch_size": resolve_batch_size(common.batch_size, loaded.model, x)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HardenedWarning)  # said once below, as a plain line
        main = explain_images(loaded.model, x, goal, method, **options)
    if main.params.get("fallback_from"):
        out.print(f"note: LRP cannot explain this model ({main.params['reason']}); "
                  f"showing {main.method} instead")
    methods = [main.method] + [m for m in (c.strip() for c in compare.split(",")) if m]
    attributions = {main.method: main}
    for name in methods[1:]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HardenedWarning)
            other = explain_images(loaded.model, x, goal, name, **options)
        attributions[other.method] = other
    classes = test.classes
    for position, i in enumerate(indices):
        title = (
            f"#{i}: label {classes[int(labels[position])]}, predicted "
            f"{classes[int(main.prediction[position])]}, explaining {classes[int(main.target[position])]} "
            f"({main.method})"
        )
        plot_heatmap(x[position].cpu(), main.relevance[position].cpu(), out_dir / f"heatmap_{i}.png", title)
    titles = [f"#{i} {classes[int(t)]}" for i, t in zip(indices, main.target.tolist(), strict=True)]
    plot_heatmap_grid(x.cpu(), {k: a.relevance.cpu() for k, a in attributions.items()}, out_dir / "grid.png", titles)
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {f"relevance_{k}": a.relevance.cpu().numpy() for k, a in attributions.items()}
    np.savez_compressed(buffer, index=np.array(indices), x=x.cpu().numpy(), **arrays)
    write_bytes(out_dir / "relevance.npz", buffer.getvalue())
    summary: dict[str, Any] = {"model": model, "data": data, "index": indices, "methods": {k: a.to_dict() for k, a in attributions.items()}}
    written = [f"{len(indices)} heatmap_*.png", "grid.png", "relevance.npz", "explain.json"]
    if quality:
        subset = test.head(quality)
        compared = [m for m in QUALITY_METHODS if m != "lrp" or not main.params.get("fallback_from")]
        curves = compare_explanations(loaded.model, subset.x.to(where), subset.y.to(where), compared,
                                      seed=seed, composite=composite)
        plot_deletion_curves(curves, out_dir / "deletion.png", title=f"Pixel flipping on {len(subset)} {data} test images")
        summary["pixel_flipping"] = [c.to_dict() for c in curves]
        table = Table(title=f"Pixel flipping on {len(subset)} images (area: lower is better)")
        table.add_column("method")
        table.add_column("area", justify="right")
        for curve in sorted(curves, key=lambda c: c.area):
            table.add_row(curve.method, f"{curve.area:.4f}")
        out.print(table)
        written.append("deletion.png")
    write_json(out_dir / "explain.json", summary)
    for position, i in enumerate(indices):
        out.print(
            f"#{i}: label {classes[int(labels[position])]}, predicted {classes[int(main.prediction[position])]}, "
            f"logit {float(main.output[position]):.3f}, relevance sum {float(main.relevance_sum[position]):.3f}"
        )
    out.print(f"wrote {', '.join(written)} to {out_dir}")
