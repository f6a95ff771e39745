"""``hardened attack``: attack a model on a data subset; write .npz, JSON summary and PNG grid."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from hardened._util.atomic import write_bytes, write_json
from hardened._util.batching import predict_logits
from hardened._util.lock import locks_output
from hardened._util.memory import resolve_batch_size
from hardened._util.progress import progress_bar
from hardened.attacks import ATTACKS, Attack, attack_in_batches, make_attack
from hardened.cli._common import SIZED_BATCH, Common, Option, console, out, setup, shared_options
from hardened.errors import ConfigError, QueryBudgetExceeded, TargetError
from hardened.models.blackbox import BlackBox, HttpTarget, TorchTarget, attack_target
from hardened.report.plots import plot_adversarial_grid

_STARTS = {"uniform": True, "radial": "radial", "none": False}


def _budget_options(
    attack: str, norm: str | None, eps: float | None, pixels: int | None, rotation: float | None, translation: float | None
) -> dict[str, object]:
    """The attack's budget options by its declared norms: a pixel count for L0 attacks,
    transformation ranges for spatial ones, an optional bound for minimal-norm ones, else a ball."""
    cls = ATTACKS.get(attack)
    given = {"--pixels": pixels, "--rotation": rotation, "--translation": translation}
    if "l0" in cls.norms:
        allowed = {"--pixels"}
        options: dict[str, object] = {} if pixels is None else {"max_pixels": pixels}
    elif "spatial" in cls.norms:
        allowed = {"--rotation", "--translation"}
        options = {k: v for k, v in (("rotation", rotation), ("translation", translation)) if v is not None}
    else:
        allowed = set()
        options = {} if norm is None and cls.minimal else {"norm": norm or "linf"}
        if eps is not None or not cls.minimal:
            options["eps"] = 0.3 if eps is None else eps
    if "eps" not in options and eps is not None:
        raise ConfigError(f"--eps does not apply to the {cls.name} attack: use {' or '.join(sorted(allowed))}")
    misplaced = sorted(k for k, v in given.items() if v is not None and k not in allowed)
    if misplaced:
        raise ConfigError(f"{', '.join(misplaced)} does not apply to the {cls.name} attack")
    return options


def _queries_per_image(attack: Attack) -> int | None:
    """The most model evaluations one image costs a query-budgeted attack (``queries`` per run,
    times its runs, plus the input check and the final measurement); ``None`` for the others."""
    params = attack.params()
    if attack.needs_gradients or "queries" not in params:
        return None
    return int(params["queries"]) * int(params.get("restarts", 1)) + 2


REMOTE_BATCH = 250  # images per request to --target-url unless --batch-size says otherwise


def _describe(options: dict[str, object]) -> str:
    """The budget in words for the progress bar and the summary line."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items()) or "defaults"


@shared_options("model", "data", "out", "weights", "backend", "trust_pickle", "batch_size", "device", "seed",
                "data_dir", "download", out=Path("attack-results"), batch_size=SIZED_BATCH,
                model=Option(None, "model file or pkg.module:factory (or attack --target-url)", optional=True))
@locks_output("common.out")
def attack_command(
    common: Common,
    attack: Annotated[str, typer.Option("--attack", help=f"attack: {', '.join(ATTACKS)}")] = "pgd",
    norm: Annotated[str | None, typer.Option("--norm", help="linf, l2 or l1 (default linf; cw, fmn: l2)")] = None,
    eps: Annotated[float | None, typer.Option(
        "--eps", help="radius of the threat model (default 0.3; minimal-norm attacks cw, fmn: an optional bound)")] = None,
    pixels: Annotated[int | None, typer.Option("--pixels", min=1, help="pixels changed by L0 attacks (onepixel, lrp-flip)")] = None,
    rotation: Annotated[float | None, typer.Option("--rotation", help="largest rotation in degrees (spatial attacks)")] = None,
    translation: Annotated[float | None, typer.Option(
        "--translation", help="largest shift in pixels (spatial attacks)")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="iterations (iterative attacks)")] = None,
    restarts: Annotated[int | None, typer.Option("--restarts", min=1, help="random restarts (pgd)")] = None,
    start: Annotated[str | None, typer.Option(
        "--start", help="pgd start: uniform (in the ball), radial (radius uniform in [0, eps]) or none")] = None,
    loss: Annotated[str | None, typer.Option(
        "--loss", help="ce or margin (pgd family), ce or dlr (apgd-*), margin or ce (square); default: the attack's")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="number of test images to attack")] = 100,
    target_url: Annotated[str | None, typer.Option(
        "--target-url", help="attack a remote classifier (the hardened serve API) instead of --model")] = None,
    queries: Annotated[int | None, typer.Option(
        "--queries", min=1, help="model evaluations per image (square, nes, hsja)")] = None,
    query_budget: Annotated[int | None, typer.Option(
        "--query-budget", min=1, help="hard limit of images sent to --target-url over the whole run")] = None,
) -> None:
    """Attack the first N test images and save the adversarial examples."""
    if (common.model is None) == (target_url is None):
        raise ConfigError("give either --model or --target-url (a black-box endpoint), exactly one")
    if target_url is not None and ATTACKS.get(attack).needs_gradients:
        raise ConfigError(f"--target-url needs a black-box attack; {attack} needs gradients: use "
                          f"{', '.join(ATTACKS.select(needs_gradients=False))}")
    options = _budget_options(attack, norm, eps, pixels, rotation, translation)
    budget = _describe(options)
    if queries is not None:
        options["queries"] = queries
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
    session = setup(common, writes=[(out_dir, True)], load=target_url is None)
    test = session.splits.test.head(n)
    x, y = test.x.to(session.device), test.y.to(session.device)
    target = None if target_url is None else HttpTarget(target_url, budget=query_budget,
                                                         num_classes=test.num_classes)
    per_image = _queries_per_image(instance)
    batch = resolve_batch_size(common.batch_size, session.model.model, x) if target is None else None
    with progress_bar(len(x) if per_image is None else len(x) * per_image, f"{attack} {budget}", True) as bar:
        if target is None and per_image is None:
            result = attack_in_batches(instance, session.model.model, x, y, batch_size=batch, bar=bar)
        else:
            model = session.model.model if target is None else target
            queryable = model if isinstance(model, BlackBox) else TorchTarget(model)
            try:
                result = attack_target(instance, queryable, x, y, batch_size=common.batch_size or REMOTE_BATCH, bar=bar,
                                       queries_per_image=per_image)
            except (QueryBudgetExceeded, TargetError) as error:
                if error.partial is not None:
                    partial = {"target": target_url, "partial": True, **error.partial.to_dict()}
                    write_json(out_dir / "summary.json", partial)
                    console.print(f"partial results of {error.partial.labels.numel()} images in "
                                  f"{out_dir / 'summary.json'}")
                raise
    source = common.model if target_url is None else target_url
    summary = {"model": source, "data": common.data, **result.to_dict()}
    x_adv, success, pred_adv = result.x_adv.cpu(), result.success.cpu(), result.pred_adv.cpu()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=test.x.numpy(), x_adv=x_adv.numpy(), y=test.y.numpy(),
                        pred_adv=pred_adv.numpy(), success=success.numpy())
    write_bytes(out_dir / "adversarial.npz", buffer.getvalue())
    write_json(out_dir / "summary.json", summary)
    written = [out_dir / "adversarial.npz", out_dir / "summary.json"]
    try:
        clean_logits = predict_logits(session.model.model, x, batch) if target is None else target(x)
    except QueryBudgetExceeded:
        clean_logits = None  # the budget is spent: the grid (which needs clean scores) is skipped
    if clean_logits is not None:
        plot_adversarial_grid(test.x, x_adv, result.pred_clean.cpu(), pred_adv,
                              clean_logits.softmax(1).cpu().max(1).values, result.confidence_adv.cpu(),
                              test.classes, out_dir / "grid.png")
        written.append(out_dir / "grid.png")
    queried = "" if target is None else f", {target.queries} images sent to {target_url}"
    out.print(
        f"{instance.name} {budget} on {len(x)} images: clean accuracy "
        f"{result.clean_accuracy:.3f}, robust accuracy {result.robust_accuracy:.3f}, "
        f"success rate {result.success_rate:.3f} ({result.seconds:.1f}s{queried})"
    )
    if ATTACKS.get(attack).minimal:
        medians = summary["median_norms_of_successes"]
        measured = str(instance.params()["norm"])
        out.print(f"median minimal {measured} norm of the successes: {medians[measured]}")
    out.print(f"wrote {', '.join(map(str, written))}")
