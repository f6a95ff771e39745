"""Transfer (black-box) evaluation: craft adversarial examples on a source model, measure a target.

The attacker never touches the target's gradients: ``x' = attack(source, x, y)``, then the
target's accuracy on ``x'`` is its *transfer robust accuracy* (Papernot et al. 2016; the
evaluation that ensemble adversarial training, Tramèr et al. 2018, is designed for).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor, nn

from hardened._util.batching import predict_logits
from hardened._util.progress import progress_bar
from hardened.attacks import attack_in_batches, make_attack
from hardened.errors import ConfigError
from hardened.evaluate.sweeps import _check_eps_values
from hardened.threat import check_norm

__all__ = ["TransferMatrix", "TransferResult", "craft_transfer", "transfer_accuracy", "transfer_matrix", "transfer_sweep"]


@dataclass(frozen=True)
class TransferResult:
    """Accuracy of a target on examples crafted on a source, per eps.

    ``source_accuracy[i]``: the source's own (white-box) accuracy on the examples at ``eps[i]``;
    ``target_accuracy[i]``: the target's accuracy on the same examples (transfer robust accuracy).
    At eps = 0 both are clean accuracies.
    """

    attack: str
    norm: str
    eps: list[float]
    source_accuracy: list[float]
    target_accuracy: list[float]
    n: int
    seconds: float
    source: str = ""
    target: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    kind: str = "transfer"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransferResult:
        return cls(**data)


def craft_transfer(
    source: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    attack: str = "pgd",
    norm: str = "linf",
    batch_size: int = 256,
    **attack_kwargs: Any,
) -> Tensor:
    """Adversarial examples (N×C×H×W, same device as ``x``) crafted on ``source`` only."""
    instance = make_attack(attack, eps=eps, norm=check_norm(norm), **attack_kwargs)
    if len(x) == 0:
        return x.clone()
    return attack_in_batches(instance, source, x, y, batch_size=batch_size).x_adv


def transfer_accuracy(target: nn.Module, x_adv: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Accuracy of ``target`` on (transferred) examples ``x_adv`` with true labels ``y``."""
    if len(y) == 0:
        return float("nan")
    logits = predict_logits(target, x_adv, batch_size)
    return float((logits.argmax(1) == y.to(logits.device)).float().mean())


def transfer_sweep(
    source: nn.Module,
    target: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps_values: list[float] | tuple[float, ...],
    attack: str = "pgd",
    norm: str = "linf",
    batch_size: int = 256,
    progress: bool = False,
    source_name: str = "",
    target_name: str = "",
    **attack_kwargs: Any,
) -> TransferResult:
    """Transfer robust accuracy of ``target`` at each eps (sorted ascending) from ``source``."""
    values = _check_eps_values(eps_values)
    norm = check_norm(norm)
    start = time.perf_counter()
    source_acc: list[float] = []
    target_acc: list[float] = []
    with progress_bar(len(values), f"transfer {attack} {norm}", progress) as bar:
        for eps in values:
            x_adv = craft_transfer(source, x, y, eps=eps, attack=attack, norm=norm,
                                   batch_size=batch_size, **attack_kwargs)
            source_acc.append(transfer_accuracy(source, x_adv, y))
            target_acc.append(transfer_accuracy(target, x_adv, y))
            bar.describe(f"transfer eps={eps:g}: target accuracy {target_acc[-1]:.3f}")
            bar.advance()
    params = make_attack(attack, eps=values[-1], norm=norm, **attack_kwargs).params()
    params.pop("eps", None)
    return TransferResult(
        attack=attack, norm=norm, eps=values, source_accuracy=source_acc,
        target_accuracy=target_acc, n=int(len(x)), seconds=time.perf_counter() - start,
        source=source_name, target=target_name, params=params,
    )


@dataclass(frozen=True)
class TransferMatrix:
    """Transfer success rates, sources × targets, at one eps.

    ``success[i][j]``: the fraction of the images target ``j`` classifies correctly whose
    example crafted on source ``i`` it misclassifies (the transfer rate); the diagonal of a
    source that is also a target is its white-box success rate. ``clean_accuracy[j]`` is the
    target's accuracy on the clean images.
    """

    attack: str
    norm: str
    eps: float
    sources: list[str]
    targets: list[str]
    success: list[list[float]]
    clean_accuracy: list[float]
    n: int
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    kind: str = "transfer_matrix"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def transfer_matrix(
    sources: Mapping[str, nn.Module],
    targets: Mapping[str, nn.Module | Any],
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    attack: str = "mifgsm-di-ti",
    norm: str = "linf",
    batch_size: int = 256,
    **attack_kwargs: Any,
) -> TransferMatrix:
    """Craft on every source (a ``LogitEnsemble`` is one source) and measure every target.

    Targets need only outputs (any ``x -> logits`` callable, e.g. a black-box endpoint).
    """
    if not sources or not targets:
        raise ConfigError("transfer_matrix needs at least one source and one target")
    norm = check_norm(norm)
    start = time.perf_counter()

    def predictions(model: Any, images: Tensor) -> Tensor:
        return predict_logits(model, images, batch_size).argmax(1).cpu()  # modules and plain callables

    labels = y.cpu()
    correct = {name: predictions(model, x) == labels for name, model in targets.items()}
    rows = []
    for source in sources.values():
        x_adv = craft_transfer(source, x, y, eps=eps, attack=attack, norm=norm, batch_size=batch_size, **attack_kwargs)
        row = []
        for name, model in targets.items():
            fooled = (predictions(model, x_adv) != labels) & correct[name]
            row.append(float(fooled.sum()) / max(int(correct[name].sum()), 1))
        rows.append(row)
    params = make_attack(attack, eps=eps, norm=norm, **attack_kwargs).params()
    return TransferMatrix(
        attack=attack, norm=norm, eps=float(eps), sources=list(sources), targets=list(targets), success=rows,
        clean_accuracy=[float(c.float().mean()) for c in correct.values()], n=int(len(x)),
        seconds=time.perf_counter() - start, params=params,
    )
