"""``hardened train`` (one method, resumable) and ``hardened defend-compare`` (trade-off table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from hardened._util.atomic import write_json, write_text
from hardened.cli._common import (
    BatchOption,
    DataDirOption,
    DataOption,
    DeviceOption,
    DownloadOption,
    SeedOption,
    load_data,
    out,
    resolve_device,
    seed_everything,
)
from hardened.errors import ConfigError
from hardened.models import arch_kwargs_for, build_model, load_model, save_model
from hardened.report.plots import plot_tradeoff
from hardened.train import (
    METHODS,
    CollapseGuard,
    TrainConfig,
    Trainer,
    make_method,
    split_unlabeled,
)
from hardened.train.compare import compare_methods

MethodOption = Annotated[str, typer.Option("--method", help=f"training method: {', '.join(METHODS)}")]
EpsOption = Annotated[float | None, typer.Option("--eps", help="radius of the training threat model (adversarial methods)")]
NormOption = Annotated[str, typer.Option("--norm", help="linf or l2")]
StepsOption = Annotated[int, typer.Option("--steps", min=1, help="PGD steps when crafting training examples")]
StepSizeOption = Annotated[float | None, typer.Option("--step-size", help="PGD step size (default 2.5·eps/steps; fgsm 1.25·eps)")]
RandomStartOption = Annotated[bool, typer.Option("--random-start/--no-random-start", help="start PGD from a random point in the ball")]
BetaOption = Annotated[float, typer.Option("--beta", help="TRADES weight of the KL term")]
SigmaOption = Annotated[float, typer.Option("--sigma", help="noise: std of the Gaussian noise")]
LrScaleOption = Annotated[float, typer.Option("--adversarial-lr-scale", help="semi-supervised: lr factor of the adversarial pool updates")]
UnlabeledOption = Annotated[float | None, typer.Option("--unlabeled-fraction", help="semi-supervised: part of the training set used as the unlabeled pool (labels dropped)")]
GuardOption = Annotated[str, typer.Option("--guard", help="fgsm catastrophic-overfitting guard: stop, report or off")]
GuardDropOption = Annotated[float, typer.Option("--guard-drop", help="PGD-accuracy drop that counts as a collapse")]
GuardEveryOption = Annotated[int, typer.Option("--guard-every", min=0, help="check the guard every N steps (0: each epoch)")]
EpochsOption = Annotated[int, typer.Option("--epochs", min=1)]
LrOption = Annotated[float, typer.Option("--lr")]
ScheduleOption = Annotated[str, typer.Option("--lr-schedule", help="constant, cosine or cyclic")]
NTrainOption = Annotated[int | None, typer.Option("--n-train", min=1, help="use only the first N training images")]
EvalNOption = Annotated[int, typer.Option("--eval-n", min=0, help="held-out images for the per-epoch clean/PGD accuracy")]
EvalEpsOption = Annotated[float | None, typer.Option("--eval-eps", help="eps of the per-epoch PGD accuracy (default: the method's)")]
WarmupOption = Annotated[float, typer.Option("--eps-warmup", help="ramp eps linearly from 0 over this fraction of the training steps")]
AmpOption = Annotated[bool | None, typer.Option("--amp/--no-amp", help="mixed precision (default: on with CUDA)")]


def _guard(mode: str, drop: float, every: int) -> CollapseGuard | None:
    if mode not in ("stop", "report", "off"):
        raise ConfigError(f"--guard must be stop, report or off, got {mode!r}")
    return None if mode == "off" else CollapseGuard(drop=drop, every=every, action=mode)


def _options(
    method: str, *, eps: float | None, norm: str, steps: int, step_size: float | None,
    random_start: bool, beta: float, sigma: float, adversarial_lr_scale: float,
    guard: CollapseGuard | None, eps_warmup: float = 0.0,
) -> dict[str, Any]:
    """The options ``make_method`` takes for ``method`` from the command-line values."""
    key = METHODS.canonical(method)
    if key == "noise":
        return {"sigma": sigma}
    if not METHODS.get(key).adversarial:
        return {}
    if eps is None:
        raise ConfigError(f"--method {key} is adversarial: give --eps (e.g. --eps 0.3 --norm linf)")
    options: dict[str, Any] = {"eps": eps, "norm": norm, "step_size": step_size,
                               "eps_warmup": eps_warmup}
    if key == "fgsm":
        return options | {"random_start": random_start, "guard": guard}
    options["steps"] = steps
    if key == "trades":
        return options | {"beta": beta}
    options["random_start"] = random_start
    if key == "semi-supervised":
        options["adversarial_lr_scale"] = adversarial_lr_scale
    return options


def train_command(
    out_path: Annotated[Path, typer.Option("--out", help="where to write model.safetensors (+ .json)")] = Path("model.safetensors"),
    data: DataOption = "mnist-5k",
    arch: Annotated[str, typer.Option("--arch", help="mlp, lenet or resnet_small")] = "lenet",
    method: MethodOption = "standard",
    eps: EpsOption = None,
    norm: NormOption = "linf",
    steps: StepsOption = 10,
    step_size: StepSizeOption = None,
    random_start: RandomStartOption = True,
    beta: BetaOption = 6.0,
    sigma: SigmaOption = 0.25,
    source_model: Annotated[list[str] | None, typer.Option("--source-model", help="ensemble: a fixed pre-trained source model file (repeat for several)")] = None,
    unlabeled_fraction: UnlabeledOption = None,
    labeler: Annotated[str | None, typer.Option("--labeler", help="semi-supervised: model file that pseudo-labels the pool (default: train one)")] = None,
    adversarial_lr_scale: LrScaleOption = 0.5,
    guard: GuardOption = "stop",
    guard_drop: GuardDropOption = 0.3,
    guard_every: GuardEveryOption = 0,
    eps_warmup: WarmupOption = 0.0,
    epochs: EpochsOption = 5,
    lr: LrOption = 1e-3,
    lr_schedule: ScheduleOption = "constant",
    optimizer: Annotated[str, typer.Option("--optimizer", help="adam or sgd")] = "adam",
    n_train: NTrainOption = None,
    eval_n: EvalNOption = 500,
    eval_eps: EvalEpsOption = None,
    checkpoint_dir: Annotated[Path | None, typer.Option("--checkpoint-dir", help="checkpoint folder (default: OUT without suffix + .checkpoints)")] = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=0, help="also checkpoint every N steps (0: each epoch only)")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the checkpoint of an interrupted run")] = False,
    amp: AmpOption = None,
    batch_size: BatchOption = 128,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
) -> None:
    """Train a reference architecture with a training method; checkpoints and resumes."""
    seed_everything(seed)
    target = resolve_device(device)
    splits = load_data(data, data_dir, download, seed)
    train_set = splits.train.head(n_train) if n_train else splits.train
    key = method.lower()
    options = _options(
        key, eps=eps, norm=norm, steps=steps, step_size=step_size, random_start=random_start,
        beta=beta, sigma=sigma, adversarial_lr_scale=adversarial_lr_scale,
        guard=_guard(guard, guard_drop, guard_every), eps_warmup=eps_warmup,
    )
    if key == "ensemble":
        if not source_model:
            raise ConfigError("--method ensemble needs at least one --source-model FILE")
        options["sources"] = [load_model(spec).model for spec in source_model]
        options["source_names"] = list(source_model)
    elif source_model:
        raise ConfigError("--source-model is for --method ensemble")
    if key == "semi-supervised":
        if unlabeled_fraction is None:
            raise ConfigError("--method semi-supervised needs --unlabeled-fraction (e.g. 0.5)")
        train_set, options["pool"] = split_unlabeled(train_set, unlabeled_fraction, seed=seed)
        if labeler is not None:
            options["labeler"] = load_model(labeler).model
    elif unlabeled_fraction is not None or labeler is not None:
        raise ConfigError("--unlabeled-fraction and --labeler are for --method semi-supervised")
    training_method = make_method(key, **options)
    arch_kwargs = arch_kwargs_for(train_set)
    model = build_model(arch, **arch_kwargs).to(target)
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed,
        lr_schedule=lr_schedule, checkpoint_every=checkpoint_every, eval_n=eval_n,
        eval_eps=eval_eps, eval_norm=norm, amp=amp,
    )
    folder = checkpoint_dir or out_path.with_suffix("").with_name(out_path.with_suffix("").name + ".checkpoints")
    trainer = Trainer(
        model, train_set.to(target), method=training_method, config=config,
        test_data=splits.test.to(target), log_path=out_path.with_suffix(".log.jsonl"),
        checkpoint_dir=folder, progress=True,
    )
    result = trainer.fit(resume=resume)
    if result.resumed_from_step is not None:
        out.print(f"resumed from step {result.resumed_from_step} ({folder})")
    for record in result.history:
        robust = f"  pgd acc {record.robust_accuracy:.4f}" if record.robust_accuracy is not None else ""
        test = f"  test acc {record.test_accuracy:.4f}" if record.test_accuracy is not None else ""
        out.print(
            f"epoch {record.epoch}: loss {record.loss:.4f}  train acc {record.train_accuracy:.4f}"
            f"{test}{robust}  ({record.seconds:.1f}s)"
        )
    if result.stopped:
        out.print(f"[yellow]stopped early: {result.stopped}[/yellow]")
    saved = save_model(
        model.cpu(), out_path, arch=arch, arch_kwargs=arch_kwargs,
        input_shape=train_set.input_shape, classes=train_set.classes,
        training={**result.to_dict(), "data": data, "seed": seed},
    )
    last = result.history[-1] if result.history else None
    summary = f"test accuracy {last.test_accuracy:.4f}" if last and last.test_accuracy is not None else ""
    out.print(f"saved {saved} {summary}".rstrip())


def compare_command(
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("defend-compare"),
    data: DataOption = "mnist-5k",
    arch: Annotated[str, typer.Option("--arch", help="mlp, lenet or resnet_small")] = "lenet",
    methods: Annotated[str, typer.Option("--methods", help="comma-separated training methods")] = ",".join(METHODS),
    eps: Annotated[float, typer.Option("--eps", help="radius of the threat model")] = 0.3,
    norm: NormOption = "linf",
    steps: StepsOption = 10,
    beta: BetaOption = 6.0,
    sigma: SigmaOption = 0.25,
    unlabeled_fraction: UnlabeledOption = None,
    adversarial_lr_scale: LrScaleOption = 0.5,
    guard: GuardOption = "report",
    eps_warmup: WarmupOption = 0.0,
    epochs: EpochsOption = 3,
    lr: LrOption = 1e-3,
    lr_schedule: ScheduleOption = "constant",
    n_train: NTrainOption = None,
    n_test: Annotated[int, typer.Option("--n-test", min=1, help="test images for the final measurements")] = 1000,
    eval_n: EvalNOption = 200,
    pgd_steps: Annotated[int, typer.Option("--pgd-steps", min=1, help="steps of the white-box and transfer PGD")] = 40,
    resume: Annotated[bool, typer.Option("--resume", help="continue interrupted runs from their checkpoints")] = False,
    batch_size: BatchOption = 128,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
) -> None:
    """Train several methods on the same data; write the trade-off table (JSON, markdown, PNG)."""
    seed_everything(seed)
    target = resolve_device(device)
    splits = load_data(data, data_dir, download, seed)
    train_set = splits.train.head(n_train) if n_train else splits.train
    test_set = splits.test.head(n_test)
    names = [m.strip().lower() for m in methods.split(",") if m.strip()]
    guard_obj = _guard(guard, 0.3, 0)
    method_options = {
        name: {k: v for k, v in _options(
            name, eps=eps, norm=norm, steps=steps, step_size=None, random_start=True, beta=beta,
            sigma=sigma, adversarial_lr_scale=adversarial_lr_scale, guard=guard_obj,
            eps_warmup=eps_warmup,
        ).items() if k not in ("eps", "norm")}
        for name in names if name in METHODS
    }
    arch_kwargs = arch_kwargs_for(train_set)
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, lr_schedule=lr_schedule,
        eval_n=eval_n, eval_eps=eps, eval_norm=norm, eval_steps=10,
    )

    def save(name: str, model: torch.nn.Module, result: Any) -> None:
        save_model(model, out_dir / f"{name}.safetensors", arch=arch, arch_kwargs=arch_kwargs,
                   input_shape=train_set.input_shape, classes=train_set.classes,
                   training={**result.to_dict(), "data": data, "seed": seed})

    report = compare_methods(
        train_set, test_set, methods=names, arch=arch, arch_kwargs=arch_kwargs, norm=norm,
        eps=eps, config=config, method_options=method_options,
        unlabeled_fraction=unlabeled_fraction, pgd_steps=pgd_steps, out_dir=out_dir / "runs",
        resume=resume, device=target, progress=True, on_model=save,
    )
    table = Table(title=f"{data} {norm} eps={eps:g}: {report.n_labelled} labelled images, {epochs} epochs")
    for column in ("method", "clean", "PGD robust", "transfer robust", "train s"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in report.rows:
        table.add_row(row.method, f"{100 * row.clean_accuracy:.2f}%", f"{100 * row.robust_accuracy:.2f}%",
                      f"{100 * row.transfer_accuracy:.2f}%", f"{row.train_seconds:.0f}")
    out.print(table)
    write_json(out_dir / "tradeoff.json", report.to_dict())
    write_text(out_dir / "tradeoff.md", report.to_markdown())
    plot_tradeoff(report, out_dir / "tradeoff.png")
    out.print(f"wrote {out_dir / 'tradeoff.json'}, {out_dir / 'tradeoff.md'}, {out_dir / 'tradeoff.png'}")
