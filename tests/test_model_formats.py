"""ONNX (both backends) and torch.export (.pt2) round trips of the zoo's lenet: same logits to
1e-5, an attack runs on each, and every unreadable file is a ModelLoadError."""

from __future__ import annotations

import importlib.util
import sys
import warnings

import pytest
import torch

from hardened.attacks import make_attack
from hardened.errors import ConfigError, HardenedWarning, InputError, ModelLoadError
from hardened.explain import explain_images
from hardened.models import lenet, load_model
from hardened.models.onnx import OnnxRuntimeModel

needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason='the ONNX extra is not installed (pip install "hardened[onnx]")',
)
needs_onnx2torch = pytest.mark.skipif(
    importlib.util.find_spec("onnx2torch") is None, reason="onnx2torch is not installed"
)


def _lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return lenet().eval()


def _export_onnx(model: torch.nn.Module, path) -> None:
    x = torch.rand(2, 1, 28, 28)
    # opset 17: onnx2torch 1.5 has no converters for some ops of newer opsets (Identity-19)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter's notice
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})


def _check_same_and_attackable(model, reference: torch.nn.Module, attack_name: str) -> None:
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)
    y = reference(x).argmax(1)
    attack = make_attack(attack_name, norm="linf", eps=0.3, **({"steps": 5} if attack_name == "pgd" else
                                                              {"queries": 40, "seed": 0}))
    result = attack(model, x, y)
    assert result.x_adv.shape == x.shape
    assert (result.x_adv - x).abs().max() <= 0.3 + 1e-6


@needs_onnx
def test_onnxruntime_backend_matches_and_runs_a_score_attack(tmp_path) -> None:
    reference = _lenet()
    _export_onnx(reference, tmp_path / "lenet.onnx")
    loaded = load_model(tmp_path / "lenet.onnx", backend="onnxruntime")
    assert isinstance(loaded.model, OnnxRuntimeModel)
    _check_same_and_attackable(loaded.model, reference, "square")
    with pytest.raises(ConfigError, match="needs gradients"):
        make_attack("pgd", norm="linf", eps=0.1, steps=2)(loaded.model, torch.rand(2, 1, 28, 28), torch.zeros(2).long())
    with pytest.raises(InputError, match="N×C×H×W"):
        loaded.model(torch.rand(1, 28, 28))


@needs_onnx
@needs_onnx2torch
def test_onnx2torch_backend_matches_and_runs_a_gradient_attack(tmp_path, torchvision_free) -> None:
    reference = _lenet()
    _export_onnx(reference, tmp_path / "lenet.onnx")
    loaded = load_model(tmp_path / "lenet.onnx")
    assert isinstance(loaded.model, torch.nn.Module)
    _check_same_and_attackable(loaded.model, reference, "pgd")


def test_export_program_is_refused_without_trust_then_matches(tmp_path) -> None:
    reference = _lenet()
    x = torch.rand(2, 1, 28, 28)
    program = torch.export.export(reference, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "lenet.pt2"))
    with pytest.raises(ModelLoadError, match="unpickles"):
        load_model(tmp_path / "lenet.pt2")
    loaded = load_model(tmp_path / "lenet.pt2", trust_pickle=True)
    loaded.model.eval()  # the exported graph itself refuses eval(); the wrapper must not
    _check_same_and_attackable(loaded.model, reference, "pgd")
    with pytest.warns(HardenedWarning, match="torch.export program"):
        attribution = explain_images(loaded.model, x, method="lrp", fallback="gradient")
    assert attribution.method == "gradient" and torch.isfinite(attribution.relevance).all()


def test_export_program_with_a_fixed_batch_says_how_to_export(tmp_path) -> None:
    program = torch.export.export(_lenet(), (torch.rand(2, 1, 28, 28),))
    torch.export.save(program, str(tmp_path / "fixed.pt2"))
    model = load_model(tmp_path / "fixed.pt2", trust_pickle=True).model
    with pytest.raises(InputError, match="dynamic batch"):
        model(torch.rand(3, 1, 28, 28))


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_unreadable_files_are_model_load_errors(tmp_path, suffix) -> None:
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(b"not a model at all")
    backends = ["onnxruntime", "torch"] if suffix == ".onnx" else ["torch"]
    for backend in backends:
        with pytest.raises(ModelLoadError):
            load_model(bad, backend=backend, trust_pickle=True)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / f"missing{suffix}", trust_pickle=True)


def test_backend_is_checked(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="ONNX files only"):
        load_model(tmp_path / "m.pt", backend="onnxruntime")
    with pytest.raises(ModelLoadError, match="unknown backend"):
        load_model(tmp_path / "m.onnx", backend="tensorrt")


def test_missing_extra_names_it(tmp_path, monkeypatch) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ModelLoadError, match=r'pip install "hardened\[onnx\]"'):
        load_model(tmp_path / "m.onnx", backend="onnxruntime")


@needs_onnx
def test_cli_attacks_an_onnx_model_outputs_only_and_refuses_gradient_attacks(tmp_path) -> None:
    from typer.testing import CliRunner

    from hardened.cli.main import app

    _export_onnx(_lenet(), tmp_path / "lenet.onnx")
    runner = CliRunner()
    base = ["attack", "--model", str(tmp_path / "lenet.onnx"), "--backend", "onnxruntime", "--n", "6",
            "--data", "mnist-5k", "--device", "cpu"]
    ok = runner.invoke(app, [*base, "--attack", "square", "--out", str(tmp_path / "sq")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "sq" / "summary.json").is_file()
    refused = runner.invoke(app, [*base, "--attack", "pgd", "--out", str(tmp_path / "pgd")])
    assert refused.exit_code == 2 and "needs gradients" in refused.output
    assert "Traceback" not in refused.output
