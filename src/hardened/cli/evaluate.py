"""``hardened evaluate``: robust accuracy over an eps sweep, to JSON and PNG.

The default attack is the cascade (``hardened.evaluate.cascade``, preset ``--preset``); any
registered attack (``--attack pgd``...) runs alone instead."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hardened._util.atomic import write_json
from hardened._util.lock import locks_output
from hardened._util.memory import resolve_batch_size
from hardened.attacks import ATTACKS
from hardened.cli._cascade import print_cascade
from hardened.cli._common import (
    SIZED_BATCH,
    Common,
    load_checked_model,
    out,
    parse_floats,
    setup,
    shared_options,
)
from hardened.distributed import process_group
from hardened.errors import ConfigError
from hardened.evaluate import robust_accuracy_sweep, save_result
from hardened.evaluate.cascade import cascade_sweep, resolve_steps
from hardened.evaluate.masking import check_masking_mode
from hardened.evaluate.transfer import transfer_sweep
from hardened.report.plots import plot_sweeps
from hardened.threat import check_norm

CASCADE = "cascade"
DEFAULT_ATTACK = CASCADE


@shared_options("model", "data", "out", "weights", "backend", "trust_pickle", "batch_size", "device", "seed", "data_dir", "download",
                out=Path("evaluate-results"), batch_size=SIZED_BATCH)
@locks_output("common.out")
def evaluate_command(
    common: Common,
    attack: Annotated[str, typer.Option("--attack", help=f"cascade (default), or one attack: {', '.join(ATTACKS)}")] = DEFAULT_ATTACK,
    preset: Annotated[str | None, typer.Option("--preset", help="cascade preset: quick, standard (default) or thorough")] = None,
    masking: Annotated[str | None, typer.Option("--masking", help="cascade: auto (default: check for gradient masking, answer it) or off")] = None,
    eot: Annotated[int | None, typer.Option("--eot", min=0, help="cascade: EOT samples (0 off; default: when randomness is found)")] = None,
    bpda: Annotated[bool | None, typer.Option("--bpda/--no-bpda", help="cascade: BPDA through the input stage (default: when gradients vanish)")] = None,
    norm: Annotated[str, typer.Option("--norm", help="linf, l2 or l1")] = "linf",
    eps: Annotated[str, typer.Option("--eps", help="comma-separated eps values")] = "0,0.05,0.1,0.2,0.3",
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="iterations (iterative attacks)")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="number of test images")] = 1000,
    transfer_from: Annotated[
        str | None,
        typer.Option("--transfer-from", help="black-box: craft the examples on this source model, measure MODEL on them"),
    ] = None,
) -> None:
    """Robust accuracy against eps; prints a table, writes sweep.json and sweep.png."""
    eps_values = parse_floats(eps, "--eps")
    cascade_only = [name for name, value in (("--preset", preset), ("--masking", masking), ("--eot", eot),
                                             ("--bpda", bpda)) if value is not None]
    if cascade_only and (attack != CASCADE or transfer_from is not None):
        raise ConfigError(f"{', '.join(cascade_only)} set the cascade, which this run does not use (--attack "
                          f"{attack}{', --transfer-from' if transfer_from is not None else ''}); drop them, or "
                          "evaluate with the cascade (the default --attack, without --transfer-from)")
    preset = "standard" if preset is None else preset
    masking = "auto" if masking is None else masking
    if attack == CASCADE:
        resolve_steps(preset)
        check_masking_mode(masking)
    else:
        ATTACKS.canonical(attack)
    check_norm(norm)
    out_dir, model, data = common.out, str(common.model), common.data  # required
    session = setup(common, writes=[(out_dir, True)])
    target, loaded = session.device, session.model
    test = session.splits.test.head(n)
    batch_size = resolve_batch_size(common.batch_size, loaded.model, test.x[:1].to(target), store=False,
                                    remember=out_dir / "cascade-state" / "settings.json")  # resumes by batch
    options: dict[str, object] = {}
    if steps is not None:
        options["steps"] = steps
    if transfer_from is not None:
        attack = "pgd" if attack == CASCADE else attack  # transfer crafts with one attack
        source = load_checked_model(transfer_from, None, test, target)
        result = transfer_sweep(
            source.model, loaded.model, test.x.to(target), test.y.to(target), eps_values=eps_values,
            attack=attack, norm=norm, batch_size=batch_size, progress=True,
            source_name=transfer_from, target_name=model, **options,
        )
        transfer_table = Table(title=f"{attack} ({norm}) crafted on {transfer_from}, {len(test)} {data} test images")
        for column in ("eps", "source accuracy (white-box)", "target accuracy (transfer)"):
            transfer_table.add_column(column, justify="right")
        for value, src_acc, tgt_acc in zip(result.eps, result.source_accuracy, result.target_accuracy, strict=True):
            transfer_table.add_row(f"{value:g}", f"{100 * src_acc:.1f}%", f"{100 * tgt_acc:.1f}%")
        out.print(transfer_table)
        write_json(out_dir / "transfer.json", result.to_dict())
        out.print(f"wrote {out_dir / 'transfer.json'}")
        return
    if attack == CASCADE:
        with process_group(backend="gloo") as info:  # under torchrun: batches split over the ranks
            cascade = cascade_sweep(
                loaded.model, test.x.to(target), test.y.to(target), eps_values=eps_values, norm=norm,
                preset=preset, step_options={"steps": steps}, batch_size=batch_size, seed=common.seed,
                masking=masking, eot_samples=eot, bpda=bpda, state_dir=out_dir / "cascade-state", progress=True,
            )
        if not info.is_main:
            return
        print_cascade(cascade, f"cascade {preset} ({norm}) on {len(test)} {data} test images")
        save_result(cascade.sweep, out_dir / "sweep.json")
        write_json(out_dir / "cascade.json", cascade.to_dict())
        plot_sweeps([cascade.sweep], out_dir / "sweep.png")
        out.print(f"wrote {out_dir / 'sweep.json'}, {out_dir / 'cascade.json'} and {out_dir / 'sweep.png'}")
        return
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
