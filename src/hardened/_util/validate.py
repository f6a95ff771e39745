"""Typed option checks shared by every configurable component (attacks first).

Each check returns the value converted to its plain Python type or raises ``ConfigError`` naming
the option, what it got and what is allowed. They are strict on purpose: ``bool`` is not a number
(``steps=True`` is a bug, not 1), strings are never parsed (``eps='0.1'`` is refused, not read as
0.1), an integer option takes only integers (``steps=1.5`` is refused, not truncated to 1).
``numbers.Integral`` / ``numbers.Real`` accept numpy scalars as well as ``int`` and ``float``.
"""

from __future__ import annotations

import math
import numbers

from hardened.errors import ConfigError

__all__ = ["check_flag", "check_int", "check_real", "check_seed", "SEED_MAX"]

SEED_MAX = 2**63 - 1  # fits a signed 64-bit integer (torch generators take up to 2**64 - 1)


def check_int(value: object, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (either side optional)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ConfigError(f"{name} must be an integer{_range(minimum, maximum)}, got {number}")
    return number


def check_real(
    value: object,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_below: bool = False,
    open_above: bool = False,
) -> float:
    """``value`` as a finite ``float`` within the bounds (closed unless ``open_*`` is set)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    number = float(value)
    low_bad = minimum is not None and (number <= minimum if open_below else number < minimum)
    high_bad = maximum is not None and (number >= maximum if open_above else number > maximum)
    if not math.isfinite(number) or low_bad or high_bad:
        allowed = _range(minimum, maximum, open_below=open_below, open_above=open_above)
        raise ConfigError(f"{name} must be a finite number{allowed}, got {value!r}")
    return number


def check_flag(value: object, name: str) -> bool:
    """``value`` if it is a ``bool`` (``early_stop='no'`` would otherwise count as true)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_seed(value: object, name: str = "seed") -> int | None:
    """A seed: ``None`` (fresh entropy) or an integer in ``[0, 2**63 - 1]``."""
    if value is None:
        return None
    return check_int(value, name, minimum=0, maximum=SEED_MAX)


def _range(
    minimum: float | None, maximum: float | None, *, open_below: bool = False, open_above: bool = False
) -> str:
    """`` in [a, b]``, `` >= a``, `` < b``... (with a leading space), or ``""`` for no bounds."""
    if minimum is not None and maximum is not None:
        low, high = "(" if open_below else "[", ")" if open_above else "]"
        return f" in {low}{_number(minimum)}, {_number(maximum)}{high}"
    if minimum is not None:
        return f" {'>' if open_below else '>='} {_number(minimum)}"
    if maximum is not None:
        return f" {'<' if open_above else '<='} {_number(maximum)}"
    return ""


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"
