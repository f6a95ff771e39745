"""``hardened audit``: one command, one robustness report (index.html + audit.json + PNGs).

Any model format: a module, TorchScript, an ONNX file (``--backend torch``: onnx2torch,
white-box; ``--backend onnxruntime``: outputs-only), a ``.pt2`` program (``--trust-pickle``), or a
running endpoint (``--target-url``, outputs-only). An outputs-only audit transfers attacks from a
surrogate: ``--surrogate MODEL``, else the default lenet where the data's shapes match it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from torch import nn

from hardened._util.lock import locks_output
from hardened.audit import check_budget, check_output_dir, default_model, run_audit
from hardened.cli._common import (
    SIZED_BATCH,
    Common,
    Option,
    Session,
    check_fit,
    console,
    load_checked_model,
    out,
    setup,
    shared_options,
)
from hardened.cli._launch import relaunches
from hardened.data.dataset import Splits
from hardened.distributed import env_world, process_group
from hardened.errors import ConfigError
from hardened.models import HttpTarget, LoadedModel, ModelInfo
from hardened.models.onnx import OnnxRuntimeModel

# how long the other ranks of a torchrun audit wait for rank 0's unsharded stages (a rank that
# dies is noticed at once; this only bounds a rank that hangs)
AUDIT_WAIT_S = 6 * 3600.0
DEFAULT_SHAPE = (1, 28, 28)  # the default lenet's input (mnist-5k), and its 10 classes
DEFAULT_CLASSES = 10
TARGET_BATCH = 64  # images per request to --target-url: hardened serve's default --max-images


def _default_lenet(splits: Splits, seed: int, session: Session) -> tuple[nn.Module, str]:
    """The default lenet (trained on ``splits`` once, then cached), checked against the data."""
    network, path = default_model(splits, seed=seed, progress=True)
    network = network.to(session.device)
    check_fit(LoadedModel(network, ModelInfo(arch="lenet", input_shape=splits.train.input_shape,
                                             classes=splits.train.classes, source=str(path))), splits.test, session.device)
    return network, f"lenet (default, {path})"


def _surrogate(spec: str | None, splits: Splits, seed: int, session: Session, main: bool) -> nn.Module | None:
    """The white-box model transfer attacks are crafted on: ``--surrogate``, else the default
    lenet when the data has its shapes (1×28×28, 10 classes), else none (the report says so)."""
    if spec is not None:
        loaded = load_checked_model(spec, None, splits.test, session.device)
        if not isinstance(loaded.model, nn.Module):
            raise ConfigError(f"--surrogate {spec} is outputs-only; a surrogate needs gradients: give a white-box model")
        return loaded.model
    if splits.train.input_shape == DEFAULT_SHAPE and splits.train.num_classes == DEFAULT_CLASSES:
        if main:
            console.print("outputs-only audit: transfer attacks from the default lenet (--surrogate MODEL for another)")
        return _default_lenet(splits, seed, session)[0]
    if main:
        console.print("outputs-only audit without a surrogate: give --surrogate MODEL for the transfer attacks")
    return None


@shared_options("model", "data", "out", "weights", "backend", "trust_pickle", "device", "seed", "data_dir", "download",
                "batch_size", batch_size=SIZED_BATCH,
                model=Option(None, "model file or pkg.module:factory; default: a lenet trained on mnist-5k (cached)",
                             optional=True),
                out=Option(Path("audit-report"), "report folder (new, empty, or a previous audit)"))
@relaunches("audit", passthrough=(3,))  # --nproc N: before the lock, which is rank 0's
@locks_output("common.out")  # before the default model is trained
def audit_command(
    common: Common,
    budget: Annotated[str, typer.Option("--budget", help="quick, standard or thorough")] = "quick",
    target_url: Annotated[str | None, typer.Option(
        "--target-url", help="audit a running classifier (the hardened serve API) outputs-only, instead of --model")] = None,
    surrogate: Annotated[str | None, typer.Option(
        "--surrogate", help="outputs-only audits: the white-box model transfer attacks are crafted on "
        "(default: the lenet, where the data is 1×28×28 with 10 classes)")] = None,
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
    if model is not None and target_url is not None:
        raise ConfigError("give --model or --target-url (a running endpoint), not both")
    main = env_world().is_main  # in a torchrun job rank 0 alone checks and writes --out
    if main:
        check_output_dir(out_dir)
    session = setup(common, writes=[(out_dir, True)] if main else [], load=target_url is None)  # checks --model
    splits = session.splits
    audited: nn.Module | OnnxRuntimeModel | HttpTarget
    if target_url is not None:
        target = HttpTarget(target_url, num_classes=splits.test.num_classes, max_batch=TARGET_BATCH)
        check_fit(LoadedModel(target, ModelInfo(arch=None, source=target_url)), splits.test, session.device)  # type: ignore[arg-type]
        audited, name = target, target_url
    elif model is None:
        if data != "mnist-5k" and main:
            console.print(f"no --model given: training the default lenet on {data}")
        audited, name = _default_lenet(splits, seed, session)
    else:
        audited, name = session.model.model, model
    outputs_only = not isinstance(audited, nn.Module)
    if surrogate is not None and not outputs_only:
        raise ConfigError("--surrogate is for outputs-only audits (--backend onnxruntime or --target-url); this "
                          "model gives gradients, so it is attacked white-box")
    helper = _surrogate(surrogate, splits, seed, session, main) if outputs_only else None
    with process_group(backend="gloo", timeout_s=AUDIT_WAIT_S) as info:  # object gathers: CPU collectives
        result = run_audit(audited, splits, out_dir=out_dir, budget=budget, seed=seed, model_name=name,
                           progress=True, surrogate=helper, batch_size=common.batch_size)
    if not info.is_main:
        return
    out.print(result.verdict)
    queried = "" if result.queries is None else f"  ({result.queries:,} images sent to the model)"
    out.print(f"report: {out_dir / 'index.html'}  figures: {out_dir / 'audit.json'}{queried}")
    incomplete = [s for s in result.stages if s.status != "ok"]
    if incomplete:
        for stage in incomplete:
            console.print(f"[yellow]{stage.status}[/yellow] {stage.title}: {stage.message}")
        raise typer.Exit(code=3)
