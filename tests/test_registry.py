"""The generic registry: names, aliases, options, capabilities and entry-point plugins."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardened.errors import ConfigError
from hardened.registry import Registry, normalize_name


class Base:
    norms: tuple[str, ...] = ("linf",)
    targeted = False


def make_registry(group: str | None = None) -> Registry[Base]:
    registry: Registry[Base] = Registry(
        "widget", group=group, base=Base, capabilities=("norms", "targeted")
    )

    @registry.register("step-size", aliases=("ss", "old_name"))
    class StepSize(Base):
        norms = ("linf", "l2")

        def __init__(self, *, eps: float = 0.1, steps: int = 3) -> None:
            if isinstance(eps, str):
                raise TypeError("eps must be a number")
            self.eps, self.steps = eps, steps

    @registry.register("aimed")
    class Aimed(Base):
        norms = ("l2",)
        targeted = True

    return registry


def test_register_returns_the_class_and_get_finds_it_by_name_and_alias() -> None:
    registry = make_registry()
    cls = registry.get("step-size")
    assert cls.__name__ == "StepSize"
    assert registry.get("ss") is cls and registry.get("old-name") is cls
    assert registry.names() == ("step-size", "aimed")
    assert registry.aliases() == {"ss": "step-size", "old-name": "step-size"}
    assert list(registry) == ["step-size", "aimed"] and len(registry) == 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=9, max_size=9), st.booleans(), st.booleans())
def test_lookup_ignores_case_underscores_and_spaces(upper: list[bool], under: bool, pad: bool) -> None:
    registry = make_registry()
    spelled = "".join(c.upper() if u else c for c, u in zip("step-size", upper, strict=True))
    if under:
        spelled = spelled.replace("-", "_")
    if pad:
        spelled = f"  {spelled} "
    assert normalize_name(spelled) == "step-size"
    assert registry.get(spelled) is registry.get("step-size")
    assert spelled in registry
    assert registry.canonical(spelled) == "step-size"


def test_make_builds_with_options() -> None:
    widget = make_registry().make("SS", eps=0.5, steps=7)
    assert (widget.eps, widget.steps) == (0.5, 7)  # type: ignore[attr-defined]


def test_unknown_name_lists_the_valid_names() -> None:
    registry = make_registry()
    with pytest.raises(ConfigError, match=r"unknown widget 'nope': use one of step-size, aimed"):
        registry.get("nope")
    with pytest.raises(ConfigError, match="unknown widget"):
        registry.make("nope")
    assert "nope" not in registry and 3 not in registry


def test_bad_options_name_the_component_and_what_it_accepts() -> None:
    registry = make_registry()
    with pytest.raises(ConfigError, match=r"bad options for the step-size widget: .*'epz'.*accepts: eps, steps"):
        registry.make("ss", epz=1.0)
    with pytest.raises(ConfigError, match=r"bad options for the step-size widget: eps must be a number"):
        registry.make("step-size", eps="big")
    with pytest.raises(ConfigError, match=r"aimed widget: .*accepts: no options"):
        registry.make("aimed", eps=1.0)


def test_names_must_be_unique_across_classes() -> None:
    registry = make_registry()

    class Other(Base):
        pass

    with pytest.raises(ConfigError, match=r"'ss' is taken by .*StepSize"):
        registry.register("fresh", aliases=("ss",))(Other)
    with pytest.raises(ConfigError, match="'aimed' is taken"):
        registry.register("AIMED")(Other)
    assert "fresh" not in registry


def test_registering_the_same_class_again_is_harmless() -> None:
    registry = make_registry()
    cls = registry.get("aimed")
    assert registry.register("aimed")(cls) is cls
    assert registry.names() == ("step-size", "aimed")


@pytest.mark.parametrize("bad", ["", "  ", "-lead", "has space", "semi;colon"])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="bad widget name"):
        make_registry().register(bad)


def test_components_must_subclass_the_base_and_declare_capabilities() -> None:
    registry = make_registry()

    class Stranger:
        norms = ("l2",)
        targeted = False

    with pytest.raises(ConfigError, match=r"must subclass .*Base"):
        registry.register("stranger")(Stranger)

    bare: Registry[object] = Registry("gadget", capabilities=("needs_model",))

    class Plain:
        pass

    with pytest.raises(ConfigError, match="does not declare the capabilities needs_model"):
        bare.register("plain")(Plain)
    with pytest.raises(ConfigError, match="must be a class or a factory"):
        bare.register("number")(3)  # type: ignore[type-var]


def test_factories_register_like_classes_and_must_return_the_base() -> None:
    registry: Registry[Base] = Registry("widget", base=Base)

    @registry.register("made", aliases=("factory",))
    def made(*, steps: int = 2) -> Base:
        widget = Base()
        widget.steps = steps  # type: ignore[attr-defined]
        return widget

    @registry.register("liar")
    def liar() -> Base:
        return "not a widget"  # type: ignore[return-value]

    assert registry.get("factory") is made
    assert registry.make("made", steps=5).steps == 5  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"bad options for the made widget: .*'eps'.*accepts: steps"):
        registry.make("made", eps=1.0)
    with pytest.raises(ConfigError, match=r"widget factory 'liar' .* returned str, not a Base"):
        registry.make("liar")


def test_select_matches_scalars_by_equality_and_collections_by_membership() -> None:
    registry = make_registry()
    assert registry.select() == ("step-size", "aimed")
    assert registry.select(norms="l2") == ("step-size", "aimed")
    assert registry.select(norms="linf") == ("step-size",)
    assert registry.select(targeted=True) == ("aimed",)
    assert registry.select(norms="linf", targeted=True) == ()
    assert registry.select(norms=("l2",)) == ("aimed",)
    with pytest.raises(ConfigError, match=r"unknown widget capabilities colour: use some of norms, targeted"):
        registry.select(colour="red")


def test_select_without_declared_capabilities_accepts_any_class_attribute() -> None:
    registry: Registry[object] = Registry("gadget")

    @registry.register("a")
    class A:
        fast = True

    @registry.register("b")
    class B:
        fast = False

    assert registry.select(fast=True) == ("a",)
    with pytest.raises(ConfigError, match="unknown gadget capabilities slow"):
        registry.select(slow=True)


# -- entry-point plugins --------------------------------------------------------------------


def write_plugin(root: Path, dist: str, group: str, points: dict[str, str], modules: dict[str, str]) -> Path:
    """A fake installed distribution: ``*.dist-info`` with ``entry_points.txt`` plus modules."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


GOOD = """
    import tests_registry_target as target

    class Loud(target.Base):
        norms = ("l1",)

    @target.REGISTRY.register("self-registered", aliases=("selfreg",))
    class Quiet(target.Base):
        targeted = True
"""


@pytest.fixture()
def target(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A registry reachable from plugin code as ``tests_registry_target.REGISTRY``."""
    group = f"hardened.tests-{tmp_path.name}"
    registry = make_registry(group)
    module = type(sys)("tests_registry_target")
    module.REGISTRY = registry  # type: ignore[attr-defined]
    module.Base = Base  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests_registry_target", module)
    return registry, group


def test_plugins_load_lazily_on_first_lookup(target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, group = target
    name = f"plug_{tmp_path.name.replace('-', '_')}"
    root = write_plugin(
        tmp_path / "site", "toy-plugin", group,
        {"loud": f"{name}:Loud", "quiet-module": name}, {name: GOOD},
    )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, name, raising=False)
    assert name not in sys.modules
    registry.register("late")(type("Late", (Base,), {}))  # registering does not load plugins
    assert name not in sys.modules
    assert set(registry.names()) == {"step-size", "aimed", "late", "loud", "self-registered"}
    assert name in sys.modules
    assert registry.get("SELFREG").__name__ == "Quiet"
    assert registry.make("loud").__class__.__name__ == "Loud"
    assert registry.select(norms="l1") == ("loud",)


def test_a_broken_plugin_is_named_and_does_not_hide_the_others(
    target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, group = target
    name = f"plug_{tmp_path.name.replace('-', '_')}"
    root = write_plugin(
        tmp_path / "site", "shaky-dist", group,
        {"broken": f"{name}_missing:Thing", "bad-class": f"{name}:NotAWidget", "good": f"{name}:Fine"},
        {name: """
            import tests_registry_target as target

            class NotAWidget:
                pass

            class Fine(target.Base):
                pass
        """},
    )
    monkeypatch.syspath_prepend(str(root))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert registry.names() == ("step-size", "aimed", "good")
    messages = [str(w.message) for w in caught]
    assert any("'broken'" in m and "shaky-dist" in m and "ModuleNotFoundError" in m for m in messages)
    assert any("'bad-class'" in m and "must subclass" in m for m in messages)
    with pytest.raises(ConfigError, match=r"widget plugin 'broken' .*shaky-dist.* failed to load: ModuleNotFoundError.*uninstall"):
        registry.get("broken")
    with pytest.raises(ConfigError, match="plugin 'bad-class'"):
        registry.make("bad_class")
    assert registry.make("step-size").steps == 3  # type: ignore[attr-defined]


def test_a_plugin_cannot_take_a_built_in_name(target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, group = target
    name = f"plug_{tmp_path.name.replace('-', '_')}"
    root = write_plugin(
        tmp_path / "site", "squatter", group, {"squat": name},
        {name: """
            import tests_registry_target as target

            @target.REGISTRY.register("aimed")
            class Impostor(target.Base):
                pass
        """},
    )
    monkeypatch.syspath_prepend(str(root))
    with pytest.warns(RuntimeWarning, match="'aimed' is taken"):
        names = registry.names()
    assert names == ("step-size", "aimed")
    assert registry.get("aimed").__name__ == "Aimed"


def test_an_entry_point_named_like_a_built_in_is_ignored_with_a_warning(
    target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, group = target
    name = f"plug_{tmp_path.name.replace('-', '_')}"
    root = write_plugin(
        tmp_path / "site", "shadow", group, {"SS": f"{name}:Shadow"},
        {name: """
            import tests_registry_target as target

            class Shadow(target.Base):
                pass
        """},
    )
    monkeypatch.syspath_prepend(str(root))
    with pytest.warns(RuntimeWarning, match=r"plugin 'SS' .* is ignored: the name is taken by .*StepSize"):
        assert registry.names() == ("step-size", "aimed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.load_plugins()  # a second scan is quiet: each entry point is read once
    assert registry.get("ss").__name__ == "StepSize"


GROUPS = ("attacks", "scores", "methods", "composites", "certificates", "audit_stages")


def test_import_hardened_loads_no_plugin(tmp_path: Path) -> None:
    root = write_plugin(
        tmp_path, "sentinel-dist", "hardened.attacks", {"sentinel": "sentinel_plugin:Thing"},
        {"sentinel_plugin": "raise SystemExit('imported at import time')\n"},
    )
    points = "".join(f"[hardened.{group}]\nsentinel = sentinel_plugin:Thing\n" for group in GROUPS)
    (root / "sentinel-dist-0.1.dist-info" / "entry_points.txt").write_text(points)
    source = "import hardened, sys; print('sentinel_plugin' in sys.modules)"
    src = Path(__file__).resolve().parents[1] / "src"
    env_path = f"{root}:{src}"
    result = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_builtins_module_is_imported_on_first_lookup(tmp_path, monkeypatch):
    """A family whose components load lazily (the audit's stages) lists them on the first
    lookup, without its caller importing their module first."""
    import sys

    (tmp_path / "lazy_family_mod.py").write_text(
        "from tests_lazy_registry import REG\n@REG.register('one')\nclass One:\n    pass\n"
    )
    (tmp_path / "tests_lazy_registry.py").write_text(
        "from hardened.registry import Registry\nREG = Registry('thing', builtins='lazy_family_mod')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import tests_lazy_registry

    assert "lazy_family_mod" not in sys.modules
    assert tests_lazy_registry.REG.names() == ("one",)
    assert "lazy_family_mod" in sys.modules


def test_audit_stages_are_listed_without_running_an_audit():
    import subprocess
    import sys

    code = "from hardened.audit import AUDIT_STAGES; print(','.join(AUDIT_STAGES.names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert set(out.strip().split(",")) == {"clean", "robustness", "minimal", "spatial", "explain-attacks",
                                           "gallery", "certify", "guard", "sanity"}
