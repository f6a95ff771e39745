"""Every audit section on every model format: a TorchScript module (gradients, no LRP, no hooks),
an ONNX file through onnx2torch (white-box) and through onnxruntime (outputs only), and a plain
function. Each section is measured or substituted, and says with what and why."""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest
import torch

from hardened.audit import run_audit
from hardened.audit.access import audited_model, model_access, model_fingerprint
from hardened.errors import ConfigError
from hardened.models import OutputsOnly, load_model
from hardened.models.blackbox import CallableTarget
from helpers import TINY_BUDGET, tiny_audit_splits, tiny_cnn

STAGES = ("clean", "robustness", "minimal", "spatial", "explain_attacks", "gallery", "certify", "guard", "sanity")
needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason='the ONNX extra is not installed (pip install "hardened[onnx]")',
)
needs_onnx2torch = pytest.mark.skipif(importlib.util.find_spec("onnx2torch") is None,
                                      reason="onnx2torch is not installed")


def _export(model: torch.nn.Module, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.rand(2, 1, 8, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})


def _audit(model, folder, **options):
    return run_audit(model, tiny_audit_splits(), out_dir=folder, budget=TINY_BUDGET, seed=3, **options)


def _untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if "second" not in k}


def _by_name(result) -> dict:
    assert tuple(s.name for s in result.stages) == STAGES
    return {s.name: s for s in result.stages}


@pytest.fixture(scope="module")
def scripted_audit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("script") / "report"
    return _audit(torch.jit.script(tiny_cnn(seed=5)), folder), folder


def test_a_torchscript_audit_measures_every_section_and_says_what_it_substituted(scripted_audit, tiny_audit):
    result, folder = scripted_audit
    stages = _by_name(result)
    assert all(s.status == "ok" for s in stages.values()), {s.name: s.message for s in stages.values()}
    assert result.access["kind"] == "torchscript" and "TorchScript" in result.access["lrp"]
    guided = stages["explain_attacks"]
    assert any(n.startswith("LRP not applicable: a TorchScript module") and "gradient explanations used" in n
               for n in guided.notes)
    labels = [run["label"] for run in guided.data["comparison"]["runs"]]
    assert "I-FGSM" in labels and "saliency-grad" in labels and not any(lb.startswith("LRP-") for lb in labels)
    assert guided.summary.guided == "saliency-grad"
    assert stages["gallery"].data["explanation"] == "gradient-x-input"
    assert any("gradient explanations used" in n for n in stages["gallery"].notes)
    assert "skipped" in stages["certify"].data["ibp"] and stages["certify"].data["smoothing"]["num_samples"] > 0
    assert "mahalanobis" in stages["guard"].data["left_out"]
    assert set(stages["guard"].data["evaluations"]) == {"softmax", "energy", "vae"}
    # the same weights, scripted: the measurements that need no LRP or hooks agree with the module's
    module = {s.name: s for s in tiny_audit[0].stages}
    assert stages["clean"].data["accuracy"] == module["clean"].data["accuracy"]
    assert _untimed(stages["certify"].data["smoothing"]) == _untimed(module["certify"].data["smoothing"])
    html = (folder / "index.html").read_text()
    assert "LRP not applicable" in html and "access torchscript" in html


@needs_onnx
def test_an_onnx_model_audited_outputs_only_has_every_section_and_counts_its_queries(tmp_path, tiny_audit):
    _export(tiny_cnn(seed=5), tmp_path / "m.onnx")
    model = load_model(tmp_path / "m.onnx", backend="onnxruntime").model
    result = _audit(model, tmp_path / "report")
    stages = _by_name(result)
    status = {n: s.status for n, s in stages.items()}
    assert status == dict.fromkeys(STAGES, "ok") | {"explain_attacks": "skipped", "minimal": "skipped"}, status
    assert "no gradients" in stages["explain_attacks"].message or "not gradients" in stages["explain_attacks"].message
    module = {s.name: s for s in tiny_audit[0].stages}
    assert stages["clean"].data["accuracy"] == module["clean"].data["accuracy"]
    assert stages["certify"].data["smoothing"]["correct_certified"] == module["certify"].data["smoothing"]["correct_certified"]
    robustness = stages["robustness"]
    assert robustness.data["outputs_only"] and robustness.data["members"] == ["square(queries=300)"]
    assert [m["name"] for m in robustness.data["masking"]] == ["randomness", "probabilities"]
    assert any("Gradient attacks (FGSM, APGD)" in n for n in robustness.notes)
    assert stages["gallery"].data["attack"] == "square" and stages["gallery"].data["explanation"] is None
    assert "mahalanobis" in stages["guard"].data["left_out"]
    assert [a["attack"] for a in stages["guard"].data["adaptive_attack"]["attacks"]] == ["square"]
    assert not stages["sanity"].summary.gradient_checks
    # every image sent is counted, per section and in all (the fingerprint's probe images too)
    per_stage = [s.data["queries"] for s in result.stages]
    assert all(q > 0 for n, q in zip(STAGES, per_stage, strict=True) if n not in ("explain_attacks", "sanity", "minimal"))
    assert result.queries == model.queries == sum(per_stage) + 8
    stored = json.loads((tmp_path / "report" / "audit.json").read_text())
    assert stored["queries"] == result.queries and stored["access"]["kind"] == "outputs-only"


@needs_onnx
@needs_onnx2torch
def test_an_onnx_model_through_onnx2torch_is_audited_white_box(tmp_path, tiny_audit, torchvision_free):
    _export(tiny_cnn(seed=5), tmp_path / "m.onnx")
    model = load_model(tmp_path / "m.onnx", backend="torch").model
    stages = _by_name(_audit(model, tmp_path / "report"))
    assert all(s.status == "ok" for s in stages.values()), {s.name: s.message for s in stages.values()}
    module = {s.name: s for s in tiny_audit[0].stages}
    assert stages["clean"].data["accuracy"] == module["clean"].data["accuracy"]
    assert stages["robustness"].data.get("outputs_only") is None


def test_a_transfer_surrogate_joins_the_worst_case_and_never_raises_robust_accuracy(tmp_path):
    model = tiny_cnn(seed=5)
    target = CallableTarget(lambda x: model(x))
    result = _audit(target, tmp_path / "report", surrogate=tiny_cnn(seed=5))
    robustness = result.stage("robustness")
    sweeps = {(s["norm"], s["attack"]): s["robust_accuracy"] for s in robustness.data["sweeps"]}
    for norm in ("linf", "l2"):
        square = next(v for (n, a), v in sweeps.items() if n == norm and a.startswith("cascade"))
        transfer = sweeps[(norm, "transfer:mifgsm")]
        worst = sweeps[(norm, "worst case")]
        assert all(w <= min(s, t) + 1e-12 for w, s, t in zip(worst, square, transfer, strict=True))
        assert worst[0] == square[0] == transfer[0]  # eps 0: the clean accuracy
    # the surrogate is the model itself: its white-box MI-FGSM examples fool it at the largest eps
    assert sweeps[("linf", "transfer:mifgsm")][-1] < sweeps[("linf", "transfer:mifgsm")][0]


def test_access_and_fingerprint():
    model = tiny_cnn(seed=5)
    wrapped = audited_model(lambda x: model(x), num_classes=3, source="fn")
    assert isinstance(wrapped, OutputsOnly) and model_access(wrapped).outputs_only
    assert model_access(model).kind == "module" and model_access(model).lrp is None
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert model_fingerprint(wrapped, x) == model_fingerprint(audited_model(lambda x: model(x), source="fn"), x)
    other = tiny_cnn(seed=6)
    assert model_fingerprint(wrapped, x) != model_fingerprint(audited_model(lambda x: other(x), source="fn"), x)
    with pytest.raises(ConfigError, match="outputs-only model"):
        wrapped(x.requires_grad_(True))
