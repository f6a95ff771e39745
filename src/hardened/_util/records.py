"""Typed reads of JSON records written to disk (sidecars, guard.json, run settings).

A record read from a file is data from an unknown source: every field is checked for its type
and range before use, and anything else raises the caller's ``HardenedError`` subclass with the
file and the field named. Booleans are never accepted as numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hardened.errors import HardenedError

__all__ = [
    "MAX_CLASSES",
    "MAX_IMAGE_SIDE",
    "MAX_CHANNELS",
    "RecordReader",
    "read_json_object",
]

MAX_CLASSES = 10_000
MAX_CHANNELS = 16
MAX_IMAGE_SIDE = 4096


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_json_object(path: Path, error: type[HardenedError], hint: str = "") -> dict[str, Any]:
    """The JSON object in ``path``, else ``error`` (unreadable, not JSON, or not an object)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as problem:
        raise error(f"cannot read {path}: {problem}{hint}") from problem
    if not isinstance(record, dict):
        raise error(f"{path} must hold a JSON object, got a JSON {type(record).__name__}{hint}")
    return record


class RecordReader:
    """Checked field access on one JSON object; failures raise ``error`` naming ``where``."""

    def __init__(self, record: dict[str, Any], where: str, error: type[HardenedError]) -> None:
        self.record = record
        self.where = where
        self.error = error

    def fail(self, key: str, expected: str, value: Any) -> HardenedError:
        return self.error(f"{self.where}: {key!r} must be {expected}, got {_show(value)}")

    def get(self, key: str) -> Any:
        return self.record.get(key)

    def integer(self, key: str, lo: int, hi: int, *, optional: bool = False, value: Any = ...) -> int | None:
        """An int in ``[lo, hi]`` (``None`` allowed when ``optional``)."""
        value = self.record.get(key) if value is ... else value
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(key, f"an integer in [{lo}, {hi}]", value)
        return value

    def number(self, key: str, *, optional: bool = False, finite: bool = True) -> float | None:
        """A JSON number (finite unless ``finite=False``)."""
        value = self.record.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, "a number", value)
        if finite and not math.isfinite(float(value)):
            raise self.fail(key, "a finite number", value)
        return float(value)

    def text(self, key: str, *, optional: bool = False, max_length: int = 4096) -> str | None:
        value = self.record.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or len(value) > max_length:
            raise self.fail(key, f"a string of at most {max_length} characters", value)
        return value

    def mapping(self, key: str, *, optional: bool = True) -> dict[str, Any]:
        """A JSON object (``{}`` when absent/null and ``optional``)."""
        value = self.record.get(key)
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, "a JSON object", value)
        return value

    def int_list(self, key: str, lo: int, hi: int, *, length: int | None = None,
                 max_length: int = 64, value: Any = ...) -> tuple[int, ...]:
        """A list of ints each in ``[lo, hi]`` (of exactly ``length`` items when given)."""
        value = self.record.get(key) if value is ... else value
        wanted = f"a list of {length if length is not None else f'at most {max_length}'} integers in [{lo}, {hi}]"
        if not isinstance(value, list | tuple) or (length is not None and len(value) != length) \
                or len(value) > max_length:
            raise self.fail(key, wanted, value)
        if any(isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi for v in value):
            raise self.fail(key, wanted, value)
        return tuple(value)

    def float_list(self, key: str, length: int) -> tuple[float, ...]:
        """A list of ``length`` finite numbers."""
        value = self.record.get(key)
        wanted = f"a list of {length} finite numbers"
        if not isinstance(value, list | tuple) or len(value) != length:
            raise self.fail(key, wanted, value)
        if any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in value):
            raise self.fail(key, wanted, value)
        return tuple(float(v) for v in value)

    def str_list(self, key: str, *, optional: bool = True, max_length: int = MAX_CLASSES) -> tuple[str, ...] | None:
        value = self.record.get(key)
        if value is None and optional:
            return None
        wanted = f"a list of at most {max_length} strings"
        if not isinstance(value, list) or len(value) > max_length or not all(isinstance(v, str) for v in value):
            raise self.fail(key, wanted, value)
        return tuple(value)

    def shape(self, key: str, *, optional: bool = False) -> tuple[int, int, int] | None:
        """An image shape C×H×W with ``1 <= C <= MAX_CHANNELS`` and sides up to ``MAX_IMAGE_SIDE``."""
        value = self.record.get(key)
        if value is None and optional:
            return None
        wanted = f"[C, H, W] with C in [1, {MAX_CHANNELS}] and H, W in [1, {MAX_IMAGE_SIDE}]"
        if not isinstance(value, list | tuple) or len(value) != 3:
            raise self.fail(key, wanted, value)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in value) \
                or not 1 <= value[0] <= MAX_CHANNELS or not all(1 <= v <= MAX_IMAGE_SIDE for v in value[1:]):
            raise self.fail(key, wanted, value)
        return int(value[0]), int(value[1]), int(value[2])
