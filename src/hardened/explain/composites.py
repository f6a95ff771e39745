"""Composites: which LRP rule each layer of a model gets, and the hooks that apply them.

A ``Composite`` maps layer types (and optionally names, and "the first layer") to rules.
``composite.context(model)`` applies its canonizers, then registers one forward hook per
rule-bearing layer; the hook wraps the layer's output in an autograd function whose backward
is the rule. Inside the context, the gradient of ``output * onehot`` with respect to the input
*is* the relevance. On exit the hooks are removed and the canonizers undone, so the model
computes exactly what it computed before (design after zennit, Anders et al. 2021).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from hardened.errors import ConfigError
from hardened.explain.canonizers import BatchNormFolding, Canonizer
from hardened.explain.rules import (
    BATCHNORM_LAYERS,
    LINEAR_LAYERS,
    POOL_LAYERS,
    TRANSPARENT_LAYERS,
    AlphaBeta,
    Epsilon,
    Gamma,
    Pass,
    Rule,
    SumEpsilon,
    ZBox,
    ZPlus,
)
from hardened.models.normalize import Normalize
from hardened.models.zoo import Add
from hardened.registry import Registry

__all__ = ["Composite", "COMPOSITES", "make_composite", "RULE_CATALOGUE"]

#: every rule class, for error messages that say which rules would handle a layer
RULE_CATALOGUE: tuple[type[Rule], ...] = (Epsilon, Gamma, AlphaBeta, ZPlus, ZBox, Pass)

LayerMap = Sequence[tuple[type[nn.Module] | tuple[type[nn.Module], ...], Rule]]


class _RuleFunction(torch.autograd.Function):
    """Identity in the forward pass; the rule's relevance redistribution in the backward."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, z: Tensor, rule: Rule, module: nn.Module) -> Tensor:  # type: ignore[override]
        ctx.rule = rule
        ctx.module = module
        ctx.save_for_backward(a, z)
        return z.clone()

    @staticmethod
    def backward(ctx: Any, relevance: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        a, z = ctx.saved_tensors
        with torch.no_grad():
            r_in = ctx.rule.backward(ctx.module, a.detach(), z.detach(), relevance)
        return r_in, None, None, None


class _SumFunction(torch.autograd.Function):
    """Identity in the forward pass (returns the sum ``z``); the sum rule in the backward."""

    @staticmethod
    def forward(ctx: Any, rule: SumEpsilon, z: Tensor, *inputs: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rule = rule
        ctx.save_for_backward(z, *inputs)
        return z.clone()

    @staticmethod
    def backward(ctx: Any, relevance: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        z, *inputs = ctx.saved_tensors
        with torch.no_grad():
            shares = ctx.rule.backward(tuple(a.detach() for a in inputs), z.detach(), relevance)
        return (None, None, *(r if need else None for r, need in zip(shares, ctx.needs_input_grad[2:], strict=True)))


def _make_sum_hook(rule: SumEpsilon) -> Any:
    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        if not torch.is_grad_enabled():
            return None
        return _SumFunction.apply(rule, output, *inputs)

    return hook


def _make_hook(rule: Rule) -> Any:
    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        if len(inputs) != 1 or not isinstance(inputs[0], Tensor) or not isinstance(output, Tensor):
            raise ConfigError(
                f"LRP rules need layers with one tensor input and output; "
                f"{type(module).__name__} got {len(inputs)} inputs"
            )
        if not torch.is_grad_enabled():
            return None
        return _RuleFunction.apply(inputs[0], output, rule, module)

    return hook


def _type_names(types: tuple[type, ...] | type) -> str:
    items = types if isinstance(types, tuple) else (types,)
    return ", ".join(t.__name__ for t in items)


def _serving_rules(module: nn.Module) -> list[str]:
    return [cls.__name__ for cls in RULE_CATALOGUE if isinstance(module, cls.supports)]


@dataclass(frozen=True)
class Composite:
    """Rules per layer: ``name_map`` (exact module names) first, then ``first`` for the first
    Linear/Conv layer, then ``layer_map`` (first matching type wins). ``Normalize`` passes
    relevance through unchanged unless mapped otherwise; a BatchNorm that no canonizer folded
    (one after a residual sum: a pre-activation block's) takes ``Epsilon`` with the sum rule's
    epsilon unless mapped otherwise.

    Args:
        name: the composite's name (for results and messages).
        layer_map: ``(layer type or tuple of types, rule)`` pairs.
        first: rule for the first Linear/Conv layer (e.g. ``ZBox()``: its bounds are then
            mapped from the pixel bounds through a leading ``Normalize``).
        name_map: ``{module name: rule}`` overrides.
        canonizers: applied before the rules (BatchNorm folding by default).
        sum_rule: rule for every ``Add`` module (residual additions).
    """

    name: str
    layer_map: LayerMap
    first: Rule | None = None
    name_map: Mapping[str, Rule] = field(default_factory=dict)
    canonizers: Sequence[Canonizer] = field(default_factory=lambda: (BatchNormFolding(),))
    sum_rule: SumEpsilon = field(default_factory=SumEpsilon)

    def assign(
        self,
        model: nn.Module,
        bounds: tuple[float, float] = (0.0, 1.0),
        identities: set[nn.Module] | frozenset[nn.Module] = frozenset(),
    ) -> dict[str, Rule]:
        """The rule for each leaf module that needs one; raises for layers no rule handles.

        ``identities`` are modules a canonizer turned into identities (they need no rule).
        """
        rules: dict[str, Rule] = {}
        leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
        first_index = next(
            (i for i, (_, m) in enumerate(leaves) if isinstance(m, LINEAR_LAYERS)), None
        )
        for index, (name, module) in enumerate(leaves):
            label = name or "<model>"
            if module in identities and name not in self.name_map:
                continue  # folded into the layer before it
            rule = self.name_map.get(name)
            if rule is None and index == first_index and self.first is not None:
                rule = self._first_rule(leaves[:index], bounds)
            if rule is None:
                rule = next(
                    (r for types, r in self.layer_map if isinstance(module, types)), None
                )
            if rule is None and isinstance(module, Normalize):
                rule = Pass()
            if rule is None and isinstance(module, BATCHNORM_LAYERS):
                rule = Epsilon(self.sum_rule.epsilon)
            if rule is None:
                if module in identities or isinstance(module, (*TRANSPARENT_LAYERS, Add)):
                    continue  # Add: the sum rule, registered by ``context``
                serving = _serving_rules(module)
                raise ConfigError(
                    f"layer {label!r} ({type(module).__name__}) has no LRP rule in composite "
                    f"{self.name!r} and is not gradient-transparent; "
                    + (
                        f"rules that handle it: {', '.join(serving)} (map it with name_map)"
                        if serving
                        else "no built-in rule handles it (supported: "
                        f"{_type_names(LINEAR_LAYERS + POOL_LAYERS + BATCHNORM_LAYERS)}, Normalize "
                        f"and {_type_names(TRANSPARENT_LAYERS)}); replace the "
                        "layer or use a gradient method"
                    )
                )
            if not rule.handles(module):
                serving = _serving_rules(module)
                raise ConfigError(
                    f"rule {type(rule).__name__} cannot handle layer {label!r} "
                    f"({type(module).__name__}); rules that would serve: "
                    f"{', '.join(serving) if serving else 'none (use a gradient method)'}"
                )
            rules[name] = rule
        return rules

    def _first_rule(self, before: list[tuple[str, nn.Module]], bounds: tuple[float, float]) -> Rule:
        rule = self.first
        if not isinstance(rule, ZBox) or (rule.low is not None and rule.high is not None):
            return rule  # type: ignore[return-value]
        lo: Tensor = torch.tensor([float(bounds[0])])
        hi: Tensor = torch.tensor([float(bounds[1])])
        for name, module in before:
            if isinstance(module, Normalize):
                mean = torch.as_tensor(module.mean).flatten().cpu().double()
                std = torch.as_tensor(module.std).flatten().cpu().double()
                lo, hi = (lo.double() - mean) / std, (hi.double() - mean) / std
            elif not isinstance(module, (nn.Flatten, nn.Identity, nn.Dropout)):
                raise ConfigError(
                    f"ZBox: cannot map the pixel bounds through layer {name!r} "
                    f"({type(module).__name__}) to the first layer; give ZBox(low=..., high=...) "
                    "in that layer's input space"
                )
        low = tuple(float(v) for v in lo) if lo.numel() > 1 else float(lo)
        high = tuple(float(v) for v in hi) if hi.numel() > 1 else float(hi)
        return replace(rule, low=low, high=high)

    @contextmanager
    def context(self, model: nn.Module, bounds: tuple[float, float] = (0.0, 1.0)) -> Iterator[nn.Module]:
        """Apply canonizers and register the rules; undo both on exit."""
        with ExitStack() as stack:
            identities: set[nn.Module] = set()
            for canonizer in self.canonizers:
                made = stack.enter_context(canonizer.apply(model))
                identities |= set(made or ())
            rules = self.assign(model, bounds, identities)
            named = dict(model.named_modules())
            handles = [named[name].register_forward_hook(_make_hook(rule)) for name, rule in rules.items()]
            handles += [m.register_forward_hook(_make_sum_hook(self.sum_rule))
                        for m in model.modules() if isinstance(m, Add)]
            try:
                yield model
            finally:
                for handle in handles:
                    handle.remove()

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description of the mapping."""
        return {
            "name": self.name,
            "first": repr(self.first) if self.first is not None else None,
            "layer_map": [[_type_names(t), repr(r)] for t, r in self.layer_map],
            "name_map": {k: repr(v) for k, v in self.name_map.items()},
        }


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


#: named composites (zennit's names where they exist), each a factory taking keyword options;
#: other packages add composites through the ``hardened.composites`` entry-point group
COMPOSITES: Registry[Composite] = Registry("composite", group="hardened.composites", base=Composite)


@COMPOSITES.register("epsilon")
def _epsilon(*, epsilon: float = 1e-6) -> Composite:
    rule = Epsilon(epsilon)
    return Composite("epsilon", [(LINEAR_LAYERS + POOL_LAYERS, rule)], sum_rule=SumEpsilon(epsilon))


@COMPOSITES.register("epsilon-plus")
def _epsilon_plus(*, epsilon: float = 1e-6) -> Composite:
    return Composite(
        "epsilon-plus", [(_CONV, ZPlus()), ((nn.Linear,) + POOL_LAYERS, Epsilon(epsilon))],
        sum_rule=SumEpsilon(epsilon),
    )


@COMPOSITES.register("epsilon-plus-box")
def _epsilon_plus_box(*, epsilon: float = 1e-6) -> Composite:
    return replace(_epsilon_plus(epsilon=epsilon), name="epsilon-plus-box", first=ZBox())


@COMPOSITES.register("epsilon-gamma-box")
def _epsilon_gamma_box(*, epsilon: float = 1e-6, gamma: float = 0.25) -> Composite:
    return Composite(
        "epsilon-gamma-box",
        [(_CONV, Gamma(gamma)), ((nn.Linear,) + POOL_LAYERS, Epsilon(epsilon))],
        first=ZBox(),
        sum_rule=SumEpsilon(epsilon),
    )


@COMPOSITES.register("epsilon-alpha2-beta1")
def _epsilon_alpha2_beta1(*, epsilon: float = 1e-6) -> Composite:
    return Composite(
        "epsilon-alpha2-beta1",
        [(_CONV, AlphaBeta(2.0, 1.0)), ((nn.Linear,) + POOL_LAYERS, Epsilon(epsilon))],
        sum_rule=SumEpsilon(epsilon),
    )


@COMPOSITES.register("alpha1-beta0")
def _alpha1_beta0(*, epsilon: float = 1e-6) -> Composite:
    return Composite(
        "alpha1-beta0", [(LINEAR_LAYERS, AlphaBeta(1.0, 0.0)), (POOL_LAYERS, Epsilon(epsilon))],
        sum_rule=SumEpsilon(epsilon),
    )


def make_composite(composite: str | Composite, **options: Any) -> Composite:
    """A composite by name (``epsilon-gamma-box``...) or the given ``Composite`` unchanged.

    Options: ``epsilon`` (dense layers' stabiliser), ``gamma`` (for ``epsilon-gamma-box``).
    """
    if isinstance(composite, Composite):
        return composite
    if not isinstance(composite, str):
        raise ConfigError(
            f"composite must be a name ({', '.join(COMPOSITES)}) or a Composite, "
            f"got {type(composite).__name__}"
        )
    return COMPOSITES.make(composite, **options)
