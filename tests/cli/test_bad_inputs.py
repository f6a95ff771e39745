"""The bad-input table (issue 17): every bad command line ends in ONE line ``error: ... [Type]``,
exit code 2, no traceback, nothing written, and no long work started first.

Each row is (argv, rationale); placeholders name files prepared per test (``{empty}``, ``{bomb}``
...) or shared fixtures (``{model}``, ``{guard}``). "No long work" is enforced, not timed: every
entry into training, attacking, certifying, fitting, evaluating or auditing is replaced by a
function that raises ``LongWork``; a row that reaches one fails with that name. A guard.json that
names code is not a bad input any more (the classifier is read from the folder's safetensors and
the reference is never imported: tests/guard/test_guard_trust.py checks that), nor is a
malformed certify settings file reachable here (certify's loader is patched; tests/certify/test_cli.py covers it).
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import hardened.cli.attack as cli_attack
import hardened.cli.audit as cli_audit
import hardened.cli.benchmark_attacks as cli_bench
import hardened.cli.certify as cli_certify
import hardened.cli.evaluate as cli_evaluate
import hardened.cli.explain as cli_explain
import hardened.cli.guard as cli_guard
import hardened.cli.train as cli_train
import hardened.guard.adaptive
import hardened.guard.evaluation
from hardened.cli.main import app
from hardened.train.loop import Trainer

runner = CliRunner()
SEED_COMMANDS = {
    "train": ["train", "--data", "digits", "--arch", "mlp", "--out", "{out}/m.safetensors"],
    "defend-compare": ["defend-compare", "--data", "digits", "--arch", "mlp", "--out", "{out}"],
    "attack": ["attack", "--model", "{model}", "--data", "digits", "--out", "{out}"],
    "evaluate": ["evaluate", "--model", "{model}", "--data", "digits", "--out", "{out}"],
    "explain": ["explain", "--model", "{model}", "--data", "digits", "--out", "{out}"],
    "benchmark-attacks": ["benchmark-attacks", "--model", "{model}", "--data", "digits", "--out", "{out}"],
    "certify": ["certify", "--model", "{model}", "--data", "digits", "--out", "{out}"],
    "guard fit": ["guard", "fit", "--model", "{model}", "--data", "digits", "--score", "softmax", "--out", "{out}"],
    "guard evaluate": ["guard", "evaluate", "--guard", "{guard}", "--out", "{out}"],
    "audit": ["audit", "--model", "{model}", "--data", "digits", "--out", "{out}"],
}
# the commands that read --data and write a folder (train writes a file)
DATA_COMMANDS = {k: v for k, v in SEED_COMMANDS.items() if k != "guard evaluate"}
FOLDER_COMMANDS = {k: v for k, v in SEED_COMMANDS.items() if k not in ("train",)}


def _with(argv: list[str], old: str, new: str) -> list[str]:
    """``argv`` with the value after ``old`` replaced by ``new`` (or appended)."""
    argv = list(argv)
    if old in argv:
        argv[argv.index(old) + 1] = new
    else:
        argv += [old, new]
    return argv


def _out_to(argv: list[str], target: str) -> list[str]:
    if argv[0] == "train":
        return _with(argv, "--out", f"{target}/m.safetensors")
    return _with(argv, "--out", target)


ROWS: list[object] = []


def row(argv: list[str], why: str, *marks: pytest.MarkDecorator) -> None:
    ROWS.append(pytest.param(argv, id=f"{why}: {' '.join(argv)}"[:150], marks=marks))


# ---- issue 17 #2: certify --name is one path component ----------------------------------------
for bad_name in ("../x", "/abs/ABS", "", ".", "..", "a/b", "../../ESCAPED"):
    for method in ("smoothing", "ibp"):
        row(["certify", "--model", "{model}", "--model", "{model}", "--name", bad_name, "--name", "ok",
             "--method", method, "--data", "digits", "--out", "{out}"], "#2 --name")
row(["certify", "--model", "{model}", "--name", "a", "--name", "b", "--data", "digits", "--out", "{out}"],
    "#2 one --name per --model")
row(["certify", "--model", "{model}", "--model", "{model}", "--name", "same", "--name", "same",
     "--data", "digits", "--out", "{out}"], "#2 names differ")

# ---- #7: accepted nonsense ------------------------------------------------------------------------
CERTIFY = SEED_COMMANDS["certify"]
for option, value in (("--radii", "-1,0.5"), ("--radii", "0.5,nan"), ("--radii", "a,b"), ("--n", str(10**12)),
                      ("--n0", str(10**12)), ("--n", "0"), ("--n", "-5"), ("--n", "5"), ("--alpha", "2"),
                      ("--alpha", "0"), ("--sigma", "0"), ("--sigma", "-1"), ("--method", "magic"),
                      ("--images", "0"), ("--every", "0"), ("--batch-size", "0")):
    row(_with(CERTIFY, option, value), "#7 certify")
for score, n_train in (("vae", "1"), ("vae", "9"), ("wgan-inverter", "1"), ("vae", "0")):
    row(_with(_with(SEED_COMMANDS["guard fit"], "--score", score), "--n-train", n_train), "#7 guard fit --n-train")
row(["guard", "predict", "{empty}", "--guard", "{guard}"], "#7 predict on an empty .npz")
for option, value in (("--fpr", "2"), ("--method", "median"), ("--calibration-n", "100000"), ("--score", "nope")):
    row(_with(SEED_COMMANDS["guard fit"], option, value), "#7 guard fit settings")

# ---- #8: every output location checked before any work --------------------------------------------
for argv in SEED_COMMANDS.values():
    row(_out_to(argv, "{afile}/sub"), "#8 --out below a file")
    row(_out_to(argv, "/proc/hardened-test/x"), "#8 --out unwritable")
for argv in FOLDER_COMMANDS.values():
    row(_with(argv, "--out", "{afile}"), "#8 --out is a file")
row(_with(SEED_COMMANDS["train"], "--out", "{folder}"), "#8 train --out is a folder")
row(_with(SEED_COMMANDS["train"], "--checkpoint-dir", "{afile}"), "#8 train --checkpoint-dir is a file")
row(["guard", "predict", "{png}", "--guard", "{guard}", "--json", "{afile}/x.json"], "#8 predict --json below a file")
row(["guard", "predict", "{png}", "--guard", "{guard}", "--json", "{folder}"], "#8 predict --json is a folder")
row(["audit", "--model", "{model}", "--data", "digits", "--out", "{folder}"], "#8 audit --out not an audit")

# ---- #9: an empty dataset, and one too small to split ----------------------------------------------
for argv in DATA_COMMANDS.values():
    row(_with(argv, "--data", "{empty}"), "#9 empty data")
    row(_with(argv, "--data", "{single}"), "#9 one image")

# ---- #10: seeds out of range --------------------------------------------------------------------
for argv in SEED_COMMANDS.values():
    for seed in ("-1", str(2**70)):
        row(argv + ["--seed", seed], "#10 seed")

# ---- #12: images and files that escape the checks -------------------------------------------------
row(["guard", "predict", "{folder}", "--guard", "{guard}"], "#12 predict on a folder")
row(["guard", "predict", "{tmp}/missing.png", "--guard", "{guard}"], "#12 predict on a missing file")
row(["guard", "predict", "{bomb}", "--guard", "{guard}"], "#12 predict on a PNG bomb")
row(["guard", "predict", "{corrupt}", "--guard", "{guard}"], "#12 predict on a corrupt PNG")
row(["guard", "predict", "{randnpz}", "--guard", "{guard}"], "#12 predict on random bytes .npz")
row(["guard", "predict", "{objnpz}", "--guard", "{guard}"], "#12 predict on an object-array .npz")
row(["guard", "predict", "{noxnpz}", "--guard", "{guard}"], "#12 predict on an .npz without x")
row(["guard", "predict", "{png}", "--guard", "{tmp}"], "#12 predict with a folder that is not a guard")
for name in ("train", "attack", "guard fit"):
    row(_with(DATA_COMMANDS[name], "--data", "{bombdir}"), "#12 PNG bomb in a --data folder")
    row(_with(DATA_COMMANDS[name], "--data", "{corruptdir}"), "#12 corrupt PNG in a --data folder")
    row(_with(DATA_COMMANDS[name], "--data", "{randnpz}"), "#12 random bytes .npz as --data")
row(SEED_COMMANDS["guard evaluate"] + ["--ood", "natural", "--natural-folder", "{corruptdir}/a"],
    "#12 corrupt PNG in --natural-folder")
row(SEED_COMMANDS["guard evaluate"] + ["--ood", "natural", "--natural-folder", "{tmp}/nothing"],
    "#12 --natural-folder without images")
for option in ("epochs=abc", "noequals", "=3", "latent=-2"):
    row(_with(SEED_COMMANDS["guard fit"], "--score", "vae") + ["--option", option], "#12 guard fit --option")
row(["guard", "predict", "{png}", "--guard", "{guard_threshold_abc}"], "#12 guard.json threshold abc")

# ---- #13: several --model values are all loaded and checked first -----------------------------------
for method in ("smoothing", "ibp"):
    row(_with(CERTIFY, "--method", method) + ["--model", "{tmp}/missing.safetensors"], "#13 certify missing model")
    row(_with(CERTIFY, "--method", method) + ["--model", "{corrupt}"], "#13 certify bad second model")

# ---- #14: option-parser errors are one line too ------------------------------------------------------
for name in ("attack", "train", "benchmark-attacks"):
    row(SEED_COMMANDS[name] + ["--eps", "abc"], "#14 non-number eps")
for name in ("train", "attack", "evaluate", "benchmark-attacks", "defend-compare"):
    row(SEED_COMMANDS[name] + ["--batch-size", "0"], "#14 --batch-size 0")
for name in ("train", "defend-compare", "guard fit"):
    row(SEED_COMMANDS[name] + ["--epochs", "0"], "#14 --epochs 0")
for name in ("attack", "evaluate", "guard evaluate", "benchmark-attacks"):
    row(SEED_COMMANDS[name] + ["--n", "0"], "#14 --n 0")
for argv in SEED_COMMANDS.values():
    row(argv + ["--no-such-option"], "#14 unknown option")
    row(argv + ["--seed", "abc"], "#14 non-number seed")
row(["attack", "--data", "digits"], "#14 missing --model")
row(["no-such-command"], "#14 unknown command")
row(["guard", "no-such-command"], "#14 unknown guard command")
row(["guard", "predict", "--guard", "{guard}"], "#14 predict without inputs")
row(SEED_COMMANDS["train"] + ["--amp", "maybe"], "#14 a flag given a value")

# ---- earlier rows, still bad input -------------------------------------------------------------------
row(["attack", "--model", "{tmp}/missing.safetensors", "--data", "digits", "--out", "{out}"], "missing model")
row(["attack", "--model", "{model}", "--data", "mnist-5k", "--out", "{out}"], "model/data shape mismatch")
row(SEED_COMMANDS["attack"] + ["--attack", "nope"], "unknown attack")
row(SEED_COMMANDS["attack"] + ["--norm", "l9"], "unknown norm")
row(SEED_COMMANDS["attack"] + ["--start", "gauss"], "unknown --start")
row(SEED_COMMANDS["attack"] + ["--device", "cuda:7"], "no such device")
row(SEED_COMMANDS["attack"] + ["--device", "tpu"], "unknown device")
row(SEED_COMMANDS["evaluate"] + ["--eps", "a,b"], "bad --eps list")
row(SEED_COMMANDS["explain"] + ["--index", "99999"], "explain index out of range")
row(SEED_COMMANDS["explain"] + ["--index", ","], "explain no index")
row(SEED_COMMANDS["train"] + ["--method", "pgd"], "adversarial training without --eps")
row(SEED_COMMANDS["train"] + ["--method", "nope"], "unknown training method")
row(SEED_COMMANDS["train"] + ["--arch", "vgg"], "unknown architecture")
row(SEED_COMMANDS["train"] + ["--source-model", "{model}"], "--source-model without ensemble")
row(SEED_COMMANDS["train"] + ["--method", "ensemble", "--eps", "0.1"], "ensemble without sources")
row(SEED_COMMANDS["train"] + ["--method", "semi-supervised", "--eps", "0.1"], "semi-supervised without a fraction")
row(SEED_COMMANDS["train"] + ["--guard", "sometimes"], "unknown collapse guard")
row(_with(SEED_COMMANDS["train"], "--data", "no-such-data"), "unknown data")
row(_with(SEED_COMMANDS["train"], "--data", "{tmp}/missing.npz"), "missing .npz")
row(SEED_COMMANDS["audit"] + ["--budget", "huge"], "unknown audit budget")
for name, option, value in (("attack", "--loss", "nope"), ("attack", "--steps", "0"), ("attack", "--restarts", "0"),
                            ("attack", "--eps", "-1"), ("evaluate", "--attack", "nope"), ("evaluate", "--norm", "l9"),
                            ("evaluate", "--steps", "0"), ("evaluate", "--transfer-from", "{tmp}/missing.safetensors"),
                            ("explain", "--method", "nope"), ("explain", "--composite", "nope"),
                            ("explain", "--compare", "nope"), ("explain", "--target", "-1"),
                            ("explain", "--quality", "-1"), ("benchmark-attacks", "--attacks", "nope"),
                            ("benchmark-attacks", "--steps", "0"), ("defend-compare", "--methods", "standard,nope"),
                            ("defend-compare", "--methods", ","), ("guard evaluate", "--ood", "nope"),
                            ("guard evaluate", "--attack-n", "0"), ("certify", "--norm", "l9"),
                            ("train", "--lr-schedule", "sometimes"), ("train", "--optimizer", "nope"),
                            ("train", "--norm", "l9")):
    argv = SEED_COMMANDS[name] + [option, value]
    if name == "certify" and option == "--norm":
        argv += ["--method", "ibp"]
    if name == "train" and option == "--norm":
        argv += ["--method", "pgd", "--eps", "0.1"]
    row(argv, "bad option value")
row(["guard", "evaluate", "--guard", "{tmp}/nope", "--out", "{out}"], "guard folder missing")

# ---- security branch: data files never name code, sidecars validated, labels bounded -----------------
row(_with(SEED_COMMANDS["attack"], "--model", "json:dumps"), "#4 factory that is not a model")
row(_with(SEED_COMMANDS["attack"], "--model", "{sidecar_list}"), "#11 sidecar is a JSON list")
row(_with(SEED_COMMANDS["attack"], "--model", "{sidecar_arch_kwargs}"), "#11 arch_kwargs a string")
row(_with(SEED_COMMANDS["attack"], "--model", "{sidecar_shape}"), "#11 input_shape a string")
row(_with(SEED_COMMANDS["train"], "--data", "{bigy}"), "#6 a label far above the class count")

# ---- the newer commands and options (serve, predict, attack --target-url, evaluate --preset, train --guard*)
SERVE = ["serve", "--model", "{model}"]
for argv, why in ((["serve"], "neither --guard nor --model"),
                  (["serve", "--guard", "{guard}", "--model", "{model}"], "both --guard and --model"),
                  (["serve", "--guard", "{tmp}/nope"], "missing guard folder"),
                  (["serve", "--guard", "{tmp}"], "a folder that is not a guard"),
                  (["serve", "--guard", "{afile}"], "a file as --guard"),
                  (["serve", "--guard", "{guard_threshold_abc}"], "guard.json threshold abc"),
                  (["serve", "--guard", "{guard}", "--smooth", "0.25"], "--smooth with --guard"),
                  (["serve", "--model", "{tmp}/missing.safetensors"], "missing model"),
                  (["serve", "--model", "{corrupt}"], "corrupt model file"),
                  (["serve", "--model", "json:dumps"], "factory that is not a model"),
                  (["serve", "--model", "{sidecar_list}"], "sidecar is a JSON list"),
                  (["serve", "--model", "{sidecar_shape}"], "sidecar input_shape a string"),
                  (SERVE + ["--smooth", "0"], "--smooth 0"), (SERVE + ["--smooth", "-1"], "--smooth negative"),
                  (SERVE + ["--smooth", "nan"], "--smooth nan"), (SERVE + ["--smooth", "abc"], "--smooth not a number"),
                  (SERVE + ["--smooth", "0.25", "--alpha", "2"], "--alpha above 1"),
                  (SERVE + ["--smooth", "0.25", "--alpha", "0"], "--alpha 0"),
                  (SERVE + ["--smooth", "0.25", "--n", "0"], "--n 0"), (SERVE + ["--smooth", "0.25", "--n0", "0"], "--n0 0"),
                  (SERVE + ["--port", "0"], "--port 0"), (SERVE + ["--port", "70000"], "--port above 65535"),
                  (SERVE + ["--port", "abc"], "--port not a number"), (SERVE + ["--max-batch", "0"], "--max-batch 0"),
                  (SERVE + ["--max-wait-ms", "-1"], "--max-wait-ms negative"), (SERVE + ["--max-queue", "0"], "--max-queue 0"),
                  (SERVE + ["--max-images", "0"], "--max-images 0"), (SERVE + ["--max-body-mb", "0"], "--max-body-mb 0"),
                  (SERVE + ["--input-shape", "a,b,c"], "--input-shape not integers"),
                  (SERVE + ["--input-shape", "1,8"], "--input-shape two numbers"),
                  (SERVE + ["--input-shape", "0,8,8"], "--input-shape zero"),
                  (SERVE + ["--device", "cuda:7"], "no such device"), (SERVE + ["--device", "tpu"], "unknown device"),
                  (SERVE + ["--seed", "-1"], "seed negative"), (SERVE + ["--no-such-option"], "unknown option")):
    row(argv, f"serve: {why}")
PREDICT = ["predict", "{png}", "--url", "http://127.0.0.1:1"]
for argv, why in ((["predict", "{tmp}/missing.png", "--url", "http://127.0.0.1:1"], "missing file"),
                  (["predict", "{folder}", "--url", "http://127.0.0.1:1"], "a folder"),
                  (["predict", "--url", "http://127.0.0.1:1"], "no files"),
                  (["predict", "{png}"], "no --url"),
                  (_with(PREDICT, "--url", "notaurl"), "url without a scheme"),
                  (_with(PREDICT, "--url", "ftp://127.0.0.1:1"), "url of another scheme"),
                  (PREDICT, "nothing listening at --url"),
                  (PREDICT + ["--timeout", "0"], "--timeout 0"), (PREDICT + ["--timeout", "abc"], "--timeout not a number"),
                  (PREDICT + ["--no-such-option"], "unknown option")):
    row(argv, f"predict: {why}")
REMOTE = ["attack", "--target-url", "http://127.0.0.1:1", "--attack", "square", "--data", "digits", "--out", "{out}"]
for argv, why in ((REMOTE + ["--model", "{model}"], "both --model and --target-url"),
                  (_with(REMOTE, "--attack", "pgd"), "a gradient attack on a remote target"),
                  (_with(REMOTE, "--target-url", "notaurl"), "url without a scheme"),
                  (_with(REMOTE, "--target-url", "ftp://127.0.0.1:1"), "url of another scheme"),
                  (REMOTE + ["--query-budget", "0"], "--query-budget 0"),
                  (REMOTE + ["--query-budget", "-3"], "--query-budget negative"),
                  (REMOTE + ["--seed", "-1"], "seed negative"),
                  (_with(REMOTE, "--data", "{empty}"), "empty data"),
                  (_with(REMOTE, "--out", "{afile}"), "--out is a file"),
                  (["attack", "--data", "digits", "--out", "{out}"], "neither --model nor --target-url")):
    row(argv, f"attack --target-url: {why}")
EVALUATE = SEED_COMMANDS["evaluate"]
for option, value in (("--preset", "huge"), ("--preset", ""), ("--masking", "maybe"), ("--eot", "-1"),
                      ("--eps", "-0.1,0.2"), ("--eps", "0.1,nan"), ("--eps", ""), ("--n", "-1"),
                      ("--transfer-from", "{corrupt}"), ("--steps", "-2"), ("--batch-size", "-1")):
    row(_with(EVALUATE, option, value), "evaluate option")
row(EVALUATE + ["--attack", "pgd", "--preset", "thorough"], "evaluate --preset without the cascade")
row(EVALUATE + ["--attack", "pgd", "--masking", "off"], "evaluate --masking without the cascade")
FGSM = SEED_COMMANDS["train"] + ["--method", "fgsm", "--eps", "0.1"]
for option, value in (("--guard-drop", "-1"), ("--guard-drop", "2"), ("--guard-drop", "nan"), ("--guard-gap", "-1"),
                      ("--guard-gap", "2"), ("--guard-every", "-1"), ("--guard-every", "abc"),
                      ("--nfgsm-noise", "-1"), ("--grad-align", "-1"), ("--eps-warmup", "2"), ("--eps-warmup", "-0.1"),
                      ("--eps", "nan"), ("--eps", "-0.1"), ("--step-size", "-1"), ("--lr", "0"), ("--lr", "-1"),
                      ("--lr", "nan"), ("--n-train", "0"), ("--eval-n", "-1"), ("--eval-eps", "-1"),
                      ("--checkpoint-every", "-1")):
    row(_with(FGSM, option, value), "train option")
row(FGSM + ["--guard", ""], "train --guard empty")
for option, value in (("--guard-floor", "0"), ("--guard-floor", "2"), ("--guard-start", "1"), ("--guard-start", "-0.5"), ("--lr-peak", "1.5"), ("--lr-gamma", "2"),
                      ("--lr-milestones", "a,b"), ("--momentum", "1.5"), ("--weight-decay", "-1"),
                      ("--recipe", "nope"), ("--recipe", "")):
    row(_with(FGSM, option, value), "train option")
row(FGSM + ["--lr-schedule", "piecewise"], "train piecewise without milestones")
row(FGSM + ["--lr-schedule", "piecewise", "--lr-milestones", "0.7,0.3"], "train milestones not increasing")
row(["train", "--recipe", "madry-cifar10", "--data-dir", "{out}", "--out", "{out}/m.safetensors"],
    "train recipe whose data is not on this machine")
row(SEED_COMMANDS["train"] + ["--method", "trades", "--eps", "0.1", "--beta", "-1"], "train trades --beta negative")
row(SEED_COMMANDS["train"] + ["--method", "noise", "--sigma", "-1"], "train noise --sigma negative")
row(SEED_COMMANDS["train"] + ["--method", "semi-supervised", "--eps", "0.1", "--unlabeled-fraction", "1.5"],
    "train --unlabeled-fraction above 1")
row(SEED_COMMANDS["train"] + ["--method", "semi-supervised", "--eps", "0.1", "--unlabeled-fraction", "0.5",
                              "--labeler", "{tmp}/missing.safetensors"], "train --labeler missing")
row(SEED_COMMANDS["train"] + ["--method", "ensemble", "--eps", "0.1", "--source-model", "{tmp}/missing.safetensors"],
    "train ensemble source missing")
row(SEED_COMMANDS["train"] + ["--method", "ensemble", "--eps", "0.1", "--source-model", "{corrupt}"],
    "train ensemble source corrupt")
for name, option, value in (("explain", "--index", "-1"), ("explain", "--index", "a"), ("certify", "--images", "-1"),
                            ("certify", "--sigma", "nan"), ("guard fit", "--fpr", "0"), ("guard fit", "--fpr", "-0.1"),
                            ("guard fit", "--calibration-n", "0"), ("guard fit", "--data", "{noxnpz}"),
                            ("guard fit", "--data", "{objnpz}"), ("guard evaluate", "--attack-eps", "-1"),
                            ("guard evaluate", "--attack-eps", "nan"), ("guard evaluate", "--n", "-1"),
                            ("guard evaluate", "--ood", ""), ("guard evaluate", "--guard", "{afile}"),
                            ("guard evaluate", "--data", "{empty}"), ("audit", "--data", "{randnpz}"),
                            ("audit", "--data", "{objnpz}"), ("audit", "--model", "{corrupt}"),
                            ("audit", "--model", "json:dumps"), ("benchmark-attacks", "--eps", "-1"),
                            ("benchmark-attacks", "--norm", "l9"), ("benchmark-attacks", "--n", "-1"),
                            ("defend-compare", "--eps", "-1"), ("defend-compare", "--epochs", "-1"),
                            ("attack", "--data", "{noxnpz}"), ("attack", "--data", "{objnpz}"),
                            ("evaluate", "--data", "{randnpz}"), ("explain", "--data", "{randnpz}"),
                            ("certify", "--data", "{randnpz}"), ("attack", "--model", "{sidecar_arch_kwargs}")):
    row(_with(SEED_COMMANDS[name], option, value), "more bad values")
row(["guard", "predict", "{afile}", "--guard", "{guard}"], "guard predict on a text file")
row(["guard", "predict", "{png}", "--guard", "{afile}"], "guard predict --guard is a file")

assert len(ROWS) >= 303, len(ROWS)


# ---- fixtures ----------------------------------------------------------------------------------------


class LongWork(Exception):
    """Raised by every patched entry into long work; a row that raises it ran too far."""


def _long_work(*args: object, **kwargs: object) -> None:
    raise LongWork("long work was started before the bad input was refused")


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """A trained digits mlp and a softmax guard for it (the only real work in this file)."""
    folder = tmp_path_factory.mktemp("bad-inputs-shared")
    model = folder / "m.safetensors"
    trained = runner.invoke(app, ["train", "--data", "digits", "--arch", "mlp", "--epochs", "1",
                                  "--eval-n", "0", "--out", str(model), "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    guard = folder / "guard"
    fitted = runner.invoke(app, ["guard", "fit", "--model", str(model), "--data", "digits", "--score",
                                 "softmax", "--out", str(guard)])
    assert fitted.exit_code == 0, fitted.output
    return {"model": model, "guard": guard}


def _png(width: int, height: int, body: bytes = b"\x00") -> bytes:
    """A minimal grayscale PNG declaring ``width``×``height`` (its data need not fill it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


def _prepare(tmp: Path, shared: dict[str, Path]) -> dict[str, str]:
    """Every file a row may name, made small and fresh in ``tmp``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = {"tmp": tmp, "out": tmp / "out", **shared}
    paths["afile"] = tmp / "afile"
    paths["afile"].write_text("hi\n")
    paths["folder"] = tmp / "folder"
    (paths["folder"] / "inside").mkdir(parents=True)
    (paths["folder"] / "inside" / "note.txt").write_text("not an audit\n")
    paths["empty"] = tmp / "empty.npz"
    np.savez(paths["empty"], x=np.zeros((0, 1, 8, 8), "f4"), y=np.zeros(0, "i8"))
    paths["single"] = tmp / "single.npz"
    np.savez(paths["single"], x=np.zeros((1, 1, 8, 8), "f4"), y=np.zeros(1, "i8"))
    paths["png"] = tmp / "digit.png"
    Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(paths["png"])
    paths["bomb"] = tmp / "bomb.png"
    paths["bomb"].write_bytes(_png(40000, 40000))
    paths["corrupt"] = tmp / "corrupt.png"
    paths["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(64))
    for name, source in (("bombdir", "bomb"), ("corruptdir", "corrupt")):
        for label in ("a", "b"):
            (tmp / name / label).mkdir(parents=True)
            (tmp / name / label / "x.png").write_bytes(paths[source].read_bytes())
        paths[name] = tmp / name
    paths["randnpz"] = tmp / "random.npz"
    paths["randnpz"].write_bytes(rng.bytes(256))
    paths["objnpz"] = tmp / "object.npz"
    np.savez(paths["objnpz"], x=np.array([{"a": 1}, None], dtype=object))
    paths["noxnpz"] = tmp / "nox.npz"
    np.savez(paths["noxnpz"], images=np.zeros((2, 1, 8, 8), "f4"))
    paths["bigy"] = tmp / "bigy.npz"
    y = rng.integers(0, 10, 20)
    y[0] = 5000
    np.savez(paths["bigy"], x=rng.random((20, 1, 8, 8), dtype="f4"), y=y)
    sidecar = json.loads(shared["model"].with_suffix(".json").read_text())
    for name, content in (("sidecar_list", [1, 2]), ("sidecar_arch_kwargs", {**sidecar, "arch_kwargs": "lenet"}),
                          ("sidecar_shape", {**sidecar, "input_shape": "abc"})):
        target = tmp / f"{name}.safetensors"
        target.write_bytes(shared["model"].read_bytes())
        target.with_suffix(".json").write_text(json.dumps(content))
        paths[name] = target
    for name, change in (("guard_threshold_abc", {"threshold": "abc"}),
                         ("guard_code_ref", {"classifier": {"reference": "this:s"}})):
        folder = tmp / name
        folder.mkdir()
        for file in shared["guard"].iterdir():
            (folder / file.name).write_bytes(file.read_bytes())
        record = json.loads((folder / "guard.json").read_text())
        for key, value in change.items():
            record[key] = {**record[key], **value} if isinstance(value, dict) and isinstance(record.get(key), dict) else value
        (folder / "guard.json").write_text(json.dumps(record))
        paths[name] = folder
    paths["certify_bad_settings"] = tmp / "certify-run"
    paths["certify_bad_settings"].mkdir()
    (paths["certify_bad_settings"] / "samples.settings.json").write_text("{not json")
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture
def no_long_work(monkeypatch):
    """Replace every entry into long work by ``_long_work``."""
    for module, name in ((cli_attack, "attack_in_batches"), (cli_evaluate, "robust_accuracy_sweep"),
                         (cli_evaluate, "transfer_sweep"), (cli_explain, "explain_images"),
                         (cli_explain, "compare_explanations"), (cli_certify, "certify_sharded"),
                         (cli_certify, "certify_ibp"), (cli_train, "compare_methods"),
                         (cli_audit, "run_audit"), (cli_audit, "default_model"), (cli_bench, "compare_attacks"),
                         (hardened.guard.evaluation, "evaluate_guard"), (hardened.guard.adaptive, "attack_guard")):
        monkeypatch.setattr(module, name, _long_work)
    monkeypatch.setattr(Trainer, "fit", _long_work)
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", _long_work)  # hardened serve: starting to serve is the long work
    real = cli_guard.make_score

    def make_score(*args: object, **kwargs: object) -> object:
        score = real(*args, **kwargs)
        score._fit = _long_work  # type: ignore[method-assign]
        return score

    monkeypatch.setattr(cli_guard, "make_score", make_score)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("argv", ROWS)
def test_bad_input_is_one_line_exit_2_nothing_written(argv, shared, tmp_path, monkeypatch, no_long_work):
    paths = _prepare(tmp_path, shared)
    monkeypatch.chdir(tmp_path)
    args = [a.format(**paths) for a in argv]
    before = _files(tmp_path)
    start = time.perf_counter()
    result = runner.invoke(app, args)
    seconds = time.perf_counter() - start
    assert not isinstance(result.exception, LongWork), f"long work started first:\n{result.output}"
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert lines[0].rstrip().endswith("]"), lines[0]
    assert _files(tmp_path) == before, f"left behind: {_files(tmp_path) - before}"
    assert seconds < 60, f"took {seconds:.0f} s before refusing"


def test_resume_without_a_checkpoint_says_so_then_starts(shared, tmp_path, no_long_work):
    """``train --resume`` with nothing to resume warns (one line) and then starts training."""
    result = runner.invoke(app, ["train", "--data", "digits", "--arch", "mlp", "--resume", "--out",
                                 str(tmp_path / "m.safetensors")])
    assert isinstance(result.exception, LongWork), result.output  # it went on to train
    assert "no checkpoint" in result.output and "starting from scratch" in result.output


def test_every_row_is_reachable_as_written():
    """Guard against typos in the table: every placeholder a row uses is one ``_prepare`` makes."""
    import string

    names = {"tmp", "out", "model", "guard", "afile", "folder", "empty", "single", "png", "bomb", "corrupt",
             "bombdir", "corruptdir", "randnpz", "objnpz", "noxnpz", "bigy", "sidecar_list",
             "sidecar_arch_kwargs", "sidecar_shape", "guard_threshold_abc", "guard_code_ref",
             "certify_bad_settings"}
    used = {field for param in ROWS for a in param.values[0]  # type: ignore[attr-defined]
            for _, field, _, _ in string.Formatter().parse(a) if field}
    assert used <= names, used - names


_HOLD = (
    "import sys, time\n"
    "from hardened._util.lock import lock_output_dir\n"
    "with lock_output_dir(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(60)\n"
)
LOCKED_COMMANDS = ("attack", "explain", "guard evaluate", "evaluate", "certify", "audit")


@pytest.mark.parametrize("name", LOCKED_COMMANDS)
def test_a_second_run_on_a_folder_in_use_is_refused_first(name, shared, tmp_path, monkeypatch, no_long_work):
    """Another process holds ``--out`` (as a running job would): the command refuses in one line,
    exit 2, before any long work, and writes nothing into the holder's folder."""
    import os
    import subprocess
    import sys

    import hardened

    paths = _prepare(tmp_path, shared)
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(hardened.__file__))}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, paths["out"]], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = _files(tmp_path)
        result = runner.invoke(app, [a.format(**paths) for a in SEED_COMMANDS[name]])
        assert not isinstance(result.exception, LongWork), result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, result.output
        assert len(lines) == 1 and f"in use by another hardened run (process {holder.pid})" in lines[0], result.output
        assert _files(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
