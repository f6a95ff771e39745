"""``hardened train`` (one method, resumable) and ``hardened defend-compare`` (trade-off table)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from hardened._util.atomic import write_json, write_text
from hardened.cli._common import Common, Option, console, out, resolve_device, setup, shared_options
from hardened.cli._launch import relaunches
from hardened.distributed import env_world, process_group
from hardened.errors import ConfigError
from hardened.models import ARCHITECTURES, arch_kwargs_for, build_model, load_model, save_model
from hardened.report.plots import plot_tradeoff
from hardened.train import (
    CHECKPOINT_NAME,
    METHODS,
    TrainConfig,
    Trainer,
    make_method,
    split_unlabeled,
)
from hardened.train.compare import compare_methods
from hardened.train.options import (
    MethodSettings,
    collapse_guard,
    default_lr,
    default_lr_schedule,
    method_options,
)
from hardened.train.recipes import RECIPES, Recipe, apply_recipe, get_recipe

MethodOption = Annotated[str, typer.Option("--method", help=f"training method: {', '.join(METHODS)}")]
EpsOption = Annotated[float | None, typer.Option("--eps", help="radius of the training threat model (adversarial methods)")]
NormOption = Annotated[str, typer.Option("--norm", help="linf or l2")]
StepsOption = Annotated[int, typer.Option("--steps", min=1, help="PGD steps when crafting training examples")]
StepSizeOption = Annotated[float | None, typer.Option("--step-size", help="PGD step size (default 2.5·eps/steps; fgsm 1.25·eps)")]
RandomStartOption = Annotated[bool, typer.Option("--random-start/--no-random-start", help="start PGD from a random point in the ball")]
BetaOption = Annotated[float, typer.Option("--beta", help="TRADES weight of the KL term")]
SigmaOption = Annotated[float, typer.Option("--sigma", help="noise: std of the Gaussian noise")]
LrScaleOption = Annotated[float, typer.Option("--adversarial-lr-scale", help="semi-supervised: lr factor of the adversarial pool updates")]
RobustLossOption = Annotated[str, typer.Option("--robust-loss", help="semi-supervised: robust loss of the pool updates, pgd or trades (with --beta; Carmon et al. 2019 use trades)")]
LabelledOption = Annotated[str, typer.Option("--labelled", help="semi-supervised: loss of the labelled updates, standard (clean CE) or adversarial (the robust loss)")]
UnlabeledOption = Annotated[float | None, typer.Option("--unlabeled-fraction", help="semi-supervised: part of the training set used as the unlabeled pool (labels dropped)")]
GuardOption = Annotated[str, typer.Option("--guard", help="fgsm catastrophic-overfitting guard: stop (restore the best weights), lower (restore, halve the step, go on), report or off")]
GuardGapOption = Annotated[float, typer.Option("--guard-gap", help="FGSM-minus-PGD accuracy gap that counts as a collapse")]
NoiseOption = Annotated[float | None, typer.Option("--nfgsm-noise", help="fgsm: N-FGSM with noise U[-K·eps, K·eps] and no projection (de Jorge et al. 2022 use K=2)")]
GradAlignOption = Annotated[float, typer.Option("--grad-align", help="fgsm: GradAlign weight lambda (Andriushchenko & Flammarion 2020; 0: off)")]
GuardDropOption = Annotated[float, typer.Option("--guard-drop", help="PGD-accuracy drop that counts as a collapse")]
GuardFloorOption = Annotated[float, typer.Option("--guard-floor", help="the FGSM-PGD gap counts only while PGD accuracy is below this")]
GuardStartOption = Annotated[float, typer.Option("--guard-start", help="fraction of the steps before the guard acts (it measures from the start)")]
GuardEveryOption = Annotated[int, typer.Option("--guard-every", min=0, help="check the guard every N steps (0: each epoch)")]
EpochsOption = Annotated[int, typer.Option("--epochs", min=1)]
LrOption = Annotated[float | None, typer.Option("--lr", help="learning rate, the peak of a cyclic schedule (default 1e-3; fgsm with adam: 7e-3)")]
ScheduleOption = Annotated[str | None, typer.Option("--lr-schedule", help="constant, cosine or cyclic (default: cyclic for fgsm, else constant)")]
NTrainOption = Annotated[int | None, typer.Option("--n-train", min=1, help="use only the first N training images")]
EvalNOption = Annotated[int, typer.Option("--eval-n", min=0, help="held-out images for the per-epoch clean/PGD accuracy")]
EvalEpsOption = Annotated[float | None, typer.Option("--eval-eps", help="eps of the per-epoch PGD accuracy (default: the method's)")]
WarmupOption = Annotated[float, typer.Option("--eps-warmup", help="ramp eps linearly from 0 over this fraction of the training steps")]
AmpOption = Annotated[bool | None, typer.Option("--amp/--no-amp", help="mixed precision (default: on with CUDA)")]
RecipeOption = Annotated[str | None, typer.Option("--recipe", help=f"a published recipe's settings ({', '.join(RECIPES)}); options given explicitly override it")]
ListRecipesOption = Annotated[bool, typer.Option("--list-recipes", help="list the recipes with their settings and sources, then exit")]
PeakOption = Annotated[float, typer.Option("--lr-peak", help="cyclic schedule: fraction of the steps at which the lr peaks")]
MilestonesOption = Annotated[str | None, typer.Option("--lr-milestones", help="piecewise schedule: comma-separated fractions of the steps where the lr is multiplied by --lr-gamma, e.g. 0.5,0.75")]
GammaOption = Annotated[float, typer.Option("--lr-gamma", help="piecewise schedule: lr factor at each milestone")]


_SHARED = ("data", "out", "batch_size", "device", "seed", "data_dir", "download")


@shared_options(*_SHARED, out=Option(Path("model.safetensors"), "where to write model.safetensors (+ .json)"))
@relaunches("train")
def train_command(
    ctx: typer.Context,
    common: Common,
    arch: Annotated[str, typer.Option("--arch", help=f"{', '.join(ARCHITECTURES)}")] = "lenet",
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
    robust_loss: RobustLossOption = "pgd",
    labelled: LabelledOption = "standard",
    guard: GuardOption = "stop",
    guard_drop: GuardDropOption = 0.3,
    guard_every: GuardEveryOption = 0,
    guard_gap: GuardGapOption = 0.3,
    guard_floor: GuardFloorOption = 0.1,
    guard_start: GuardStartOption = 0.25,
    nfgsm_noise: NoiseOption = None,
    grad_align: GradAlignOption = 0.0,
    eps_warmup: WarmupOption = 0.0,
    epochs: EpochsOption = 5,
    lr: LrOption = None,
    lr_schedule: ScheduleOption = None,
    lr_peak: PeakOption = 0.4,
    lr_milestones: MilestonesOption = None,
    lr_gamma: GammaOption = 0.1,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adam or sgd")] = "adam",
    momentum: Annotated[float, typer.Option("--momentum", help="sgd momentum")] = 0.9,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, help="L2 weight decay of the optimizer")] = 0.0,
    n_train: NTrainOption = None,
    eval_n: EvalNOption = 500,
    eval_eps: EvalEpsOption = None,
    checkpoint_dir: Annotated[Path | None, typer.Option("--checkpoint-dir", help="checkpoint folder (default: OUT without suffix + .checkpoints)")] = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=0, help="also checkpoint every N steps (0: each epoch only)")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the checkpoint of an interrupted run")] = False,
    amp: AmpOption = None,
    recipe: RecipeOption = None,
    list_recipes: ListRecipesOption = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="data-parallel processes on this machine (starts torchrun)")] = 1,
) -> None:
    """Train a reference architecture with a training method; checkpoints and resumes.
    --recipe NAME takes a paper's settings (--list-recipes shows them).
    Under torchrun (or with --nproc N) the global batch is split over the processes."""
    options = {k: v for k, v in locals().items() if k not in ("ctx", "common", "recipe", "list_recipes", "nproc")}
    if list_recipes:
        _print_recipes()
        return
    arch_kwargs: dict[str, Any] = {}
    if recipe is not None:
        common, options, arch_kwargs = _with_recipe(get_recipe(recipe), common, options, _explicit_options(ctx))
    with process_group(resolve_device(common.device)):
        _train(common, recipe=None if recipe is None else get_recipe(recipe).name, arch_kwargs=arch_kwargs, **options)


def _explicit_options(ctx: typer.Context) -> set[str]:
    """The parameters of the running command that the user gave (not left at their defaults)."""
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}
    return {name for name, source in sources.items() if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")}


def _with_recipe(
    recipe: Recipe, common: Common, options: dict[str, Any], explicit: set[str]
) -> tuple[Common, dict[str, Any], dict[str, Any]]:
    """``options`` (and the shared data / batch size) with the recipe's values where not in ``explicit``."""
    given = {**options, "data": common.data, "batch_size": common.batch_size}
    merged, arch_kwargs = apply_recipe(recipe, given, explicit)
    if isinstance(merged.get("lr_milestones"), tuple):
        merged["lr_milestones"] = ",".join(f"{m:g}" for m in merged["lr_milestones"])
    key = str(merged["arch"]).lower().replace("-", "_")
    if key not in ARCHITECTURES:
        raise ConfigError(
            f"recipe {recipe.name} trains the architecture {merged['arch']!r}, which this installation's model "
            f"zoo does not have ({', '.join(ARCHITECTURES)}); pass --arch to train one of those instead"
        )
    common = replace(common, data=merged.pop("data"), batch_size=merged.pop("batch_size"))
    return common, merged, arch_kwargs


def _print_recipes() -> None:
    for recipe in RECIPES.values():
        table = Table(title=f"{recipe.name}: {recipe.title}", show_header=False, title_justify="left")
        table.add_column("option")
        table.add_column("value")
        for key, value in recipe.options.items():
            table.add_row(f"--{key.replace('_', '-')}", _show(value))
        if recipe.arch_kwargs:
            table.add_row("(architecture)", ", ".join(f"{k}={_show(v)}" for k, v in recipe.arch_kwargs.items()))
        table.add_row("source", recipe.source)
        for deviation in recipe.deviations:
            table.add_row("deviation", deviation)
        out.print(table)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    return str(value)


def _milestones(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--lr-milestones takes comma-separated fractions such as 0.5,0.75, got {text!r}") from None


def _train(
    common: Common, *, arch: str, method: str, eps: float | None, norm: str, steps: int, step_size: float | None,
    random_start: bool, beta: float, sigma: float, source_model: list[str] | None,
    unlabeled_fraction: float | None, labeler: str | None, adversarial_lr_scale: float, robust_loss: str,
    labelled: str, guard: str,
    guard_drop: float, guard_every: int, guard_gap: float, guard_floor: float, guard_start: float, nfgsm_noise: float | None,
    grad_align: float, eps_warmup: float, epochs: int, lr: float | None, lr_schedule: str | None, lr_peak: float,
    lr_milestones: str | None, lr_gamma: float, optimizer: str, momentum: float, weight_decay: float,
    n_train: int | None, eval_n: int, eval_eps: float | None, checkpoint_dir: Path | None,
    checkpoint_every: int, resume: bool, amp: bool | None, recipe: str | None, arch_kwargs: dict[str, Any],
) -> None:
    out_path, data, seed, batch_size = common.out, common.data, common.seed, common.batch_size
    key = METHODS.canonical(method.lower())
    options = method_options(key, MethodSettings(
        eps=eps, norm=norm, steps=steps, step_size=step_size, random_start=random_start,
        beta=beta, sigma=sigma, adversarial_lr_scale=adversarial_lr_scale,
        guard=collapse_guard(guard, guard_drop, guard_every, guard_gap, guard_floor, guard_start), eps_warmup=eps_warmup,
        noise=nfgsm_noise, grad_align=grad_align, robust_loss=robust_loss, labelled=labelled,
    ))
    if key != "fgsm" and (nfgsm_noise is not None or grad_align):
        raise ConfigError("--nfgsm-noise and --grad-align are for --method fgsm")
    if source_model and key != "ensemble":
        raise ConfigError("--source-model is for --method ensemble")
    if key == "ensemble" and not source_model:
        raise ConfigError("--method ensemble needs at least one --source-model FILE")
    if key == "semi-supervised" and unlabeled_fraction is None:
        raise ConfigError("--method semi-supervised needs --unlabeled-fraction (e.g. 0.5)")
    if key != "semi-supervised" and (
        unlabeled_fraction is not None or labeler is not None or robust_loss != "pgd" or labelled != "standard"
    ):
        raise ConfigError("--unlabeled-fraction, --labeler, --robust-loss and --labelled are for --method semi-supervised")
    folder = checkpoint_dir or out_path.with_suffix("").with_name(out_path.with_suffix("").name + ".checkpoints")
    log_path = out_path.with_suffix(".log.jsonl")
    session = setup(common, writes=[(out_path, False), (log_path, False), (folder, True)], load=False)
    target, splits = session.device, session.splits
    if resume and not (folder / CHECKPOINT_NAME).is_file() and env_world().is_main:
        console.print(f"warning: --resume but no checkpoint in {folder}; starting from scratch")
    train_set = splits.train.head(n_train) if n_train else splits.train
    if key == "ensemble":
        options["sources"] = [load_model(spec).model for spec in source_model or ()]
        options["source_names"] = list(source_model or ())
    if key == "semi-supervised":
        train_set, options["pool"] = split_unlabeled(train_set, unlabeled_fraction, seed=seed)  # type: ignore[arg-type]
        if labeler is not None:
            options["labeler"] = load_model(labeler).model
    training_method = make_method(key, **options)
    arch_kwargs = arch_kwargs_for(train_set) | arch_kwargs
    model = build_model(arch, **arch_kwargs).to(target)
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=default_lr(key, optimizer, lr), optimizer=optimizer, seed=seed,
        lr_schedule=default_lr_schedule(key, lr_schedule), lr_peak=lr_peak,
        lr_milestones=_milestones(lr_milestones), lr_gamma=lr_gamma, momentum=momentum,
        weight_decay=weight_decay, checkpoint_every=checkpoint_every, eval_n=eval_n,
        eval_eps=eval_eps, eval_norm=norm, amp=amp,
    )
    trainer = Trainer(
        model, train_set.to(target), method=training_method, config=config,
        test_data=splits.test.to(target), log_path=log_path,
        checkpoint_dir=folder, progress=True,
    )
    result = trainer.fit(resume=resume)
    if not trainer.world.is_main:
        return
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
        training={**result.to_dict(), "data": data, "seed": seed, **({"recipe": recipe} if recipe else {})},
    )
    last = result.history[-1] if result.history else None
    summary = f"test accuracy {last.test_accuracy:.4f}" if last and last.test_accuracy is not None else ""
    out.print(f"saved {saved} {summary}".rstrip())


@shared_options(*_SHARED, out=Path("defend-compare"))
def compare_command(
    common: Common,
    arch: Annotated[str, typer.Option("--arch", help="mlp, lenet, resnet_small, resnet18, wrn-16-2, wrn-28-10 or wrn")] = "lenet",
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
    lr: Annotated[float, typer.Option("--lr", help="learning rate of every method")] = 1e-3,
    lr_schedule: Annotated[str, typer.Option("--lr-schedule", help="constant, cosine or cyclic (one for every method)")] = "constant",
    n_train: NTrainOption = None,
    n_test: Annotated[int, typer.Option("--n-test", min=1, help="test images for the final measurements")] = 1000,
    eval_n: EvalNOption = 200,
    pgd_steps: Annotated[int, typer.Option("--pgd-steps", min=1, help="steps of the white-box and transfer PGD")] = 40,
    resume: Annotated[bool, typer.Option("--resume", help="continue interrupted runs from their checkpoints")] = False,
) -> None:
    """Train several methods on the same data; write the trade-off table (JSON, markdown, PNG)."""
    out_dir, data, seed, batch_size = common.out, common.data, common.seed, common.batch_size
    names = [m.strip().lower() for m in methods.split(",") if m.strip()]
    if not names:
        raise ConfigError(f"--methods needs at least one training method: some of {', '.join(METHODS)}")
    for name in names:
        METHODS.canonical(name)
    settings = MethodSettings(eps=eps, norm=norm, steps=steps, beta=beta, sigma=sigma,
                              adversarial_lr_scale=adversarial_lr_scale,
                              guard=collapse_guard(guard, 0.3, 0), eps_warmup=eps_warmup)
    per_method = {
        name: {k: v for k, v in method_options(name, settings).items() if k not in ("eps", "norm")}
        for name in names if name in METHODS
    }
    session = setup(common, writes=[(out_dir, True)], load=False)
    target, splits = session.device, session.splits
    train_set = splits.train.head(n_train) if n_train else splits.train
    test_set = splits.test.head(n_test)
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
        eps=eps, config=config, method_options=per_method,
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
