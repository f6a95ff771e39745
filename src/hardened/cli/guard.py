"""``hardened guard fit | evaluate | predict``: reliability scores that refuse to predict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.table import Table

from hardened._util.atomic import check_writable, write_json
from hardened._util.lock import locks_output
from hardened._util.memory import resolve_batch_size
from hardened._util.seeding import make_generator
from hardened._util.validate import check_real
from hardened.cli._common import (
    SIZED_BATCH,
    Common,
    Option,
    out,
    parse_key_values,
    seed_everything,
    setup,
    shared_options,
)
from hardened.data import load_splits
from hardened.errors import ConfigError
from hardened.guard import SCORES, GuardedClassifier, calibrate_threshold, make_score
from hardened.guard.calibrate import ScoreSummary, calibration_split, check_calibration
from hardened.guard.guarded import read_guard_record
from hardened.guard.inputs import load_inputs

guard_app = typer.Typer(no_args_is_help=True, help="Fit, evaluate and use reliability guards.")

_ID_HELP = "in-distribution data: mnist-5k, digits, mnist, fashion-mnist, a folder or .npz"
GuardOption = Annotated[Path, typer.Option("--guard", help="folder written by 'hardened guard fit'")]
TrustFactoryOption = Annotated[bool, typer.Option(
    "--trust-factory", help="run the factory or TorchScript classifier that the guard folder names (it is code: only for folders you trust)")]


def _summary_table(summary: ScoreSummary, title: str, threshold: float | None = None) -> Table:
    table = Table(title=title)
    table.add_column("statistic")
    table.add_column("score", justify="right")
    for label, value in summary.rows():
        table.add_row(label, f"{value:.6g}")
    if threshold is not None:
        table.add_row("[bold]threshold[/bold]", f"[bold]{threshold:.6g}[/bold]")
    return table


@guard_app.command("fit")
@shared_options("model", "out", "data", "weights", "device", "seed", "data_dir", "download", "batch_size",
                out=Option(help="folder to write the guard to"), data=Option(help=_ID_HELP), device="cpu",
                batch_size=SIZED_BATCH)
def fit_command(
    common: Common,
    score: Annotated[str, typer.Option("--score", help=f"score: {', '.join(SCORES)}")] = "vae",
    fpr: Annotated[float, typer.Option("--fpr", help="target false-positive rate on held-out data")] = 0.05,
    method: Annotated[str, typer.Option("--method", help="fpr (threshold at --fpr) or max (max held-out score)")] = "fpr",
    n_train: Annotated[int | None, typer.Option("--n-train", min=1, help="training images for the score (default all)")] = None,
    calibration_n: Annotated[int | None, typer.Option("--calibration-n", min=1, help="held-out images for calibration (default half the test part)")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="VAE epochs")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", help="score option key=value (repeatable), e.g. gan_steps=500")] = None,
) -> None:
    """Fit a score on the training part, calibrate its threshold on held-out test images, save."""
    options = parse_key_values(option or [], "--option")
    if epochs is not None:
        options["epochs"] = epochs
    seed, model, data, out_dir = common.seed, str(common.model), common.data, common.out  # --model is required
    if "seed" not in options and SCORES.get(score).seeded:
        options["seed"] = seed
    session = setup(common, writes=[(out_dir, True)])
    target, splits, loaded = session.device, session.splits, session.model
    batch = resolve_batch_size(common.batch_size, loaded.model, splits.test.x[:1].to(target), grad=False)
    scorer = make_score(score, loaded.model, **{"batch_size": batch, **options})
    calibration, evaluation = calibration_split(splits.test, calibration_n or len(splits.test) // 2, seed)
    check_calibration(fpr, method, len(calibration))
    train = splits.train
    if n_train is not None and n_train < len(train):
        train = train.subset(torch.randperm(len(train), generator=make_generator(seed))[:n_train])
    scorer.fit(train.to(target), progress=True)
    scores = scorer.score(calibration.x.to(target))
    record = calibrate_threshold(scores, fpr=fpr, method=method)
    guard = GuardedClassifier(loaded.model, scorer, record, model_ref=str(Path(model).resolve()) if Path(model).exists() else model,
                              model_info=loaded.info, classes=loaded.info.classes or splits.train.classes,
                              batch_size=batch)
    extra = {"data": data, "seed": seed, "n_train": len(train), "calibration_n": len(calibration),
             "evaluation_n": len(evaluation)}
    guard.save(out_dir, extra=extra)
    rule = f"{100 * fpr:g}% target FPR" if method == "fpr" else "max held-out score"
    out.print(_summary_table(record.summary, f"{scorer.name} scores on {len(calibration)} held-out {data} images", record.threshold))
    out.print(f"threshold {record.threshold:.6g} ({rule}); held-out false-positive rate {100 * record.heldout_fpr:.2f}%")
    out.print(f"saved guard to {out_dir}")


@guard_app.command("evaluate")
@shared_options("out", "data", "seed", "data_dir", "download", out=Path("guard-evaluation"),
                data=Option(None, "in-distribution data (default: the one the guard was fitted on)", optional=True))
@locks_output("common.out")
def evaluate_command(
    common: Common,
    guard_dir: GuardOption,
    ood: Annotated[str, typer.Option("--ood", help="comma-separated OOD sets: noise, inverted, natural, or a dataset (fashion-mnist)")] = "noise,inverted,natural",
    n: Annotated[int, typer.Option("--n", min=1, help="images per set")] = 1000,
    natural_folder: Annotated[Path | None, typer.Option("--natural-folder", help="photographs for the natural probe (default: scikit-learn's samples)")] = None,
    attack_eps: Annotated[float | None, typer.Option("--attack-eps", help="also report detection under PGD and the adaptive attack at this Linf eps")] = None,
    attack_n: Annotated[int, typer.Option("--attack-n", min=1, help="images for the attack report")] = 100,
    attack_steps: Annotated[int, typer.Option("--attack-steps", min=1)] = 20,
    trust_factory: TrustFactoryOption = False,
) -> None:
    """FNR at the threshold, AUROC, FPR at 95% TPR and overconfidence per OOD set; JSON + PNG."""
    from hardened.guard.adaptive import attack_guard
    from hardened.guard.evaluation import evaluate_guard
    from hardened.guard.probes import load_probe
    from hardened.report.plots import plot_score_histograms

    seed, data_dir, out_dir = common.seed, common.data_dir, common.out
    probes = [t.strip() for t in ood.split(",") if t.strip()]
    if not probes:
        raise ConfigError("--ood names no OOD set; give noise, inverted, natural or a dataset, comma-separated")
    if attack_eps is not None:
        check_real(attack_eps, "--attack-eps", minimum=0.0, maximum=1.0, open_below=True)
    seed_everything(seed)
    check_writable(out_dir, folder=True, what="--out")
    record = read_guard_record(guard_dir)
    extra = record.get("extra") or {}
    guard = GuardedClassifier.load(guard_dir, trust_factory=trust_factory)
    spec = common.data or extra.get("data")
    if not spec:
        raise ConfigError("the guard does not record its data; pass --data")
    fit_seed = int(extra.get("seed", seed))
    splits = load_splits(spec, data_dir=data_dir, download=common.download, seed=fit_seed)
    if extra.get("calibration_n"):
        _, heldout = calibration_split(splits.test, int(extra["calibration_n"]), fit_seed)
    else:
        heldout = splits.test
    heldout = heldout.head(n)
    sets = {}
    for name in probes:
        sets[name] = load_probe(name, heldout.x, n, seed=seed, data_dir=data_dir, natural_folder=natural_folder)
    result = evaluate_guard(guard, heldout.x, sets, id_name=spec)
    table = Table(title=f"{result.score} guard, threshold {result.threshold:.4g}: ID {spec} "
                        f"({result.id_n} held-out, FPR {100 * result.id_fpr:.2f}%)")
    for column in ("OOD set", "n", "FNR @ threshold", "AUROC", "FPR @ 95% TPR", "conf>0.99", "conf>0.95", "conf>0.75"):
        table.add_column(column, justify="right")
    for r in result.ood:
        conf = [f"{100 * r.overconfident[k]:.1f}%" for k in ("0.99", "0.95", "0.75")]
        table.add_row(r.name, str(r.n), f"{100 * r.fnr:.2f}%", f"{r.auroc:.4f}", f"{100 * r.fpr_at_95_tpr:.2f}%", *conf)
    out.print(table)
    out.print("(conf>L: share of OOD inputs the bare classifier labels with softmax confidence above L)")
    report = result.to_dict()
    if attack_eps is not None:
        sample = heldout.head(attack_n)
        attacked = attack_guard(guard, sample.x, sample.y, eps=attack_eps, steps=attack_steps, seed=seed)
        report["attack"] = attacked.to_dict()
        for a in attacked.attacks:
            out.print(f"{a.attack} (linf eps {attack_eps:g}): success {100 * a.success_rate:.1f}%, "
                      f"guard detects {100 * a.detection_rate:.1f}% of them, evading {100 * a.evasion_rate:.1f}%")
    write_json(out_dir / "evaluation.json", report)
    plot_score_histograms(result, out_dir / "scores.png")
    out.print(f"wrote {out_dir / 'evaluation.json'} and {out_dir / 'scores.png'}")


@guard_app.command("predict")
def predict_command(
    inputs: Annotated[list[Path], typer.Argument(help="image files or .npz files with an array x")],
    guard_dir: GuardOption,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the answers as JSON")] = None,
    trust_factory: TrustFactoryOption = False,
) -> None:
    """Classify inputs, or refuse those the guard scores as unreliable (one line per input)."""
    if json_out is not None:
        check_writable(json_out, folder=False, what="--json")
    guard = GuardedClassifier.load(guard_dir, trust_factory=trust_factory)
    names, x = load_inputs(inputs, guard.input_shape)
    result = guard.predict_batch(x)
    classes = guard.classes
    rows = []
    for i, name in enumerate(names):
        label, score = int(result.predictions[i]), float(result.scores[i])
        text = classes[label] if classes else str(label)
        if bool(result.accepted[i]):
            out.print(f"{name}: {text}  (score {score:.4g} <= {result.threshold:.4g})")
        elif not bool(result.scored[i]):
            out.print(f"{name}: refused (the input could not be scored; the bare classifier would say {text})")
        else:
            out.print(f"{name}: refused (score {score:.4g} > {result.threshold:.4g}; the bare classifier would say {text})")
        rows.append({"input": name, "accepted": bool(result.accepted[i]), "prediction": label,
                     "score": score if bool(result.scored[i]) else None})
    if json_out is not None:
        write_json(json_out, {"threshold": guard.threshold, "answers": rows})
