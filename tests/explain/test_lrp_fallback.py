"""Where LRP cannot apply (TorchScript, unknown layers, outputs-only models) explain falls back
to a gradient method with a message, or says why not: never a crash."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from hardened.cli.main import app
from hardened.errors import ConfigError, HardenedWarning
from hardened.explain import explain_images
from hardened.explain.attribute import lrp_unsupported
from hardened.explain.gradients import gradient_x_input
from hardened.models import lenet, resnet_small


def _scripted() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    return torch.jit.trace(lenet(input_shape=(1, 8, 8)).eval(), torch.rand(1, 1, 8, 8))


def test_zoo_models_support_lrp_and_torchscript_does_not():
    assert lrp_unsupported(lenet()) is None and lrp_unsupported(resnet_small()) is None
    assert "TorchScript" in lrp_unsupported(_scripted())
    assert "no LRP rule" in lrp_unsupported(nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.GELU()))
    assert "outputs-only" in lrp_unsupported(lambda x: x.flatten(1))


def test_torchscript_falls_back_to_the_gradient_method_it_names():
    model, x = _scripted(), torch.rand(3, 1, 8, 8)
    with pytest.raises(ConfigError, match="TorchScript.*fallback"):
        explain_images(model, x, method="lrp")
    with pytest.warns(HardenedWarning, match="using gradient-x-input"):
        attribution = explain_images(model, x, method="lrp", fallback="gradient-x-input")
    assert attribution.method == "gradient-x-input" and attribution.params["fallback_from"] == "lrp"
    _, expected = gradient_x_input(model, x, attribution.target)
    torch.testing.assert_close(attribution.relevance, expected)


def test_an_outputs_only_model_is_refused_with_the_way_out():
    with pytest.raises(ConfigError, match="outputs-only.*--backend torch"):
        explain_images(lambda x: x.flatten(1)[:, :3], torch.rand(2, 1, 8, 8), method="gradient")


def test_cli_explains_a_torchscript_file_with_a_note(tmp_path):
    path = tmp_path / "lenet.pt"
    _scripted().save(str(path))
    result = CliRunner().invoke(app, ["explain", "--model", str(path), "--data", "digits", "--index", "0,1",
                                      "--quality", "4", "--out", str(tmp_path / "ex"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "LRP cannot explain this model" in result.output and "gradient-x-input" in result.output
    assert (tmp_path / "ex" / "heatmap_0.png").is_file() and (tmp_path / "ex" / "deletion.png").is_file()
