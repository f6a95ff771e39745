"""``hardened audit`` exit codes: 0 when every section is measured, 3 when one is skipped or failed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hardened.audit import Stage, StageSkipped
from hardened.audit import stage as stage_module
from hardened.audit.stages.clean import CleanStage
from hardened.cli.main import app
from hardened.registry import Registry

runner = CliRunner()


class Broken(Stage):
    name, title, position = "broken", "Broken stage", 15

    def run(self, ctx):
        raise RuntimeError("boom")


class NotApplicable(Stage):
    name, title, position = "na", "Inapplicable stage", 16

    def run(self, ctx):
        raise StageSkipped("this model has nothing to measure here")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-audit") / "m.safetensors"
    result = runner.invoke(app, ["train", "--data", "digits", "--arch", "mlp", "--epochs", "1", "--out", str(path),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return path


def _only(monkeypatch, *extra):
    """Audit with the clean stage and ``extra`` only (a fresh registry, restored afterwards)."""
    fresh = Registry("audit stage", base=Stage, capabilities=stage_module.AUDIT_STAGES.capabilities)
    for stage in (CleanStage, *extra):
        fresh.register(stage.name)(stage)
    monkeypatch.setattr(stage_module, "AUDIT_STAGES", fresh)


@pytest.mark.parametrize(("extra", "code", "status"), [((), 0, None), ((Broken,), 3, "failed"),
                                                       ((NotApplicable,), 3, "skipped")])
def test_exit_code_says_whether_every_section_was_measured(model_file, tmp_path, monkeypatch, extra, code, status):
    _only(monkeypatch, *extra)
    out = tmp_path / "report"
    result = runner.invoke(app, ["audit", "--model", str(model_file), "--data", "digits", "--out", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == code, result.output
    stages = {s["name"]: s for s in json.loads((out / "audit.json").read_text())["stages"]}
    assert stages["clean"]["status"] == "ok"
    if status is not None:
        assert status in result.output and extra[0].title in result.output
        assert stages[extra[0].name]["status"] == status
        assert (stages[extra[0].name]["traceback"] is not None) == (status == "failed")


def test_an_onnx_model_is_audited_outputs_only_with_backend_onnxruntime(model_file, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import warnings

    import torch

    from hardened.models import load_model

    model = load_model(model_file).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.rand(2, 1, 8, 8),), str(tmp_path / "m.onnx"), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    _only(monkeypatch)
    out = tmp_path / "report"
    result = runner.invoke(app, ["audit", "--model", str(tmp_path / "m.onnx"), "--backend", "onnxruntime",
                                 "--data", "digits", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "audit.json").read_text())
    assert stored["access"]["kind"] == "outputs-only" and stored["queries"] > 0
    assert "images sent to the model" in result.output


@pytest.mark.parametrize(("extra", "message"), [
    (["--backend", "onnxruntime"], "runs ONNX files only"),
    (["--surrogate", "other.safetensors"], "for outputs-only audits"),
    (["--target-url", "http://127.0.0.1:9"], "not both"),
])
def test_format_options_that_do_not_apply_are_one_line_errors(model_file, tmp_path, extra, message):
    result = runner.invoke(app, ["audit", "--model", str(model_file), "--data", "digits", "--out",
                                 str(tmp_path / "report"), "--device", "cpu", *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
