"""One registry shape for every component family (attacks, scores, methods, composites...).

A family creates one ``Registry`` in a leaf module; each component registers itself with a
decorator in its own module, and the family's ``__init__`` imports those modules::

    ATTACKS = Registry[Attack]("attack", group="hardened.attacks",
                               capabilities=("norms", "targeted"))

    @ATTACKS.register("bim", aliases=("ifgsm",))
    class BIM(Attack):
        norms = ("linf", "l2")
        targeted = True

    ATTACKS.make("IFGSM", eps=0.1)      # names ignore case and ``_`` versus ``-``
    ATTACKS.select(norms="l2")          # names whose class attributes match

Capabilities are plain class attributes; ``select`` matches a scalar attribute by equality and
a collection attribute (tuple, set, frozenset, list) by membership.

Other packages add components through the entry-point group (as pytest plugins do), e.g. in
their ``pyproject.toml``::

    [project.entry-points."hardened.attacks"]
    toy = "hardened_toy.attacks:ToyAttack"

Components are usually classes; a family whose components are configured instances of one
class (LRP composites) registers factory functions instead, and ``make`` checks they return a
``base``. The group is read on the first lookup (never at ``import hardened``). An entry point
may name a class or factory (registered under the entry point's name unless it registered
itself) or a module whose decorators register its components. A plugin that fails to load does not break the others: it
is left out of ``names()``, and asking for it raises ``ConfigError`` naming the plugin, its
distribution and the original error.
"""

from __future__ import annotations

import importlib.metadata
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from inspect import Parameter, Signature, signature
from typing import Any, Generic, TypeVar

from hardened.errors import ConfigError, HardenedError

__all__ = ["Registry", "normalize_name"]

T = TypeVar("T")
C = TypeVar("C", bound=Callable[..., Any])

_NAME = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
_COLLECTIONS = (tuple, list, set, frozenset)
_VARIADIC = (Parameter.VAR_POSITIONAL, Parameter.VAR_KEYWORD)


def normalize_name(name: str) -> str:
    """The lookup form of a component name: stripped, lower case, ``_`` read as ``-``."""
    if not isinstance(name, str):
        raise ConfigError(f"a component name must be a string, got {type(name).__name__}")
    return name.strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """Named classes (or factories) of one family: aliases, capabilities, entry-point plugins.

    Args:
        kind: what one component is called in messages (``"attack"``, ``"guard score"``).
        group: the entry-point group other packages register through (``"hardened.attacks"``);
            ``None`` for no plugins.
        base: when given, every registered class must subclass it (and every factory must
            return an instance of it).
        capabilities: the class attributes every component must declare; ``select`` accepts
            only these keywords. Empty means "any attribute, none required".
        builtins: a module whose import registers the family's own components, imported on
            the first lookup when the family loads them lazily (the audit's stages).
    """

    def __init__(
        self,
        kind: str,
        *,
        group: str | None = None,
        base: type | None = None,
        capabilities: Iterable[str] = (),
        builtins: str | None = None,
    ) -> None:
        self.kind = kind
        self.group = group
        self.builtins = builtins
        self.base = base
        self.capabilities: tuple[str, ...] = tuple(capabilities)
        self._classes: dict[str, type[T]] = {}
        self._aliases: dict[str, str] = {}
        self._broken: dict[str, str] = {}
        self._seen: set[tuple[str, str]] = set()
        self._plugins_loaded = group is None and builtins is None

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, names={list(self._classes)})"

    # -- registration -------------------------------------------------------------------

    def register(self, name: str, *, aliases: Iterable[str] = ()) -> Callable[[C], C]:
        """Decorator: register a class (or a factory function) under ``name`` and ``aliases``.

        Returns the decorated object unchanged.
        """
        key = self._check_name(name)
        alias_keys = tuple(self._check_name(alias) for alias in aliases)

        def decorator(cls: C) -> C:
            self._add(key, alias_keys, cls)
            return cls

        return decorator

    def _check_name(self, name: str) -> str:
        key = normalize_name(name)
        if not _NAME.match(key):
            raise ConfigError(
                f"bad {self.kind} name {name!r}: use letters, digits, '-' and '.' "
                "(starting with a letter or digit)"
            )
        return key

    def _add(self, key: str, alias_keys: tuple[str, ...], cls: Any) -> None:
        if not callable(cls):
            raise ConfigError(f"the {self.kind} {key!r} must be a class or a factory, got {cls!r}")
        if isinstance(cls, type) and self.base is not None and not issubclass(cls, self.base):
            raise ConfigError(
                f"the {self.kind} {key!r} ({_qualname(cls)}) must subclass {_qualname(self.base)}"
            )
        missing = [cap for cap in self.capabilities if not hasattr(cls, cap)]
        if missing:
            raise ConfigError(
                f"the {self.kind} {key!r} ({_qualname(cls)}) does not declare the capabilities "
                f"{', '.join(missing)}: set them as class attributes"
            )
        for new in (key, *alias_keys):
            owner = self._classes.get(self._aliases.get(new, new))
            if owner is not None and _qualname(owner) != _qualname(cls):
                raise ConfigError(
                    f"the {self.kind} name {new!r} is taken by {_qualname(owner)}; "
                    f"cannot also give it to {_qualname(cls)}"
                )
        self._classes[key] = cls  # type: ignore[assignment]
        for alias in alias_keys:
            if alias != key:
                self._aliases[alias] = key

    # -- plugins ------------------------------------------------------------------------

    def load_plugins(self) -> None:
        """Import the built-in components' module, then load the entry-point group, now
        (lookups do it once, on first use; built-ins first, so they keep their names)."""
        self._plugins_loaded = True
        if self.builtins is not None:
            importlib.import_module(self.builtins)
        if self.group is None:
            return
        for point in importlib.metadata.entry_points(group=self.group):
            if (point.name, point.value) in self._seen:
                continue
            self._seen.add((point.name, point.value))
            key = normalize_name(point.name)
            taken = self._classes.get(self._aliases.get(key, key))
            if taken is not None:
                warnings.warn(
                    f"the {self.kind} plugin {point.name!r} ({point.value}) is ignored: the name "
                    f"is taken by {_qualname(taken)}", RuntimeWarning, stacklevel=2,
                )
                continue
            try:
                loaded = point.load()
                if callable(loaded) and loaded not in self._classes.values():
                    self._add(self._check_name(point.name), (), loaded)
            except Exception as error:  # a broken plugin must not hide the working ones
                self._broken[key] = _describe_failure(self.kind, point, error)
                warnings.warn(self._broken[key], RuntimeWarning, stacklevel=2)

    def _ensure_plugins(self) -> None:
        if not self._plugins_loaded:
            self.load_plugins()

    # -- lookup -------------------------------------------------------------------------

    def names(self) -> tuple[str, ...]:
        """The canonical names (no aliases) in registration order: built-ins, then plugins."""
        self._ensure_plugins()
        return tuple(self._classes)

    def aliases(self) -> dict[str, str]:
        """Every alias mapped to its canonical name."""
        self._ensure_plugins()
        return dict(self._aliases)

    def canonical(self, name: str) -> str:
        """The canonical name for ``name`` or an alias of it; ``ConfigError`` if unknown."""
        self._ensure_plugins()
        key = normalize_name(name)
        key = self._aliases.get(key, key)
        if key in self._classes:
            return key
        if key in self._broken:
            raise ConfigError(self._broken[key])
        listed = ", ".join(self.names()) or "(none registered)"
        raise ConfigError(f"unknown {self.kind} {name!r}: use one of {listed}")

    def get(self, name: str) -> type[T]:
        """The class (or factory) registered under ``name`` or an alias; ``ConfigError`` if unknown."""
        return self._classes[self.canonical(name)]

    def make(self, name: str, /, *args: Any, **options: Any) -> T:
        """Build the component ``name`` with ``options``; bad options give a ``ConfigError``.

        A factory's result must be an instance of ``base`` (when given).
        """
        key = self.canonical(name)
        cls = self._classes[key]
        sig = _signature(cls)
        if sig is not None:
            try:
                sig.bind(*args, **options)
            except TypeError as error:
                accepted = ", ".join(
                    p.name for p in sig.parameters.values() if p.kind not in _VARIADIC
                )
                raise ConfigError(
                    f"bad options for the {key} {self.kind}: {error}; it accepts: "
                    f"{accepted or 'no options'}"
                ) from error
        try:
            made = cls(*args, **options)
        except HardenedError:
            raise
        except (TypeError, ValueError) as error:  # e.g. int("abc") on an option given as text
            raise ConfigError(f"bad options for the {key} {self.kind}: {error}") from error
        if self.base is not None and not isinstance(made, self.base):
            raise ConfigError(
                f"the {self.kind} factory {key!r} ({_qualname(cls)}) returned "
                f"{type(made).__name__}, not a {self.base.__name__}"
            )
        return made  # type: ignore[no-any-return]

    def select(self, **capabilities: Any) -> tuple[str, ...]:
        """Canonical names whose class attributes match every keyword, in ``names()`` order.

        A scalar attribute matches by equality, a collection attribute by membership
        (``select(norms="l2")`` finds ``norms = ("linf", "l2")``).
        """
        self._ensure_plugins()
        known = set(self.capabilities) or {a for cls in self._classes.values() for a in dir(cls)}
        unknown = sorted(set(capabilities) - known)
        if unknown:
            listed = ", ".join(self.capabilities) or "the components' class attributes"
            raise ConfigError(
                f"unknown {self.kind} capabilities {', '.join(unknown)}: use some of {listed}"
            )
        return tuple(
            key
            for key in self._classes
            if all(_matches(self._classes[key], cap, want) for cap, want in capabilities.items())
        )

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self._ensure_plugins()
        key = normalize_name(name)
        return self._aliases.get(key, key) in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def _matches(cls: type, capability: str, want: Any) -> bool:
    if not hasattr(cls, capability):
        return False
    have = getattr(cls, capability)
    if isinstance(have, _COLLECTIONS) and not isinstance(want, _COLLECTIONS):
        return want in have
    return bool(have == want)


def _signature(cls: type) -> Signature | None:
    try:
        return signature(cls)
    except (TypeError, ValueError):
        return None


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _describe_failure(kind: str, point: importlib.metadata.EntryPoint, error: Exception) -> str:
    dist = getattr(point, "dist", None)
    source = f" from the distribution {dist.name!r}" if dist is not None else ""
    return (
        f"the {kind} plugin {point.name!r} (entry point {point.value!r} in the group "
        f"{point.group!r}{source}) failed to load: {type(error).__name__}: {error}; "
        "fix or uninstall that package"
    )
