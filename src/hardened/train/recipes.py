"""Published adversarial-training recipes as named presets (``hardened train --recipe NAME``).

A ``Recipe`` holds a paper's hyper-parameters under the names of ``hardened train``'s options
(model, optimizer, learning-rate schedule, attack steps, eps schedule, epochs, batch), its
source and every deviation from it. ``apply_recipe`` fills the options a user did not give
from the recipe: explicit options always win. The table in the README's Defend section and
``hardened train --list-recipes`` are written from ``RECIPES``.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hardened.errors import ConfigError

__all__ = ["RECIPES", "Recipe", "apply_recipe", "get_recipe", "recipe_markdown"]

RECIPE_OPTIONS = frozenset({
    "data", "arch", "method", "eps", "norm", "steps", "step_size", "random_start", "beta",
    "eps_warmup", "nfgsm_noise", "grad_align", "epochs", "batch_size", "lr", "lr_schedule",
    "lr_peak", "lr_milestones", "lr_gamma", "optimizer", "momentum", "weight_decay",
})
"""The ``hardened train`` options a recipe may set."""


@dataclass(frozen=True)
class Recipe:
    """One paper's training hyper-parameters.

    ``options`` maps ``hardened train`` option names (``RECIPE_OPTIONS``) to values;
    ``arch_kwargs`` sizes the architecture (dropped when the user names another ``--arch``).
    ``source`` cites the paper and the code the values come from; ``deviations`` lists where
    the preset differs from them and why.
    """

    name: str
    title: str
    source: str
    options: Mapping[str, Any]
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    deviations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.options) - RECIPE_OPTIONS)
        if unknown:
            raise ConfigError(f"recipe {self.name}: unknown options {', '.join(unknown)}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "arch_kwargs", MappingProxyType(dict(self.arch_kwargs)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "source": self.source, "options": dict(self.options),
                "arch_kwargs": dict(self.arch_kwargs), "deviations": list(self.deviations)}


_CIFAR_EPS = 8 / 255
# Wong et al. 2020's MNIST settings (MNIST/train_mnist.py), shared by fast-mnist and fast-mnist-wide
_FAST_MNIST = {"data": "mnist", "arch": "strided_cnn", "method": "fgsm", "eps": 0.3, "norm": "linf",
               "step_size": 0.375, "random_start": True, "eps_warmup": 0.0, "epochs": 10, "batch_size": 100,
               "lr": 5e-3, "lr_schedule": "cyclic", "lr_peak": 0.4, "optimizer": "adam", "weight_decay": 0.0}

RECIPES: Mapping[str, Recipe] = MappingProxyType({r.name: r for r in (
    Recipe(
        "madry-mnist", "PGD-40 adversarial training, MNIST Linf 0.3",
        "Madry et al. 2018, 'Towards deep learning models resistant to adversarial attacks'; "
        "github.com/MadryLab/mnist_challenge config.json",
        {"data": "mnist", "arch": "lenet", "method": "pgd", "eps": 0.3, "norm": "linf", "steps": 40,
         "step_size": 0.01, "random_start": True, "eps_warmup": 0.0, "epochs": 84, "batch_size": 50,
         "lr": 1e-4, "lr_schedule": "constant", "optimizer": "adam", "weight_decay": 0.0},
        {"channels": (32, 64), "hidden": 1024},
        ("100,000 steps of 50 images in the paper: 84 epochs of 60,000 here (100,800 steps)",),
    ),
    Recipe(
        "trades-mnist", "TRADES, MNIST Linf 0.3",
        "Zhang et al. 2019, 'Theoretically principled trade-off between robustness and accuracy'; "
        "github.com/yaodongyu/TRADES train_trades_mnist.py",
        {"data": "mnist", "arch": "lenet", "method": "trades", "eps": 0.3, "norm": "linf", "steps": 40,
         "step_size": 0.01, "beta": 1.0, "eps_warmup": 0.0, "epochs": 100, "batch_size": 128,
         "lr": 0.01, "lr_schedule": "piecewise", "lr_milestones": (0.55, 0.75, 0.9), "lr_gamma": 0.1,
         "optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.0},
        {"channels": (32, 64), "hidden": 200},
        ("the paper's SmallCNN (four 3×3 convolutions 32-32-64-64, two dense layers of 200, "
         "dropout 0.5) becomes the zoo's lenet with 32-64 channels and a dense layer of 200",),
    ),
    Recipe(
        "fast-mnist", "fast FGSM (random start, step 1.25·eps, cyclic lr), MNIST Linf 0.3",
        "Wong et al. 2020, 'Fast is better than free: revisiting adversarial training'; "
        "github.com/locuslab/fast_adversarial MNIST/train_mnist.py",
        _FAST_MNIST,
        {"channels": (16, 32), "hidden": 100},
        ("the catastrophic-overfitting detector (--guard stop) is on; the paper has none",
         "the network's first layer normalises by the training set's pixel mean and std (the "
         "authors feed raw [0, 1] pixels)"),
    ),
    Recipe(
        "fast-mnist-wide", "fast-mnist on Madry et al.'s MNIST widths (32/64 channels, 1,024 hidden)",
        "Wong et al. 2020 (the fast-mnist settings); widths of Madry et al. 2018's MNIST network",
        _FAST_MNIST,
        {"channels": (32, 64), "hidden": 1024},
        ("the network is wider than Wong et al.'s (16/32 channels, 100 hidden): on full MNIST their "
         "width gave 69.3-81.5% under the standard cascade over seeds 0-2, this one 73.9-84.4% over "
         "seeds 0-4 (median 82.4%, 4 of 5 at 80% or more; benchmarks/defend_mnist.py), at 6.4x the "
         "cost per pass",
         "as fast-mnist: the detector (--guard stop) is on, and the first layer normalises"),
    ),
    Recipe(
        "madry-cifar10", "PGD-7 adversarial training, CIFAR-10 Linf 8/255, WRN-28-10",
        "Madry et al. 2018; github.com/MadryLab/cifar10_challenge config.json",
        {"data": "cifar10", "arch": "wrn-28-10", "method": "pgd", "eps": _CIFAR_EPS, "norm": "linf",
         "steps": 7, "step_size": 2 / 255, "random_start": True, "eps_warmup": 0.0, "epochs": 205,
         "batch_size": 128, "lr": 0.1, "lr_schedule": "piecewise", "lr_milestones": (0.5, 0.75),
         "lr_gamma": 0.1, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 2e-4},
        {},
        ("the challenge's network is the 'w32-10' wide ResNet (5 residual units per stage); the "
         "zoo's WRN-28-10 (4 per stage)",
         "7 steps of 2/255 as in the paper (the repository's config.json has 10)",
         "80,000 steps of 128 images with decays at 40,000 and 60,000 in the paper: 205 epochs of "
         "50,000 here, decays at 50% and 75%",
         "no random crop / flip augmentation (the trainer has none)"),
    ),
    Recipe(
        "madry-cifar10-r18", "PGD-10 adversarial training, CIFAR-10 Linf 8/255, ResNet-18",
        "Rice et al. 2020, 'Overfitting in adversarially robust deep learning' (PGD training of "
        "Madry et al. with a ResNet-18); github.com/locuslab/robust_overfitting train_cifar.py",
        {"data": "cifar10", "arch": "resnet18", "method": "pgd", "eps": _CIFAR_EPS, "norm": "linf",
         "steps": 10, "step_size": 2 / 255, "random_start": True, "eps_warmup": 0.0, "epochs": 200,
         "batch_size": 128, "lr": 0.1, "lr_schedule": "piecewise", "lr_milestones": (0.5, 0.75),
         "lr_gamma": 0.1, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4},
        {},
        ("pre-activation ResNet-18 in the paper; the zoo's resnet18 is post-activation",
         "no early stopping on a validation PGD accuracy and no crop / flip augmentation"),
    ),
    Recipe(
        "trades-cifar10", "TRADES (beta 6), CIFAR-10 Linf 0.031, WRN-28-10",
        "Zhang et al. 2019; github.com/yaodongyu/TRADES train_trades_cifar10.py",
        {"data": "cifar10", "arch": "wrn-28-10", "method": "trades", "eps": 0.031, "norm": "linf",
         "steps": 10, "step_size": 0.007, "beta": 6.0, "eps_warmup": 0.0, "epochs": 76,
         "batch_size": 128, "lr": 0.1, "lr_schedule": "piecewise", "lr_milestones": (75 / 76,),
         "lr_gamma": 0.1, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 2e-4},
        {},
        ("WRN-34-10 in the paper; the zoo's WRN-28-10", "no crop / flip augmentation"),
    ),
    Recipe(
        "fast-cifar10", "fast FGSM (random start, step 10/255, cyclic lr), CIFAR-10 Linf 8/255",
        "Wong et al. 2020; github.com/locuslab/fast_adversarial CIFAR10/train_fgsm.py",
        {"data": "cifar10", "arch": "resnet18", "method": "fgsm", "eps": _CIFAR_EPS, "norm": "linf",
         "step_size": 10 / 255, "random_start": True, "eps_warmup": 0.0, "epochs": 15, "batch_size": 128,
         "lr": 0.2, "lr_schedule": "cyclic", "lr_peak": 0.5, "optimizer": "sgd", "momentum": 0.9,
         "weight_decay": 5e-4},
        {},
        ("pre-activation ResNet-18 in the paper; the zoo's resnet18 is post-activation",
         "no crop / flip augmentation; mixed precision only on CUDA (--amp)",
         "the catastrophic-overfitting detector (--guard stop) stands in for the paper's early stop"),
    ),
)})


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (case and ``_``/``-`` ignored); ``ConfigError`` listing the valid ones."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in RECIPES:
        raise ConfigError(
            f"unknown recipe {name!r}: use one of {', '.join(RECIPES)} (hardened train --list-recipes)"
        )
    return RECIPES[key]


def apply_recipe(recipe: Recipe, given: Mapping[str, Any], explicit: Set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options after the recipe: ``given[k]`` where ``k`` is in ``explicit``, else the recipe's.

    ``given`` holds every option as parsed (defaults included); ``explicit`` names those the
    user set. Returns ``(options, arch_kwargs)``; the recipe's ``arch_kwargs`` are dropped
    when the user chose another architecture.
    """
    options = dict(given)
    for key, value in recipe.options.items():
        if key not in explicit:
            options[key] = value
    same_arch = "arch" not in explicit or str(given.get("arch")) == recipe.options.get("arch")
    return options, dict(recipe.arch_kwargs) if same_arch else {}


def _number(value: float) -> str:
    for denominator in (255,):
        if abs(value * denominator - round(value * denominator)) < 1e-9 and value < 1 and round(value * denominator) > 1:
            return f"{round(value * denominator)}/{denominator}"
    return f"{value:g}"


def _schedule(options: Mapping[str, Any]) -> str:
    schedule = options.get("lr_schedule", "constant")
    if schedule == "cyclic":
        return f"cyclic, peak at {options.get('lr_peak', 0.4):g}"
    if schedule == "piecewise":
        points = ", ".join(f"{m:.2g}" for m in options.get("lr_milestones", ()))
        return f"×{options.get('lr_gamma', 0.1):g} at {points}"
    return str(schedule)


def recipe_markdown() -> str:
    """The README's recipe table (one row per recipe), written from ``RECIPES``."""
    rows = ["| recipe | method, model | attack | optimizer, lr, schedule | epochs × batch | source; deviations |",
            "|---|---|---|---|---|---|"]
    for r in RECIPES.values():
        o = r.options
        model = o["arch"] + (f" ({', '.join(f'{k} {v}' for k, v in r.arch_kwargs.items())})" if r.arch_kwargs else "")
        steps = "1 step" if o["method"] == "fgsm" else f"{o['steps']} steps"
        attack = f"{o['norm']} {_number(o['eps'])}, {steps} of {_number(o['step_size'])}"
        attack += f", beta {o['beta']:g}" if "beta" in o else ""
        optim = f"{o['optimizer']} {o['lr']:g}"
        optim += f" (momentum {o['momentum']:g}" + (f", wd {o['weight_decay']:g})" if o.get("weight_decay") else ")") \
            if o["optimizer"] == "sgd" else ""
        source = r.source.split(";")[0] + "; " + "; ".join(r.deviations)
        rows.append(f"| `{r.name}` | {o['method']}, {model} | {attack} | {optim}, {_schedule(o)} | "
                    f"{o['epochs']} × {o['batch_size']} | {source} |")
    return "\n".join(rows) + "\n"
