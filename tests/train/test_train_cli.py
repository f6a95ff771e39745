"""``hardened train`` with methods and resume, ``evaluate --transfer-from``, ``defend-compare``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hardened.cli.main import app
from hardened.models import build_model, load_model, save_model
from hardened.train import CHECKPOINT_NAME

runner = CliRunner()
BASE = ["--data", "digits", "--arch", "mlp", "--eval-n", "50", "--lr", "3e-3", "--batch-size", "64"]


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def fails(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    return result.output


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("source") / "std.safetensors"
    invoke("train", *BASE, "--epochs", "2", "--out", str(path))
    return str(path)


def test_train_resumes_to_the_same_weights(tmp_path):
    whole = tmp_path / "whole.safetensors"
    method = ["--method", "pgd", "--eps", "0.15", "--steps", "1", "--step-size", "0.15"]
    invoke("train", *BASE, *method, "--epochs", "2", "--out", str(whole))
    part = tmp_path / "part.safetensors"
    invoke("train", *BASE, *method, "--epochs", "1", "--checkpoint-every", "5", "--out", str(part))
    output = invoke("train", *BASE, *method, "--epochs", "2", "--resume", "--out", str(part))
    assert "resumed from step 23" in output and "pgd acc" in output
    a, b = load_model(whole).model.state_dict(), load_model(part).model.state_dict()
    assert all((a[k] == b[k]).all() for k in a)
    lines = (tmp_path / "part.log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert (tmp_path / "part.checkpoints" / CHECKPOINT_NAME).exists()


def test_train_ensemble_and_semi_supervised(tmp_path, source):
    out = tmp_path / "ens.safetensors"
    invoke("train", *BASE, "--method", "ensemble", "--eps", "0.15", "--source-model", source,
           "--source-model", source, "--epochs", "1", "--out", str(out))
    counters = load_model(out).info.training["counters"]
    assert counters["source_0"] > 0 and counters["source_1"] > 0
    semi = tmp_path / "semi.safetensors"
    invoke("train", *BASE, "--method", "semi-supervised", "--eps", "0.15", "--steps", "2",
           "--unlabeled-fraction", "0.5", "--labeler", source, "--epochs", "1", "--out", str(semi))
    counters = load_model(semi).info.training["counters"]
    assert counters["pseudo_labelled"] == 719 and counters["pool_samples"] > 0
    rst = tmp_path / "rst.safetensors"
    invoke("train", *BASE, "--method", "rst", "--eps", "0.15", "--steps", "2", "--unlabeled-fraction", "0.5",
           "--labeler", source, "--robust-loss", "trades", "--beta", "3", "--labelled", "adversarial",
           "--epochs", "1", "--out", str(rst))
    params = load_model(rst).info.training["method"]
    assert (params["robust_loss"], params["beta"], params["labelled"]) == ("trades", 3.0, "adversarial")


def test_train_bad_settings_fail_with_a_message(tmp_path, source):
    out = str(tmp_path / "m.safetensors")
    assert "give --eps" in fails("train", *BASE, "--method", "pgd", "--out", out)
    assert "eps must be > 0" in fails("train", *BASE, "--method", "trades", "--eps", "0", "--out", out)
    assert "needs --unlabeled-fraction" in fails("train", *BASE, "--method", "semi-supervised",
                                                "--eps", "0.1", "--out", out)
    assert "larger than eps" in fails("train", *BASE, "--method", "pgd", "--eps", "0.1",
                                      "--step-size", "0.3", "--no-random-start", "--out", out)
    assert "at least one --source-model" in fails("train", *BASE, "--method", "ensemble",
                                                  "--eps", "0.1", "--out", out)
    assert "unknown training method" in fails("train", *BASE, "--method", "magic", "--out", out)
    assert "are for --method semi-supervised" in fails("train", *BASE, "--method", "pgd", "--eps", "0.1",
                                                       "--robust-loss", "trades", "--out", out)
    assert "are for --method fgsm" in fails("train", *BASE, "--method", "pgd", "--eps", "0.1",
                                            "--nfgsm-noise", "2", "--out", out)
    assert "N-FGSM noise" in fails("train", *BASE, "--method", "fgsm", "--eps", "0.1",
                                   "--nfgsm-noise", "-1", "--out", out)
    mnist_source = str(tmp_path / "mnist.safetensors")
    save_model(build_model("mlp", input_shape=(1, 28, 28)), mnist_source, arch="mlp",
               arch_kwargs={"input_shape": [1, 28, 28]})
    assert "cannot take images" in fails("train", *BASE, "--method", "ensemble", "--eps", "0.1",
                                         "--source-model", mnist_source, "--out", out)


def test_corrupt_checkpoint_is_reported(tmp_path):
    out = tmp_path / "m.safetensors"
    invoke("train", *BASE, "--epochs", "1", "--out", str(out))
    ckpt = tmp_path / "m.checkpoints" / CHECKPOINT_NAME
    raw = bytearray(ckpt.read_bytes())
    raw[-50] ^= 0x55
    ckpt.write_bytes(bytes(raw))
    output = fails("train", *BASE, "--epochs", "2", "--resume", "--out", str(out))
    assert "corrupt" in output and "DataError" in output


def test_evaluate_transfer_and_defend_compare(tmp_path, source):
    target = tmp_path / "t.safetensors"
    invoke("train", *BASE, "--epochs", "1", "--seed", "4", "--out", str(target))
    output = invoke("evaluate", "--model", str(target), "--data", "digits", "--transfer-from", source,
                    "--eps", "0,0.2", "--n", "100", "--steps", "5", "--out", str(tmp_path / "ev"))
    result = json.loads((tmp_path / "ev" / "transfer.json").read_text())
    assert result["kind"] == "transfer" and result["eps"] == [0.0, 0.2] and "transfer" in output
    assert result["source_accuracy"][1] < result["source_accuracy"][0]
    out_dir = tmp_path / "cmp"
    invoke("defend-compare", "--data", "digits", "--arch", "mlp", "--methods", "standard,fgsm,semi-supervised",
           "--eps", "0.15", "--epochs", "1", "--unlabeled-fraction", "0.5", "--n-test", "60",
           "--pgd-steps", "3", "--eval-n", "30", "--out", str(out_dir))
    report = json.loads((out_dir / "tradeoff.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["standard", "fgsm", "semi-supervised"]
    for row in report["rows"]:
        assert 0 <= row["robust_accuracy"] <= row["clean_accuracy"] <= 1
        assert 0 <= row["transfer_accuracy"] <= 1 and row["train_seconds"] > 0
    assert "| semi-supervised |" in (out_dir / "tradeoff.md").read_text()
    assert (out_dir / "tradeoff.png").stat().st_size > 1000


def test_train_fgsm_defaults_to_the_cyclic_schedule_and_takes_the_fast_options(tmp_path):
    out = tmp_path / "fast.safetensors"
    invoke("train", *BASE, "--method", "fgsm", "--eps", "0.15", "--nfgsm-noise", "2", "--grad-align", "0.2",
           "--guard", "lower", "--guard-gap", "0.5", "--epochs", "1", "--out", str(out))
    training = load_model(out).info.training
    assert training["config"]["lr_schedule"] == "cyclic"
    assert training["method"]["noise"] == 2.0 and training["method"]["grad_align"] == 0.2
    assert training["method"]["guard"]["action"] == "lower" and training["method"]["guard"]["gap"] == 0.5
    assert training["method"]["step_size"] == 0.15  # N-FGSM's step is eps
