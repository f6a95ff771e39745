"""Each LRP rule against a slow, literal float64 formula (dense loops over j and k)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from hardened.explain import AlphaBeta, Composite, Epsilon, Gamma, ZBox, ZPlus, explain_images

EPS = 1e-6


def stab(z: float, eps: float = EPS) -> float:
    return z + eps * (1.0 if z >= 0 else -1.0)


def literal(rule: object, a: Tensor, w: Tensor, b: Tensor, r: Tensor, low=None, high=None) -> Tensor:
    """R_j for a dense layer z_k = sum_j a_j w_kj + b_k, written out element by element."""
    J, K = a.numel(), r.numel()
    out = torch.zeros(J, dtype=torch.float64)
    a, w, b, r = a.double(), w.double(), b.double(), r.double()
    for k in range(K):
        if isinstance(rule, Epsilon):
            contrib = [a[j] * w[k, j] for j in range(J)]
            z = sum(contrib) + b[k]
            for j in range(J):
                out[j] += contrib[j] / stab(float(z), rule.epsilon) * r[k]
        elif isinstance(rule, Gamma):
            g = rule.gamma
            contrib = [a[j] * (w[k, j] + g * max(float(w[k, j]), 0.0)) for j in range(J)]
            z = sum(contrib) + b[k] + g * max(float(b[k]), 0.0)
            for j in range(J):
                out[j] += contrib[j] / stab(float(z)) * r[k]
        elif isinstance(rule, (AlphaBeta, ZPlus)):
            alpha, beta, use_bias = (
                (rule.alpha, rule.beta, rule.bias) if isinstance(rule, AlphaBeta) else (1.0, 0.0, False)
            )
            pos = [max(float(a[j] * w[k, j]), 0.0) for j in range(J)]
            neg = [min(float(a[j] * w[k, j]), 0.0) for j in range(J)]
            zp = sum(pos) + (max(float(b[k]), 0.0) if use_bias else 0.0)
            zn = sum(neg) + (min(float(b[k]), 0.0) if use_bias else 0.0)
            for j in range(J):
                out[j] += (alpha * pos[j] / stab(zp) - beta * neg[j] / stab(zn)) * r[k]
        elif isinstance(rule, ZBox):
            contrib = [
                a[j] * w[k, j] - low[j] * max(float(w[k, j]), 0.0) - high[j] * min(float(w[k, j]), 0.0)
                for j in range(J)
            ]
            z = sum(contrib)
            for j in range(J):
                out[j] += contrib[j] / stab(float(z)) * r[k]
    return out


def dense_matrix(conv: nn.Conv2d, shape: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """The conv layer as a dense matrix (out×in) and bias vector, via basis images."""
    n_in = shape[0] * shape[1] * shape[2]
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *shape)
    with torch.no_grad():
        cols = conv._conv_forward(basis, conv.weight, None).reshape(n_in, -1)
        bias_map = conv(torch.zeros(1, *shape, dtype=torch.float64)).reshape(-1)
    return cols.T.contiguous(), bias_map


RULES = [
    Epsilon(EPS),
    Epsilon(0.25),
    Gamma(0.25, epsilon=EPS),
    AlphaBeta(2.0, 1.0, epsilon=EPS),
    AlphaBeta(1.0, 0.0, epsilon=EPS),
    ZPlus(epsilon=EPS),
]


def single_layer_relevance(layer: nn.Module, rule, x: Tensor, target: int) -> Tensor:
    model = nn.Sequential(layer, nn.Flatten()).double().eval() if not isinstance(layer, nn.Linear) else nn.Sequential(nn.Flatten(), layer).double().eval()
    composite = Composite("test", [((type(layer),), rule)], canonizers=())
    return explain_images(model, x, target, composite=composite).relevance


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_dense_rule_matches_literal_formula(rule) -> None:
    torch.manual_seed(1)
    layer = nn.Linear(6, 4).double()
    x = torch.rand(1, 1, 1, 6, dtype=torch.float64)
    relevance = single_layer_relevance(layer, rule, x, target=2)
    z = layer(x.reshape(1, 6)).detach()[0]
    r = torch.zeros(4, dtype=torch.float64)
    r[2] = z[2]
    expected = literal(rule, x.reshape(-1), layer.weight.detach(), layer.bias.detach(), r)
    torch.testing.assert_close(relevance.reshape(-1), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_conv_rule_matches_literal_formula(rule) -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    shape = (2, 4, 4)
    # signed inputs exercise the a^- terms of the alpha-beta and z+ rules
    x = torch.rand(1, *shape, dtype=torch.float64)
    relevance = single_layer_relevance(conv, rule, x, target=17)
    w, b = dense_matrix(conv, shape)
    z = (w @ x.reshape(-1) + b).detach()
    r = torch.zeros_like(z)
    r[17] = z[17]
    expected = literal(rule, x.reshape(-1), w, b, r)
    torch.testing.assert_close(relevance.reshape(-1), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_zbox_rule_matches_literal_formula(kind: str) -> None:
    torch.manual_seed(3)
    low, high = -0.5, 2.0
    rule = ZBox(low=low, high=high, epsilon=EPS)
    if kind == "dense":
        layer: nn.Module = nn.Linear(5, 3).double()
        x = torch.rand(1, 1, 1, 5, dtype=torch.float64)
        w, b, target = layer.weight.detach(), layer.bias.detach(), 1
    else:
        layer = nn.Conv2d(1, 2, 3, padding=1).double()
        x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
        w, b = dense_matrix(layer, (1, 4, 4))
        target = 9
    relevance = single_layer_relevance(layer, rule, x, target)
    z = w @ x.reshape(-1) + b
    r = torch.zeros_like(z)
    r[target] = z[target]
    n = x.numel()
    expected = literal(rule, x.reshape(-1), w, b, r, [low] * n, [high] * n)
    torch.testing.assert_close(relevance.reshape(-1), expected, rtol=1e-9, atol=1e-10)


def test_signed_inputs_alpha_beta_matches_literal() -> None:
    """A hidden layer that sees negative inputs (no ReLU before it) uses all four sign terms."""
    torch.manual_seed(4)
    layer = nn.Linear(6, 3).double()
    a = torch.randn(1, 6, dtype=torch.float64)
    z = layer(a).detach()
    r = torch.zeros_like(z)
    r[0, 1] = z[0, 1]
    for rule in (AlphaBeta(2.0, 1.0, epsilon=EPS), ZPlus(epsilon=EPS)):
        got = rule.backward(layer, a, z, r)
        expected = literal(rule, a.reshape(-1), layer.weight.detach(), layer.bias.detach(), r[0])
        torch.testing.assert_close(got.reshape(-1), expected, rtol=1e-9, atol=1e-10)


def test_hand_computed_tiny_network() -> None:
    """x = (0.5, 1); W1 = [[1, 2], [-1, 1]]; ReLU; W2 = [[1, -1], [2, 1]]; explain class 0.

    h = (2.5, 0.5), f_0 = 2. Epsilon: R_h = (2.5, -0.5), R_x = (0.5/2.5*2.5 + -0.5/0.5*-0.5,
    2/2.5*2.5 + 1/0.5*-0.5) = (1, 1). z+: R_h = (2, 0), R_x = (0.5/2.5*2, 2/2.5*2) = (0.4, 1.6).
    """
    l1, l2 = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))
        l2.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
    model = nn.Sequential(nn.Flatten(), l1, nn.ReLU(), l2).double().eval()
    x = torch.tensor([[[[0.5, 1.0]]]], dtype=torch.float64)
    eps_rel = explain_images(model, x, 0, composite=Composite("e", [(nn.Linear, Epsilon(1e-12))])).relevance
    torch.testing.assert_close(eps_rel.reshape(-1), torch.tensor([1.0, 1.0], dtype=torch.float64), atol=1e-6, rtol=0)
    plus_rel = explain_images(model, x, 0, composite=Composite("z", [(nn.Linear, ZPlus(1e-12))])).relevance
    torch.testing.assert_close(plus_rel.reshape(-1), torch.tensor([0.4, 1.6], dtype=torch.float64), atol=1e-6, rtol=0)


def test_zbox_on_a_batch_equals_each_image_alone() -> None:
    """The bounds' terms are computed once and broadcast: a batch must match single images."""
    torch.manual_seed(5)
    layer = nn.Conv2d(2, 3, 3, padding=1).double()
    rule = ZBox(low=(-0.5, 0.0), high=(1.0, 2.0), epsilon=EPS)
    x = torch.rand(4, 2, 5, 5, dtype=torch.float64)
    batch = single_layer_relevance(layer, rule, x, target=11)
    alone = torch.cat([single_layer_relevance(layer, rule, x[i : i + 1], target=11) for i in range(4)])
    torch.testing.assert_close(batch, alone, rtol=1e-12, atol=1e-12)


def test_stabilize_adds_epsilon_with_the_sign_of_z_and_plus_at_zero() -> None:
    from hardened.explain.rules import stabilize

    z = torch.tensor([-2.0, -1e-9, -0.0, 0.0, 1e-9, 3.0], dtype=torch.float64)
    expected = torch.tensor([-2.0 - 0.5, -1e-9 - 0.5, 0.5, 0.5, 1e-9 + 0.5, 3.5], dtype=torch.float64)
    torch.testing.assert_close(stabilize(z, 0.5), expected, rtol=0, atol=0)
    assert bool((stabilize(torch.zeros(3), 1e-6) > 0).all())
    assert stabilize(z, 0.0).tolist() == z.tolist()
