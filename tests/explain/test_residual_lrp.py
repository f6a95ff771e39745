"""LRP on residual networks: the Add module's sum rule against a literal float64 formula,
relevance conservation on the zoo's ResNets, BatchNorm folding inside blocks, and the model's
output unchanged after the explanation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hardened.explain import explain_images
from hardened.explain.attribute import conservation_error, lrp
from hardened.explain.canonizers import fold_pairs
from hardened.explain.composites import make_composite
from hardened.models import resnet18, resnet_small
from hardened.models.zoo import Add

EPS = 1e-9


class TinyResidual(nn.Module):
    """x -> h = relu(W1 x) -> r = relu(W2 h + h) -> W3 r, without biases."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.relu1 = nn.Linear(4, 5, bias=False), nn.ReLU()
        self.fc2, self.add, self.relu2 = nn.Linear(5, 5, bias=False), Add(), nn.ReLU()
        self.fc3 = nn.Linear(5, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.fc1(x))
        return self.fc3(self.relu2(self.add(self.fc2(h), h)))


def _stab(z: torch.Tensor) -> torch.Tensor:
    return z + EPS * torch.where(z >= 0, 1.0, -1.0).to(z)


def _literal_lrp(model: TinyResidual, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LRP-epsilon written out by hand for one image at a time (float64)."""
    out = []
    w1, w2, w3 = model.fc1.weight, model.fc2.weight, model.fc3.weight
    for xi, t in zip(x, target, strict=True):
        a1 = w1 @ xi
        h = a1.clamp(min=0)
        u = w2 @ h
        r = (u + h).clamp(min=0)
        z3 = w3 @ r
        relevance_out = torch.zeros(3, dtype=x.dtype)
        relevance_out[t] = z3[t]
        r_r = torch.stack([sum(r[j] * w3[k, j] / _stab(z3[k]) * relevance_out[k] for k in range(3)) for j in range(5)])
        z_sum = u + h
        r_u = u / _stab(z_sum) * r_r  # the sum rule: each summand's share
        r_skip = h / _stab(z_sum) * r_r
        r_branch = torch.stack([sum(h[j] * w2[k, j] / _stab(u[k]) * r_u[k] for k in range(5)) for j in range(5)])
        r_h = r_branch + r_skip
        out.append(torch.stack([sum(xi[i] * w1[k, i] / _stab(a1[k]) * r_h[k] for k in range(5)) for i in range(4)]))
    return torch.stack(out)


@pytest.mark.parametrize("seed", range(4))
def test_sum_rule_matches_the_literal_formula_in_float64(seed):
    torch.manual_seed(seed)
    model = TinyResidual().double().eval()
    x = torch.randn(6, 4, dtype=torch.float64)
    target = torch.randint(0, 3, (6,))
    logits, relevance = lrp(model, x, target, make_composite("epsilon", epsilon=EPS))
    expected = _literal_lrp(model, x, target)
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12)
    chosen = logits.gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(relevance.sum(dim=1), chosen, rtol=1e-6, atol=1e-9)  # conserved


def test_without_the_sum_rule_relevance_would_not_be_conserved():
    """The gradient alone copies the sum's relevance to both summands: the check can fail."""
    torch.manual_seed(0)
    model = TinyResidual().double().eval()
    x = torch.randn(6, 4, dtype=torch.float64).abs()
    target = torch.zeros(6, dtype=torch.long)
    copy_rule = make_composite("epsilon", epsilon=EPS)

    class CopyBoth:  # the gradient's behaviour at a sum
        def backward(self, inputs, z, relevance):
            return tuple(relevance for _ in inputs)

    object.__setattr__(copy_rule, "sum_rule", CopyBoth())
    logits, relevance = lrp(model, x, target, copy_rule)
    chosen = logits[:, 0]
    assert (relevance.sum(dim=1) - chosen).abs().max() > 1e-3 * chosen.abs().max()


def _zoo(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = resnet_small(width=8) if name == "resnet_small" else resnet18(width=8)
    with torch.no_grad():
        model.fc.bias.zero_()  # with BatchNorm at its initial statistics the net is bias-free
    return model.eval()


@pytest.mark.parametrize("name", ["resnet_small", "resnet18"])
def test_lrp_conserves_relevance_on_the_zoo_resnets(name):
    model = _zoo(name)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    attribution = explain_images(model, x, method="lrp", composite=make_composite("epsilon", epsilon=1e-9))
    # relative error; measured 1.4e-7 (resnet_small) and 3.8e-7 (resnet18): float32 rounding.
    # (At epsilon 1e-6 the stabiliser itself absorbs 1.5e-4 and 3.8e-4 of these small logits.)
    assert float(conservation_error(attribution).max()) < 1e-5
    assert attribution.relevance.shape == x.shape


@pytest.mark.parametrize("name", ["resnet_small", "resnet18"])
def test_every_batchnorm_in_the_blocks_is_folded_and_the_model_is_unchanged_after(name):
    model = _zoo(name)
    with torch.no_grad():  # statistics away from the identity, so folding changes weights
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    batchnorms = {m for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {bn for _, bn in fold_pairs(model)} == batchnorms
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    composite = make_composite("epsilon-gamma-box")
    with composite.context(model), torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)  # folding preserves f
    attribution = explain_images(model, x, method="lrp")
    assert torch.isfinite(attribution.relevance).all()
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
