"""``hardened guard fit | evaluate | predict``: reliability scores that refuse to predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.table import Table

from hardened._util.atomic import write_json
from hardened._util.seeding import make_generator
from hardened.cli._common import (
    DataDirOption,
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
from hardened.data import Dataset
from hardened.errors import ConfigError, InputError
from hardened.guard import SCORES, GuardedClassifier, calibrate_threshold, make_score
from hardened.guard.calibrate import ScoreSummary
from hardened.guard.guarded import read_guard_record

guard_app = typer.Typer(no_args_is_help=True, help="Fit, evaluate and use reliability guards.")

DataOption = Annotated[str, typer.Option("--data", help="in-distribution data: mnist-5k, digits, mnist, fashion-mnist, a folder or .npz")]
TrustFactoryOption = Annotated[bool, typer.Option(
    "--trust-factory", help="run the factory or TorchScript classifier that the guard folder names (it is code: only for folders you trust)")]


def _parse_options(items: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option takes key=value, got {item!r}")
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = value
    return options


def heldout_split(test: Dataset, calibration_n: int, seed: int) -> tuple[Dataset, Dataset]:
    """Seeded split of the test part into (calibration, evaluation) sets."""
    if not 0 < calibration_n < len(test):
        raise ConfigError(
            f"--calibration-n must lie in [1, {len(test) - 1}] (the test part has {len(test)} images)"
        )
    order = torch.randperm(len(test), generator=make_generator(seed + 7919))
    return (test.subset(order[:calibration_n], f"{test.name}:calibration"),
            test.subset(order[calibration_n:], f"{test.name}:evaluation"))


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
def fit_command(
    model: ModelOption,
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write the guard to")],
    data: DataOption = "mnist-5k",
    score: Annotated[str, typer.Option("--score", help=f"score: {', '.join(SCORES)}")] = "vae",
    fpr: Annotated[float, typer.Option("--fpr", help="target false-positive rate on held-out data")] = 0.05,
    method: Annotated[str, typer.Option("--method", help="fpr (threshold at --fpr) or max (max held-out score)")] = "fpr",
    n_train: Annotated[int | None, typer.Option("--n-train", min=1, help="training images for the score (default all)")] = None,
    calibration_n: Annotated[int | None, typer.Option("--calibration-n", min=1, help="held-out images for calibration (default half the test part)")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="VAE epochs")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", help="score option key=value (repeatable), e.g. gan_steps=500")] = None,
    weights: WeightsOption = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N")] = "cpu",
    seed: SeedOption = 0,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
) -> None:
    """Fit a score on the training part, calibrate its threshold on held-out test images, save."""
    seed_everything(seed)
    target = resolve_device(device)
    splits = load_data(data, data_dir, download, seed)
    loaded = load_model_for(model, weights, splits.train, target)
    train = splits.train
    if n_train is not None and n_train < len(train):
        train = train.subset(torch.randperm(len(train), generator=make_generator(seed))[:n_train])
    options = _parse_options(option or [])
    if epochs is not None:
        options["epochs"] = epochs
    if "seed" not in options and SCORES.get(score).seeded:
        options["seed"] = seed
    scorer = make_score(score, loaded.model, **options)
    scorer.fit(train.to(target), progress=True)
    calibration, evaluation = heldout_split(splits.test, calibration_n or len(splits.test) // 2, seed)
    scores = scorer.score(calibration.x.to(target))
    record = calibrate_threshold(scores, fpr=fpr, method=method)
    guard = GuardedClassifier(loaded.model, scorer, record, model_ref=str(Path(model).resolve()) if Path(model).exists() else model,
                              model_info=loaded.info, classes=loaded.info.classes or splits.train.classes)
    extra = {"data": data, "seed": seed, "n_train": len(train), "calibration_n": len(calibration),
             "evaluation_n": len(evaluation)}
    guard.save(out_dir, extra=extra)
    rule = f"{100 * fpr:g}% target FPR" if method == "fpr" else "max held-out score"
    out.print(_summary_table(record.summary, f"{scorer.name} scores on {len(calibration)} held-out {data} images", record.threshold))
    out.print(f"threshold {record.threshold:.6g} ({rule}); held-out false-positive rate {100 * record.heldout_fpr:.2f}%")
    out.print(f"saved guard to {out_dir}")


@guard_app.command("evaluate")
def evaluate_command(
    guard_dir: Annotated[Path, typer.Option("--guard", help="folder written by 'hardened guard fit'")],
    ood: Annotated[str, typer.Option("--ood", help="comma-separated OOD sets: noise, inverted, natural, or a dataset (fashion-mnist)")] = "noise,inverted,natural",
    n: Annotated[int, typer.Option("--n", min=1, help="images per set")] = 1000,
    data: Annotated[str | None, typer.Option("--data", help="in-distribution data (default: the one the guard was fitted on)")] = None,
    natural_folder: Annotated[Path | None, typer.Option("--natural-folder", help="photographs for the natural probe (default: scikit-learn's samples)")] = None,
    attack_eps: Annotated[float | None, typer.Option("--attack-eps", help="also report detection under PGD and the adaptive attack at this Linf eps")] = None,
    attack_n: Annotated[int, typer.Option("--attack-n", min=1, help="images for the attack report")] = 100,
    attack_steps: Annotated[int, typer.Option("--attack-steps", min=1)] = 20,
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("guard-evaluation"),
    trust_factory: TrustFactoryOption = False,
    seed: SeedOption = 0,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
) -> None:
    """FNR at the threshold, AUROC, FPR at 95% TPR and overconfidence per OOD set; JSON + PNG."""
    from hardened.guard.adaptive import attack_guard
    from hardened.guard.evaluation import evaluate_guard
    from hardened.guard.probes import load_probe
    from hardened.report.plots import plot_score_histograms

    seed_everything(seed)
    record = read_guard_record(guard_dir)
    extra = record.get("extra") or {}
    guard = GuardedClassifier.load(guard_dir, trust_factory=trust_factory)
    spec = data or extra.get("data")
    if not spec:
        raise ConfigError("the guard does not record its data; pass --data")
    splits = load_data(spec, data_dir, download, int(extra.get("seed", seed)))
    if extra.get("calibration_n"):
        _, heldout = heldout_split(splits.test, int(extra["calibration_n"]), int(extra.get("seed", seed)))
    else:
        heldout = splits.test
    heldout = heldout.head(n)
    sets = {}
    for name in [t.strip() for t in ood.split(",") if t.strip()]:
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


def _read_inputs(paths: list[Path], shape: tuple[int, int, int]) -> tuple[list[str], torch.Tensor]:
    from PIL import Image

    from hardened.data.files import read_npz, to_unit_float
    from hardened.guard.probes import to_format

    names: list[str] = []
    batches: list[torch.Tensor] = []
    for path in paths:
        if not path.is_file():
            raise InputError(f"input {path} does not exist")
        if path.suffix.lower() == ".npz":
            array = to_unit_float(read_npz(path, ("x",), error=InputError)["x"], str(path))
            if array.ndim == 3:
                array = array[:, None]
            elif array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
                array = array.transpose(0, 3, 1, 2)
            if array.ndim != 4:
                raise InputError(f"{path}: x must be N×H×W, N×C×H×W or N×H×W×C, got {array.shape}")
            x = torch.from_numpy(np.ascontiguousarray(array))
            names += [f"{path.name}[{i}]" for i in range(x.shape[0])]
        else:
            try:
                with Image.open(path) as image:
                    array = np.asarray(image.convert("RGB" if shape[0] == 3 else "L"), dtype=np.uint8)
            except OSError as error:
                raise InputError(f"cannot read image {path}: {error}") from error
            x = torch.from_numpy(array.astype(np.float32) / 255.0)
            x = x.permute(2, 0, 1)[None] if x.dim() == 3 else x[None, None]
            names.append(path.name)
        batches.append(to_format(x, shape))
    return names, torch.cat(batches)


@guard_app.command("predict")
def predict_command(
    inputs: Annotated[list[Path], typer.Argument(help="image files or .npz files with an array x")],
    guard_dir: Annotated[Path, typer.Option("--guard", help="folder written by 'hardened guard fit'")],
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the answers as JSON")] = None,
    trust_factory: TrustFactoryOption = False,
) -> None:
    """Classify inputs, or refuse those the guard scores as unreliable (one line per input)."""
    guard = GuardedClassifier.load(guard_dir, trust_factory=trust_factory)
    names, x = _read_inputs(inputs, guard.input_shape)
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
