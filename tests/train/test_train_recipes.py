"""``hardened train --recipe``: presets expand to the papers' hyper-parameters, explicit options
win, unknown names and missing architectures are one-line errors; the piecewise and peaked
cyclic learning-rate schedules in closed form."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hardened.cli.main import app
from hardened.errors import ConfigError
from hardened.models import load_model
from hardened.train import TrainConfig
from hardened.train.loop import lr_factor
from hardened.train.recipes import RECIPES, apply_recipe, get_recipe, recipe_markdown

runner = CliRunner()
README = Path(__file__).resolve().parents[2] / "README.md"

# The papers' values, from their code (the source each recipe cites), written out again here.
PUBLISHED = {
    "madry-mnist": {"method": "pgd", "eps": 0.3, "steps": 40, "step_size": 0.01, "batch_size": 50,
                    "lr": 1e-4, "optimizer": "adam", "lr_schedule": "constant"},
    "trades-mnist": {"method": "trades", "eps": 0.3, "steps": 40, "step_size": 0.01, "beta": 1.0,
                     "batch_size": 128, "lr": 0.01, "optimizer": "sgd", "momentum": 0.9, "epochs": 100,
                     "lr_milestones": (0.55, 0.75, 0.9)},
    "fast-mnist": {"method": "fgsm", "eps": 0.3, "step_size": 0.375, "batch_size": 100, "lr": 5e-3,
                   "optimizer": "adam", "lr_schedule": "cyclic", "lr_peak": 0.4, "epochs": 10,
                   "arch": "strided_cnn", "random_start": True},
    "fast-mnist-wide": {"method": "fgsm", "eps": 0.3, "step_size": 0.375, "batch_size": 100, "lr": 5e-3,
                        "optimizer": "adam", "lr_schedule": "cyclic", "lr_peak": 0.4, "epochs": 10,
                        "arch": "strided_cnn", "random_start": True},
    "madry-cifar10": {"method": "pgd", "eps": 8 / 255, "steps": 7, "step_size": 2 / 255, "lr": 0.1,
                      "momentum": 0.9, "weight_decay": 2e-4, "batch_size": 128, "arch": "wrn-28-10"},
    "madry-cifar10-r18": {"method": "pgd", "steps": 10, "step_size": 2 / 255, "epochs": 200,
                          "weight_decay": 5e-4, "lr_milestones": (0.5, 0.75), "arch": "resnet18"},
    "trades-cifar10": {"method": "trades", "eps": 0.031, "steps": 10, "step_size": 0.007, "beta": 6.0,
                       "epochs": 76, "weight_decay": 2e-4, "lr": 0.1},
    "fast-cifar10": {"method": "fgsm", "eps": 8 / 255, "step_size": 10 / 255, "lr": 0.2, "epochs": 15,
                     "lr_schedule": "cyclic", "lr_peak": 0.5, "weight_decay": 5e-4, "optimizer": "sgd"},
}


def test_every_recipe_is_checked_against_its_paper():
    assert set(PUBLISHED) == set(RECIPES)
    for name, values in PUBLISHED.items():
        options = RECIPES[name].options
        for key, value in values.items():
            assert options[key] == pytest.approx(value) if isinstance(value, float) else options[key] == value, (name, key)
        assert RECIPES[name].source and RECIPES[name].title


def test_the_readme_table_is_the_recipes_table():
    assert recipe_markdown() in README.read_text()


@pytest.mark.parametrize("name", list(RECIPES))
def test_apply_recipe_fills_only_what_the_user_did_not_give(name):
    recipe = RECIPES[name]
    given = {key: f"default-{key}" for key in recipe.options} | {"epochs": 3, "guard": "stop"}
    merged, arch_kwargs = apply_recipe(recipe, given, explicit=set())
    assert {k: merged[k] for k in recipe.options} == dict(recipe.options)
    assert merged["guard"] == "stop" and arch_kwargs == dict(recipe.arch_kwargs)
    merged, _ = apply_recipe(recipe, given, explicit={"epochs", "lr"})
    assert merged["epochs"] == 3 and merged["lr"] == "default-lr"
    merged, arch_kwargs = apply_recipe(recipe, given | {"arch": "mlp"}, explicit={"arch"})
    assert merged["arch"] == "mlp" and arch_kwargs == {}


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown recipe 'madry'") as caught:
        get_recipe("madry")
    assert all(name in str(caught.value) for name in RECIPES)
    assert get_recipe("Fast_MNIST").name == "fast-mnist"


def test_cli_recipe_reaches_the_trainer_and_explicit_options_win(tmp_path):
    out = tmp_path / "fast.safetensors"
    args = ["train", "--recipe", "fast-mnist", "--data", "mnist-5k", "--n-train", "200", "--epochs", "1",
            "--eval-n", "0", "--guard", "off", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    loaded = load_model(out)
    training = loaded.info.training
    config, method = training["config"], training["method"]
    assert training["recipe"] == "fast-mnist"
    assert config["epochs"] == 1 and training["data"] == "mnist-5k"  # given explicitly: kept
    assert (config["lr"], config["batch_size"], config["optimizer"]) == (5e-3, 100, "adam")
    assert (config["lr_schedule"], config["lr_peak"]) == ("cyclic", 0.4)
    assert method["method"] == "fgsm" and method["step_size"] == pytest.approx(0.375)
    assert method["eps"] == pytest.approx(0.3) and "guard" not in method
    assert loaded.info.arch == "strided_cnn" and loaded.info.arch_kwargs["hidden"] == 100
    assert training["steps"] == 2  # 200 images, batch 100


def test_cli_recipe_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HARDENED_DATA_DIR", str(tmp_path))  # no CIFAR-10 here, whatever the user cache holds
    result = runner.invoke(app, ["train", "--recipe", "nope", "--out", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 2 and "unknown recipe 'nope'" in result.output and "fast-mnist" in result.output
    assert "Traceback" not in result.output
    # the recipe's own data (CIFAR-10) is not on this machine: one line naming the files and --download
    result = runner.invoke(app, ["train", "--recipe", "trades-cifar10", "--out", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 2 and "cifar10 not found" in result.output and "--download" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_list_recipes_shows_every_recipe_with_its_source():
    result = runner.invoke(app, ["train", "--list-recipes"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for recipe in RECIPES.values():
        assert recipe.name in result.output and recipe.source.split(";")[0][:30] in result.output


# ---------------------------------------------------------------- schedules
@pytest.mark.parametrize("total", [3, 50, 777])
def test_piecewise_schedule_in_closed_form(total):
    milestones = (0.5, 0.75)
    for step in range(total):
        k = (step >= 0.5 * total) + (step >= 0.75 * total)
        assert lr_factor("piecewise", step, total, milestones=milestones, gamma=0.1) == pytest.approx(0.1**k)


@pytest.mark.parametrize("peak", [0.2, 0.5, 0.9])
def test_cyclic_schedule_peaks_where_asked(peak):
    total = 1000
    values = [lr_factor("cyclic", s, total, peak=peak) for s in range(total)]
    assert max(range(total), key=values.__getitem__) == round(peak * total)
    assert values[0] == 0.0 and values[-1] == pytest.approx(1 / (total * (1 - peak)))


@pytest.mark.parametrize(
    "options, match",
    [({"lr_schedule": "piecewise"}, "needs lr_milestones"), ({"lr_milestones": (0.7, 0.3)}, "increasing"),
     ({"lr_milestones": (0.5, 1.0)}, "increasing"), ({"lr_peak": 1.0}, "lr_peak"), ({"lr_gamma": 1.5}, "lr_gamma")],
)
def test_bad_schedule_settings_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**options)


def test_the_wide_fast_recipe_differs_from_fast_mnist_only_in_width():
    fast, wide = RECIPES["fast-mnist"], RECIPES["fast-mnist-wide"]
    assert dict(wide.options) == dict(fast.options)
    assert dict(wide.arch_kwargs) == {"channels": (32, 64), "hidden": 1024} != dict(fast.arch_kwargs)
