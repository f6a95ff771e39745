"""``hardened benchmark-attacks``: I-FGSM against the explanation-guided attacks and their
baselines on the same inputs: ASR-vs-norm plots (L0, L2, Linf), ASR at fixed budgets, median
norms, cost, JSON, and an animated GIF of LRP-grad on one image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hardened._util.atomic import write_json
from hardened._util.batching import predict_logits
from hardened.attacks import LRPGrad
from hardened.cli._common import Common, out, setup, shared_options
from hardened.errors import ConfigError
from hardened.evaluate.compare import (
    DEFAULT_BUDGETS,
    compare_attacks,
    default_attack_suite,
    trace_attack,
)
from hardened.explain import COMPOSITES
from hardened.report.heatmaps import AnimationFrame, save_animation
from hardened.report.plots import plot_success_curves

_NORM_TITLES = {"l0": "L0 (pixels changed)", "l2": "L2", "linf": "Linf"}


@shared_options("model", "data", "out", "weights", "batch_size", "device", "seed", "data_dir", "download",
                out=Path("benchmark-attacks"), batch_size=100)
def benchmark_attacks_command(
    common: Common,
    n: Annotated[int, typer.Option("--n", min=1, help="test images (the correctly classified ones are attacked)")] = 200,
    eps: Annotated[float, typer.Option("--eps", help="Linf radius of I-FGSM and LRP-grad")] = 0.3,
    steps: Annotated[int, typer.Option("--steps", min=1, help="iterations of I-FGSM and LRP-grad")] = 30,
    step_size: Annotated[float, typer.Option("--step-size", help="step of I-FGSM and LRP-grad")] = 0.01,
    pixel_fraction: Annotated[float, typer.Option("--pixel-fraction", help="share of pixels an LRP-grad step may change")] = 0.1,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, help="pixel budget of the flip/mean attacks")] = 100,
    pixels_per_step: Annotated[int, typer.Option("--pixels-per-step", min=1, help="pixels changed per explanation")] = 4,
    composite: Annotated[str, typer.Option("--composite", help=f"LRP composite: {', '.join(COMPOSITES)}")] = "epsilon-gamma-box",
    attacks: Annotated[str, typer.Option("--attacks", help="comma-separated subset of the suite's labels (default: all)")] = "",
    gif_index: Annotated[int | None, typer.Option("--gif-index", min=0, help="which attacked image to animate (default: the first one LRP-grad fools)")] = None,
    gif: Annotated[bool, typer.Option("--gif/--no-gif", help="write the LRP-grad animation")] = True,
) -> None:
    """Compare I-FGSM with LRP-flip, LRP-mean and LRP-grad (and their baselines)."""
    out_dir, model, data, seed, batch_size = common.out, common.model, common.data, common.seed, common.batch_size
    session = setup(common, writes=[(out_dir, True)])
    where, loaded, test = session.device, session.model, session.splits.test.head(n)
    suite = default_attack_suite(
        eps=eps, steps=steps, step_size=step_size, max_pixels=max_pixels,
        pixels_per_step=pixels_per_step, pixel_fraction=pixel_fraction, composite=composite, seed=seed,
    )
    if attacks:
        chosen = [a.strip() for a in attacks.split(",") if a.strip()]
        unknown = [a for a in chosen if a not in suite]
        if unknown:
            raise ConfigError(f"unknown attack label(s) {unknown}: use some of {', '.join(suite)}")
        suite = {k: suite[k] for k in chosen}
    x, y = test.x.to(where), test.y.to(where)
    comparison = compare_attacks(
        loaded.model, x, y, suite, batch_size=batch_size, progress=True,
        info={"model": model, "data": data, "n_requested": n, "eps": eps, "steps": steps,
              "step_size": step_size, "pixel_fraction": pixel_fraction, "max_pixels": max_pixels,
              "pixels_per_step": pixels_per_step, "composite": composite, "seed": seed},
    )
    written = ["comparison.json"]
    for norm in ("l0", "l2", "linf"):
        plot_success_curves(comparison.curves(norm), out_dir / f"asr_{norm}.png",
                            title=f"Success rate against {_NORM_TITLES[norm]} ({comparison.n} images)")
        written.append(f"asr_{norm}.png")
    write_json(out_dir / "comparison.json", comparison.to_dict())
    title = f"{comparison.n} correctly classified {data} test images (clean accuracy {comparison.clean_accuracy:.3f})"
    costs = Table(title=title)
    for column in ("attack", "ASR", "median L0", "median L2", "median Linf", "grads/img", "img/s"):
        costs.add_column(column, justify="left" if column == "attack" else "right")
    for run in comparison.runs:
        medians = run.median_norms()
        summary = run.summary()
        costs.add_row(
            run.label, f"{100 * run.success_rate:.0f}%",
            *("-" if medians[k] is None else f"{medians[k]:.3g}" for k in ("l0", "l2", "linf")),
            f"{summary['gradient_evaluations_per_image']:.1f}",
            f"{summary['images_per_second']:.1f}" if summary["images_per_second"] else "-",
        )
    out.print(costs)
    budgets = Table(title="success rate within a budget (norm ≤ value)")
    budgets.add_column("attack")
    shown = [(k, b) for k, values in DEFAULT_BUDGETS.items() for b in values[1:3]]
    for k, b in shown:
        budgets.add_column(f"{k}≤{b:g}", justify="right")
    asr = comparison.table()
    for run in comparison.runs:
        budgets.add_row(run.label, *(f"{100 * asr[run.label][k][f'{b:g}']:.0f}%" for k, b in shown))
    out.print(budgets)
    if gif:
        attacked = (y == predict_logits(loaded.model, x).argmax(1)).nonzero().flatten()
        if gif_index is None:
            lrp_grad = next((r for r in comparison.runs if r.label == "LRP-grad"), None)
            fooled = [] if lrp_grad is None else [i for i, ok in enumerate(lrp_grad.success) if ok]
            gif_index = fooled[0] if fooled else 0
        if gif_index >= len(attacked):
            raise ConfigError(f"--gif-index {gif_index} but only {len(attacked)} images are classified correctly")
        i = int(attacked[gif_index])
        trace = trace_attack(
            loaded.model, x[i : i + 1], y[i : i + 1],
            lambda t: LRPGrad(eps=eps, steps=t, step_size=step_size, pixel_fraction=pixel_fraction,
                              composite=composite, seed=seed),
            steps, composite=composite,
        )
        classes = test.classes
        frames = [
            AnimationFrame(s.x_adv.cpu(), s.perturbation.cpu(), s.relevance.cpu(),
                           f"LRP-grad step {s.step}: predicted {classes[s.prediction]} ({100 * s.confidence:.0f}%)")
            for s in trace
        ]
        frames += [frames[-1]] * 3  # hold the last frame
        save_animation(frames, out_dir / "lrp_grad.gif")
        written.append("lrp_grad.gif")
    out.print(f"wrote {', '.join(written)} to {out_dir}")
