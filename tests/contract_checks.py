"""The contract every registered component keeps, as check functions.

tests/contracts/ calls them for every name in each registry (so a component is contract-tested
by being registered); the plugin test calls them on the example plugin's components. Each
check builds nothing itself: it gets a component (or a way to build one) and tiny inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from hardened.attacks import ATTACKS, PGD, Attack
from hardened.certify import Certifier
from hardened.errors import ConfigError, NotFittedError
from hardened.explain.attribute import lrp
from hardened.explain.composites import Composite
from hardened.guard import make_score, score_from_state
from hardened.guard.base import BaseScore
from hardened.train import TrainConfig, make_method, train
from hardened.train.methods import METHODS
from helpers import blob_data, tiny_cnn

#: radii of the ball per norm for 8×8 images in [0, 1]; the L0 budget in pixels; the
#: transformation set of the ``"spatial"`` norm (rotations and translations, not a ball)
EPS = {"linf": 0.1, "l2": 0.5, "l1": 2.0}
PIXELS = 6
SPATIAL = {"rotation": 20.0, "translation": 1.0}


def tiny_batch(n: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` 1×8×8 blob images and their labels (three classes)."""
    data = blob_data(n=n, seed=seed)
    return data.x, data.y


def params_of(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same_params(model: nn.Module, before: list[Tensor]) -> bool:
    return all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


# -- attacks --------------------------------------------------------------------------------


def attack_cases() -> list[tuple[str, str]]:
    """Every registered attack with every norm it declares."""
    return [(name, norm) for name in ATTACKS.names() for norm in ATTACKS.get(name).norms]


def build_attack(name: str, norm: str, **options: Any) -> Attack:
    """By the attack convention: ball attacks take ``eps`` and ``norm``, L0 ones ``max_pixels``,
    spatial ones the ranges of their transformation set."""
    if norm == "l0":
        return ATTACKS.make(name, max_pixels=PIXELS, **options)
    if norm == "spatial":
        return ATTACKS.make(name, **SPATIAL, **options)
    return ATTACKS.make(name, eps=EPS[norm], norm=norm, **options)


def check_attack(name: str, norm: str, model: nn.Module, x: Tensor, y: Tensor) -> None:
    """Inside the ball and the box, input untouched, mode restored, success agrees with the
    model, counts filled, parameters unchanged, and the declared capabilities hold."""
    cls = ATTACKS.get(name)
    assert cls.name == name, f"{cls.__qualname__}.name is {cls.name!r}, registered as {name!r}"
    attack = build_attack(name, norm)
    x_before, params = x.clone(), params_of(model)
    model.train()
    result = attack(model, x, y)
    assert model.training, "the attack left the model in eval mode"
    model.eval()
    assert torch.equal(x, x_before), "the attack modified its input"
    assert same_params(model, params), "the attack changed the model's parameters"
    assert all(p.grad is None for p in model.parameters()), "the attack accumulated .grad"
    x_adv = result.x_adv
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0, "outside the pixel box"
    delta = x_adv - x
    if norm == "l0":
        changed = (delta.abs().amax(dim=1) > 0).flatten(1).sum(dim=1)
        assert int(changed.max()) <= PIXELS, f"{int(changed.max())} pixels changed > {PIXELS}"
    elif norm == "spatial":  # the image is a transformation of x by parameters inside the set
        params = attack.worst_transforms(model, x, y)  # type: ignore[attr-defined]
        assert bool(attack.transforms.contains(params).all()), "parameters outside the set"  # type: ignore[attr-defined]
        torch.testing.assert_close(attack.transforms.apply(x, params), x_adv)  # type: ignore[attr-defined]
    else:
        assert float(result.norms[norm].max()) <= EPS[norm] * (1 + 1e-4) + 1e-6, "outside the ball"
    with torch.no_grad():
        pred_adv, pred_clean = model(x_adv).argmax(1), model(x).argmax(1)
    assert torch.equal(result.pred_adv, pred_adv) and torch.equal(result.pred_clean, pred_clean)
    assert torch.equal(result.success, pred_adv != y), "success mask disagrees with the model"
    assert result.forward_count >= x.shape[0] and result.seconds > 0
    if cls.needs_gradients:
        assert result.gradient_count >= x.shape[0], "a gradient attack counted no gradients"
    else:
        assert result.gradient_count == 0, "an attack without gradients counted some"
    assert result.attack == name and isinstance(result.to_dict(), dict)
    if cls.seeded:
        again = build_attack(name, norm)(model, x, y)
        assert torch.equal(again.x_adv, x_adv), "the same seed gave a different result"
    if cls.targeted:
        targets = (y + 1) % int(model(x[:1]).shape[1])
        aimed = attack(model, x, y, targets=targets)
        assert torch.equal(aimed.success, aimed.pred_adv == targets)
    else:
        try:
            attack(model, x, y, targets=y)
        except ConfigError:
            pass
        else:
            raise AssertionError("an attack without a targeted mode accepted targets=")


# -- guard scores ---------------------------------------------------------------------------


def check_score(build: Callable[[], BaseScore], model: nn.Module) -> None:
    """Unfitted raises (unless fit-free), shapes (incl. empty), batch equals one at a time, save/load gives
    identical scores, the classifier is unchanged, and ``differentiable`` holds."""
    fit_data, (x, _) = blob_data(n=30, seed=1), tiny_batch()
    score = build()
    if score.is_fitted:  # fit-free scores (softmax, energy) answer before fit, and must
        assert score.score(x).shape == (x.shape[0],), "a fit-free score gave the wrong shape"
    else:
        try:
            score.score(x)
        except NotFittedError:
            pass
        else:
            raise AssertionError("an unfitted score answered")
    params = params_of(model)
    model.train()
    score.fit(fit_data)
    assert model.training and same_params(model, params), "fit changed the classifier"
    model.eval()
    values = score.score(x)
    assert values.shape == (x.shape[0],) and values.dtype == torch.float32
    assert torch.isfinite(values).all()
    assert score.score(x[:0]).shape == (0,)
    one_by_one = torch.cat([score.score(x[i : i + 1]) for i in range(x.shape[0])])
    torch.testing.assert_close(one_by_one, values, rtol=1e-4, atol=1e-4)
    rebuilt = score_from_state(score.config(), score.state_tensors(), model)
    assert torch.equal(rebuilt.score(x), values), "save/load changed the scores"
    if score.differentiable:
        x_var = x.clone().requires_grad_(True)
        tensor = score.score_tensor(x_var)
        torch.testing.assert_close(tensor.detach(), values, rtol=1e-4, atol=1e-4)
        (grad,) = torch.autograd.grad(tensor.sum(), x_var)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    else:
        try:
            score.score_tensor(x)
        except ConfigError:
            pass
        else:
            raise AssertionError("a score declared not differentiable gave score_tensor")


def check_score_needs_model(name: str) -> None:
    """``needs_model`` says whether ``make_score`` refuses to build the score without one."""
    from hardened.guard import SCORES

    if SCORES.get(name).needs_model:
        try:
            make_score(name)
        except ConfigError:
            return
        raise AssertionError(f"{name} declares needs_model but was built without one")


# -- training methods -----------------------------------------------------------------------


def build_method(name: str, **extra: Any) -> Any:
    """Adversarial methods get a small ``eps``; ``extra`` carries required inputs."""
    options: dict[str, Any] = dict(extra)
    if METHODS.get(name).adversarial:
        options.setdefault("eps", 0.1)
    return make_method(name, **options)


def check_method(method: Any, model: nn.Module) -> None:
    """One tiny training step runs, changes the parameters and reports a finite loss."""
    data = blob_data(n=8, seed=3)
    before = params_of(model)
    config = TrainConfig(epochs=1, batch_size=8, lr=1e-2, seed=0, eval_n=0)
    result = train(model, data, method=method, config=config)
    assert not same_params(model, before), f"{method.name}: one step left the parameters unchanged"
    loss = result.history[-1].loss
    assert loss == loss and abs(loss) < float("inf"), f"{method.name}: loss {loss}"


# -- composites -----------------------------------------------------------------------------


def bias_free_cnn(seed: int = 0) -> nn.Module:
    """conv-relu-pool-flatten-linear without biases (so LRP conserves the relevance), float64."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64, 3, bias=False),
    ).double().eval()


def check_composite(name: str, composite: Composite) -> None:
    """Named as registered; relevance conserved (roughly); hooks removed, output unchanged."""
    assert composite.name == name, f"the {name} composite calls itself {composite.name!r}"
    model = bias_free_cnn()
    x, y = tiny_batch()
    x = x.double()
    before = model(x).detach()
    hooks = [len(m._forward_hooks) for m in model.modules()]
    logits, relevance = lrp(model, x, y, composite)
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()
    target_logit = logits.gather(1, y[:, None]).squeeze(1).detach()
    total = relevance.flatten(1).sum(dim=1)
    torch.testing.assert_close(total, target_logit, rtol=0.05, atol=1e-6)
    assert [len(m._forward_hooks) for m in model.modules()] == hooks, "hooks left behind"
    assert torch.equal(model(x), before), "the model computes something else afterwards"


# -- certificates ---------------------------------------------------------------------------


def check_certifier(certifier: Certifier, model: nn.Module, x: Tensor, y: Tensor) -> None:
    """Radii of shape N, >= 0 and finite, input untouched, mode restored; a deterministic
    certificate is sound (PGD inside the certified radius never changes the answer) and is 0
    where the model is wrong; a probabilistic one repeats itself for the same seed."""
    assert certifier.norm in type(certifier).norms
    x_before, params = x.clone(), params_of(model)
    model.train()
    radii = certifier.radii(model, x, y)
    assert model.training, "the certifier left the model in eval mode"
    model.eval()
    assert torch.equal(x, x_before) and same_params(model, params)
    assert radii.shape == (x.shape[0],) and radii.dtype == torch.float64
    assert torch.isfinite(radii).all() and bool((radii >= 0).all())
    if type(certifier).deterministic:
        with torch.no_grad():
            wrong = model(x).argmax(1) != y
        assert bool((radii[wrong] == 0).all()), "a misclassified image got a radius"
        for i in torch.nonzero(radii > 0).flatten().tolist():
            attack = PGD(eps=float(radii[i]) * 0.999, norm=certifier.norm, steps=20, restarts=2)
            assert not bool(attack(model, x[i : i + 1], y[i : i + 1]).success.any()), (
                f"PGD broke image {i} inside its certified radius {float(radii[i]):.4g}"
            )
    else:
        assert torch.equal(certifier.radii(model, x, y), radii), "the same seed gave other radii"


__all__ = [
    "EPS",
    "attack_cases",
    "bias_free_cnn",
    "build_attack",
    "build_method",
    "check_attack",
    "check_certifier",
    "check_composite",
    "check_method",
    "check_score",
    "check_score_needs_model",
    "tiny_batch",
    "tiny_cnn",
]
