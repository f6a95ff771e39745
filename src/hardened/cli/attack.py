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
from hardened.cli._common import Common, out, setup, shared_options
from hardened.errors import ConfigError
from hardened.report.plots import plot_adversarial_grid

_STARTS = {"uniform": True, "radial": "radial", "none": False}


@shared_options("model", "data", "out", "weights", "batch_size", "device", "seed", "data_dir", "download",
                out=Path("attack-results"), batch_size=250)
def attack_command(
    common: Common,
    attack: Annotated[str, typer.Option("--attack", help=f"attack: {', '.join(ATTACKS)}")] = "pgd",
    norm: Annotated[str, typer.Option("--norm", help="linf, l2 or l1")] = "linf",
    eps: Annotated[float, typer.Option("--eps", help="radius of the threat model")] = 0.3,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="iterations (iterative attacks)")] = None,
    restarts: Annotated[int | None, typer.Option("--restarts", min=1, help="random restarts (pgd)")] = None,
    start: Annotated[str | None, typer.Option(
        "--start", help="pgd start: uniform (in the ball), radial (radius uniform in [0, eps]) or none")] = None,
    loss: Annotated[str | None, typer.Option(
        "--loss", help="ce or margin (pgd family), ce or dlr (apgd-*), margin or ce (square); default: the attack's")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="number of test images to attack")] = 100,
) -> None:
    """Attack the first N test images and save the adversarial examples."""
    options: dict[str, object] = {"eps": eps, "norm": norm}
    if loss is not None:
        options["loss"] = loss
    if steps is not None:
        options["steps"] = steps
    if restarts is not None:
        options["restarts"] = restarts
    if start is not None:
        if start.lower() not in _STARTS:
            raise ConfigError(f"unknown --start {start!r}: use uniform, radial or none")
        options["random_start"] = _STARTS[start.lower()]
    if ATTACKS.get(attack).seeded:
        options["seed"] = common.seed
    instance = make_attack(attack, **options)
    out_dir = common.out
    session = setup(common, writes=[(out_dir, True)])
    test, model = session.splits.test.head(n), session.model.model
    x, y = test.x.to(session.device), test.y.to(session.device)
    with progress_bar(len(x), f"{attack} {norm} eps={eps:g}", True) as bar:
        result = attack_in_batches(instance, model, x, y, batch_size=common.batch_size, bar=bar)
    summary = {"model": common.model, "data": common.data, **result.to_dict()}
    x_adv, success, pred_adv = result.x_adv.cpu(), result.success.cpu(), result.pred_adv.cpu()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=test.x.numpy(), x_adv=x_adv.numpy(), y=test.y.numpy(),
                        pred_adv=pred_adv.numpy(), success=success.numpy())
    write_bytes(out_dir / "adversarial.npz", buffer.getvalue())
    write_json(out_dir / "summary.json", summary)
    clean_probs = predict_logits(model, x).softmax(1).cpu()
    plot_adversarial_grid(test.x, x_adv, result.pred_clean.cpu(), pred_adv, clean_probs.max(1).values,
                          result.confidence_adv.cpu(), test.classes, out_dir / "grid.png")
    out.print(
        f"{instance.name} {norm} eps={eps:g} on {len(x)} images: clean accuracy "
        f"{result.clean_accuracy:.3f}, robust accuracy {result.robust_accuracy:.3f}, "
        f"success rate {result.success_rate:.3f} ({result.seconds:.1f}s)"
    )
    out.print(f"wrote {out_dir / 'adversarial.npz'}, {out_dir / 'summary.json'}, {out_dir / 'grid.png'}")
