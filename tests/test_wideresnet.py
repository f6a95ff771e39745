"""WideResNet: the published parameter count, RobustBench's state-dict layout, loading a user's
weights (and the message when they do not fit), LRP through it (conservation, the pre-activation
BatchNorm's Epsilon rule against a literal float64 formula, the model unchanged after)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from hardened.errors import ConfigError, ModelLoadError
from hardened.explain import explain_images
from hardened.explain.attribute import conservation_error, lrp, lrp_unsupported
from hardened.explain.canonizers import fold_pairs
from hardened.explain.composites import make_composite
from hardened.models import build_model, load_model, save_model
from hardened.models.schema import check_arch_kwargs

FACTORY = "hardened.models.zoo:wrn_16_2"


def _meta_count(arch: str, **kwargs) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(arch, **kwargs).parameters())


def test_wrn_28_10_has_the_published_parameter_count():
    # Zagoruyko & Komodakis 2016, table: WRN-28-10 on CIFAR-10, 36.5M parameters
    assert _meta_count("wrn-28-10") == 36_479_194
    assert _meta_count("wrn", depth=28, width=10) == 36_479_194
    assert _meta_count("wrn-16-2") == _meta_count("wrn", depth=16, width=2)


def test_the_state_dict_has_robustbenchs_names_and_no_normalisation_buffers():
    keys = list(build_model("wrn-16-2").state_dict())
    assert keys[0] == "conv1.weight"
    for key in ("block1.layer.0.bn1.running_mean", "block1.layer.1.conv2.weight", "block2.layer.0.convShortcut.weight",
                "block3.layer.1.bn2.weight", "bn1.weight", "fc.weight", "fc.bias"):
        assert key in keys
    assert "block1.layer.0.convShortcut.weight" in keys  # 16 -> 32 channels: a 1×1 shortcut
    assert "block1.layer.1.convShortcut.weight" not in keys
    assert not [k for k in keys if k.startswith("normalize")]


@pytest.mark.parametrize("depth", [9, 12, 15, 30])
def test_a_depth_that_is_not_6n_plus_4_is_refused(depth):
    with pytest.raises(ConfigError, match="depth"):
        check_arch_kwargs("wrn", {"depth": depth})


def test_any_input_size_reaches_the_logits():
    model = build_model("wrn", depth=10, width=1, num_classes=7, input_shape=[3, 48, 40]).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 48, 40)).shape == (2, 7)


def test_a_users_safetensors_weights_load_through_the_factory(tmp_path):
    torch.manual_seed(0)
    source = build_model("wrn-16-2").eval()
    path = tmp_path / "robust.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = load_model(FACTORY, path).model
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_a_zoo_name_with_weights_loads_them_and_without_weights_says_what_to_give(tmp_path):
    torch.manual_seed(1)
    source = build_model("wrn-16-2").eval()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = load_model("wrn-16-2", path)
    assert loaded.info.arch == "wrn_16_2"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), source(x))
    with pytest.raises(ModelLoadError, match="--weights"):
        load_model("wrn-28-10")


def test_resnet18_with_the_imagenet_stem_has_torchvisions_parameter_count():
    # torchvision's resnet18 (1000 classes): 11,689,512 parameters; the CIFAR stem's 3×3 conv
    # has 9,408 - 1,728 fewer
    assert _meta_count("resnet18", stem="imagenet", num_classes=1000) == 11_689_512
    assert _meta_count("resnet18", num_classes=1000) == 11_689_512 - 9_408 + 1_728
    with pytest.raises(ConfigError, match="stem"):
        check_arch_kwargs("resnet18", {"stem": "vgg"})
    model = build_model("resnet18", stem="imagenet", width=4, input_shape=[3, 224, 224]).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 10)


def test_mismatching_weights_name_the_first_keys(tmp_path):
    state = build_model("wrn", depth=16, width=4).state_dict()  # wider than wrn-16-2
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ModelLoadError) as info:
        load_model(FACTORY, path)
    message = str(info.value)
    assert "1 missing keys (fc.bias)" in message and "1 unexpected keys (extra.weight)" in message
    assert "shape mismatches (block1.layer.0.bn1" not in message  # 16 input channels at both widths
    assert "block1.layer.0.bn2.bias 64 in the file vs 32" in message and "and " in message


def test_a_trained_wrn_round_trips_through_the_sidecar_with_its_statistics(tmp_path):
    kwargs = {"depth": 10, "width": 1, "num_classes": 3, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    torch.manual_seed(0)
    model = build_model("wrn", **kwargs).eval()
    path = save_model(model, tmp_path / "w.safetensors", arch="wrn", arch_kwargs=kwargs)
    loaded = load_model(path).model
    assert loaded.normalize.mean.flatten().tolist() == pytest.approx([0.4, 0.5, 0.6])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _tiny_wrn(shift: bool) -> nn.Module:
    """WRN-10-1 with BatchNorm statistics away from the identity; ``shift=False`` keeps every
    BatchNorm a pure scaling (mean 0, beta 0) and the network bias-free, so LRP must conserve."""
    torch.manual_seed(0)
    model = build_model("wrn", depth=10, width=1).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                if shift:
                    module.running_mean.uniform_(-0.3, 0.3)
                    module.bias.uniform_(-0.2, 0.2)
        model.fc.bias.zero_()
    return model


def test_lrp_conserves_relevance_through_a_bias_free_wrn():
    model = _tiny_wrn(shift=False)
    assert lrp_unsupported(model) is None
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    attribution = explain_images(model, x, method="lrp", composite=make_composite("epsilon", epsilon=1e-9))
    # relative error; measured 3.4e-7 to 3.9e-7 on WRN-16-2: float32 rounding
    assert float(conservation_error(attribution).max()) < 1e-5


def test_with_shifts_the_batchnorm_rule_absorbs_relevance_so_the_check_can_fail():
    model = _tiny_wrn(shift=True)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    attribution = explain_images(model, x, method="lrp", composite=make_composite("epsilon", epsilon=1e-9))
    assert float(conservation_error(attribution).max()) > 1e-3


def test_only_the_conv1_bn2_pairs_fold_and_the_model_is_unchanged_after():
    model = _tiny_wrn(shift=True)
    blocks = [m for m in model.modules() if hasattr(m, "equal_in_out")]
    assert {bn for _, bn in fold_pairs(model)} == {b.bn2 for b in blocks}
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(x)
    with make_composite("epsilon-gamma-box").context(model), torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)  # folding preserves f
    attribution = explain_images(model, x, method="lrp")
    assert torch.isfinite(attribution.relevance).all()
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


class _PreActivation(nn.Module):
    """x -> BN -> ReLU -> Linear: a BatchNorm with nothing before it to fold into."""

    def __init__(self) -> None:
        super().__init__()
        self.bn, self.relu, self.fc = nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.bn(x)))


@pytest.mark.parametrize("seed", range(3))
def test_the_batchnorm_epsilon_rule_matches_the_literal_formula_in_float64(seed):
    torch.manual_seed(seed)
    model = _PreActivation().double().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(-1.5, 1.5)
        model.bn.bias.uniform_(-0.3, 0.3)
    x = torch.randn(4, 5, dtype=torch.float64)
    target = torch.randint(0, 3, (4,))
    eps = 1e-9
    _, relevance = lrp(model, x, target, make_composite("epsilon", epsilon=eps))
    bn, w = model.bn, model.fc.weight
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    expected = []
    for xi, t in zip(x, target, strict=True):
        z1 = scale * xi + shift
        h = z1.clamp(min=0)
        z2 = w @ h
        r_out = torch.zeros(3, dtype=x.dtype)
        r_out[t] = z2[t]
        stab = lambda z: z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)  # noqa: E731
        r_h = torch.stack([sum(h[j] * w[k, j] / stab(z2[k]) * r_out[k] for k in range(3)) for j in range(5)])
        expected.append(xi * scale / stab(z1) * r_h)  # R_j = a_j s_j / z_j R_j, element-wise
    torch.testing.assert_close(relevance, torch.stack(expected), rtol=1e-9, atol=1e-12)
