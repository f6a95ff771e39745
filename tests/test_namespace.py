"""Package structure: no public name shadows a submodule (``import hardened.x.y as m`` binds the
module), and the training modules import in one direction (config <- methods <- loop)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import types

import hardened


def _packages() -> list[types.ModuleType]:
    names = [info.name for info in pkgutil.walk_packages(hardened.__path__, "hardened.") if info.ispkg]
    return [hardened, *(importlib.import_module(name) for name in names)]


def test_every_submodule_attribute_is_the_module_itself() -> None:
    shadowed = []
    for package in _packages():
        for info in pkgutil.iter_modules(package.__path__):
            if info.name.startswith("_"):
                continue
            full = f"{package.__name__}.{info.name}"
            module = importlib.import_module(full)
            if getattr(package, info.name) is not module:
                shadowed.append(full)
    assert shadowed == []


def test_explain_and_calibrate_bind_their_modules() -> None:
    import hardened.explain as explain_module
    import hardened.guard.calibrate as calibrate_module

    assert isinstance(explain_module, types.ModuleType) and explain_module.__name__ == "hardened.explain"
    assert isinstance(calibrate_module, types.ModuleType)
    assert callable(hardened.explain_images) and callable(calibrate_module.calibrate_threshold)


def _imports(module: types.ModuleType) -> set[str]:
    tree = ast.parse(open(module.__file__, encoding="utf-8").read())  # type: ignore[arg-type]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_train_modules_import_in_one_direction() -> None:
    import hardened.train.config as config
    import hardened.train.methods as methods

    assert not any(name.startswith("hardened.train") for name in _imports(config))
    assert "hardened.train.loop" not in _imports(methods)
