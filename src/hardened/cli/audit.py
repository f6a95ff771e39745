"""``hardened audit``: one command, one robustness report (index.html + audit.json + PNGs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hardened._util.lock import locks_output
from hardened.audit import check_budget, check_output_dir, default_model, run_audit
from hardened.cli._common import Common, Option, check_fit, console, out, setup, shared_options
from hardened.cli._launch import relaunches
from hardened.distributed import env_world, process_group
from hardened.models import LoadedModel, ModelInfo

# how long the other ranks of a torchrun audit wait for rank 0's unsharded stages (a rank that
# dies is noticed at once; this only bounds a rank that hangs)
AUDIT_WAIT_S = 6 * 3600.0


@shared_options("model", "data", "out", "weights", "device", "seed", "data_dir", "download",
                model=Option(None, "model file or pkg.module:factory; default: a lenet trained on mnist-5k (cached)",
                             optional=True),
                out=Option(Path("audit-report"), "report folder (new, empty, or a previous audit)"))
@relaunches("audit", passthrough=(3,))  # --nproc N: before the lock, which is rank 0's
@locks_output("common.out")  # before the default model is trained
def audit_command(
    common: Common,
    budget: Annotated[str, typer.Option("--budget", help="quick, standard or thorough")] = "quick",
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="processes on this machine (starts torchrun); "
                                       "the cascade and the certificates are split over them")] = 1,
) -> None:
    """Audit a model's robustness and write one report a person can read.

    Exit code 0: every section measured; 3: some section was skipped or failed (see the report).
    Under torchrun (or with --nproc N) the robustness cascade and the certification are split
    over the processes; rank 0 runs the other sections and writes the same report.
    """
    model, data, out_dir, seed = common.model, common.data, common.out, common.seed
    check_budget(budget)
    main = env_world().is_main  # in a torchrun job rank 0 alone checks and writes --out
    if main:
        check_output_dir(out_dir)
    session = setup(common, writes=[(out_dir, True)] if main else [])  # loads and checks --model when given
    target, splits = session.device, session.splits
    if model is None:
        if data != "mnist-5k" and main:
            console.print(f"no --model given: training the default lenet on {data}")
        network, path = default_model(splits, seed=seed, progress=True)
        loaded = LoadedModel(network.to(target), ModelInfo(arch="lenet", input_shape=splits.train.input_shape,
                                                           classes=splits.train.classes, source=str(path)))
        check_fit(loaded, splits.test, target)
        name = f"lenet (default, {path})"
    else:
        loaded, name = session.model, model
    with process_group(backend="gloo", timeout_s=AUDIT_WAIT_S) as info:  # object gathers: CPU collectives
        result = run_audit(loaded.model, splits, out_dir=out_dir, budget=budget, seed=seed,
                           model_name=name, progress=True)
    if not info.is_main:
        return
    out.print(result.verdict)
    out.print(f"report: {out_dir / 'index.html'}  figures: {out_dir / 'audit.json'}")
    incomplete = [s for s in result.stages if s.status != "ok"]
    if incomplete:
        for stage in incomplete:
            console.print(f"[yellow]{stage.status}[/yellow] {stage.title}: {stage.message}")
        raise typer.Exit(code=3)
