"""``hardened attack``: attack a model on a data subset; write .npz, JSON summary and PNG grid."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from hardened._util.atomic import write_bytes, write_json
from hardened._util.batching import predict_logits
from hardened._util.progress import progress_bar
from hardened.attacks import ATTACKS, attack_in_batches, make_attack
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
    resolve_device,
    seed_everything,
)
from hardened.errors import ConfigError
from hardened.report.plots import plot_adversarial_grid


def attack_command(
    model: ModelOption,
    data: DataOption = "mnist-5k",
    attack: Annotated[str, typer.Option("--attack", help=f"attack: {', '.join(ATTACKS)}")] = "pgd",
    norm: Annotated[str, typer.Option("--norm", help="linf, l2 or l1")] = "linf",
    eps: Annotated[float, typer.Option("--eps", help="radius of the threat model")] = 0.3,
    steps: Annotated[int | None, typer.Option("--steps", help="iterations (iterative attacks)")] = None,
    restarts: Annotated[int | None, typer.Option("--restarts", help="random restarts (pgd)")] = None,
    start: Annotated[str | None, typer.Option(
        "--start", help="pgd start: uniform (in the ball), radial (radius uniform in [0, eps]) or none")] = None,
    loss: Annotated[str, typer.Option("--loss", help="ce or margin")] = "ce",
    n: Annotated[int, typer.Option("--n", min=1, help="number of test images to attack")] = 100,
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("attack-results"),
    weights: WeightsOption = None,
    batch_size: BatchOption = 250,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
) -> None:
    """Attack the first N test images and save the adversarial examples."""
    seed_everything(seed)
    target = resolve_device(device)
    test = load_data(data, data_dir, download, seed).test.head(n)
    loaded = load_model_for(model, weights, test, target)
    options: dict[str, object] = {"eps": eps, "norm": norm, "loss": loss}
    if steps is not None:
        options["steps"] = steps
    if restarts is not None:
        options["restarts"] = restarts
    if start is not None:
        starts = {"uniform": True, "radial": "radial", "none": False}
        if start.lower() not in starts:
            raise ConfigError(f"unknown --start {start!r}: use uniform, radial or none")
        options["random_start"] = starts[start.lower()]
    if ATTACKS.get(attack).seeded:
        options["seed"] = seed
    instance = make_attack(attack, **options)
    x, y = test.x.to(target), test.y.to(target)
    with progress_bar(len(x), f"{attack} {norm} eps={eps:g}", True) as bar:
        result = attack_in_batches(instance, loaded.model, x, y, batch_size=batch_size, bar=bar)
    x_adv, success = result.x_adv.cpu(), result.success.cpu()
    pred_adv, conf_adv = result.pred_adv.cpu(), result.confidence_adv.cpu()
    clean_probs = predict_logits(loaded.model, x).softmax(1).cpu()
    summary = {
        "model": model,
        "data": data,
        "n": len(x),
        "attack": instance.name,
        "params": instance.params(),
        "clean_accuracy": float((clean_probs.argmax(1) == test.y).float().mean()),
        "robust_accuracy": float((pred_adv == test.y).float().mean()),
        "success_rate": float(success.float().mean()),
        "median_norms_of_successes": {
            k: (float(result.norms[k].cpu()[success].median()) if bool(success.any()) else None)
            for k in ("l0", "l2", "linf")
        },
        "forward_count": result.forward_count,
        "gradient_count": result.gradient_count,
        "seconds": result.seconds,
    }
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, x=test.x.numpy(), x_adv=x_adv.numpy(), y=test.y.numpy(),
        pred_adv=pred_adv.numpy(), success=success.numpy(),
    )
    write_bytes(out_dir / "adversarial.npz", buffer.getvalue())
    write_json(out_dir / "summary.json", summary)
    plot_adversarial_grid(
        test.x, x_adv, clean_probs.argmax(1), pred_adv, clean_probs.max(1).values, conf_adv,
        test.classes, out_dir / "grid.png",
    )
    out.print(
        f"{instance.name} {norm} eps={eps:g} on {len(x)} images: clean accuracy "
        f"{summary['clean_accuracy']:.3f}, robust accuracy {summary['robust_accuracy']:.3f}, "
        f"success rate {summary['success_rate']:.3f} ({summary['seconds']:.1f}s)"
    )
    out.print(f"wrote {out_dir / 'adversarial.npz'}, {out_dir / 'summary.json'}, {out_dir / 'grid.png'}")
