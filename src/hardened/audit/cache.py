"""The stage cache: ``out_dir/stages/<name>.json`` holds a stage's result under a key.

The key is a sha256 over the audit schema version, the library version
(``hardened.__version__``), the stage's name and its OWN budget slice, the model's digest, a
digest of the data's contents (x and y bytes, dtypes, shapes, classes, both splits), the seed
and the keys of the stages it requires. Any change to one of them re-runs the stage; nothing
else does. A cached figure is used only when it resolves to a file inside the figures folder
(a prepared ``stages/*.json`` naming ``../../etc/...`` is refused and the stage re-runs).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hardened
from hardened._util.atomic import write_json
from hardened._util.digests import sha256_hex, tensor_digest
from hardened._util.paths import inside
from hardened.audit.result import AUDIT_SCHEMA_VERSION, StageResult
from hardened.audit.stage import Summary
from hardened.data.dataset import Splits

__all__ = ["data_digest", "load_cached", "stage_key", "store"]


def data_digest(splits: Splits) -> str:
    """sha256 (16 hex digits) over the contents of both splits: x and y (names, dtypes, shapes,
    bytes through ``tensor_digest``) and the class names."""
    tensors = {f"{part}.{field}": getattr(getattr(splits, part), field)
               for part in ("train", "test") for field in ("x", "y")}
    classes = json.dumps([list(splits.train.classes), list(splits.test.classes)])
    return sha256_hex(f"{tensor_digest(tensors)}:{classes}".encode())[:16]


def stage_key(*, name: str, budget: Any, model: str, data: str, seed: int, requires: Iterable[str] = ()) -> str:
    """The cache key of one stage (``budget`` is its slice dataclass; ``requires`` the keys of
    the stages it reads)."""
    parts = {
        "schema": AUDIT_SCHEMA_VERSION,
        "version": hardened.__version__,
        "stage": name,
        "budget": {type(budget).__name__: dataclasses.asdict(budget)},
        "model": model,
        "data": data,
        "seed": seed,
        "requires": list(requires),
    }
    return sha256_hex(json.dumps(parts, sort_keys=True).encode())[:16]


def load_cached(path: Path, key: str, summary_type: type[Summary] | None, figures_dir: Path) -> StageResult | None:
    """The stored ``ok`` result under ``key``, or None (missing, stale, unreadable, or naming a
    figure that is missing or outside ``figures_dir``)."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") != key or stored["result"].get("status") != "ok":
            return None
        result = StageResult.from_dict(stored["result"], summary_type)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    for name in result.figures.values():
        figure = inside(figures_dir, name) if isinstance(name, str) else None
        if figure is None or not figure.is_file():
            return None
    return result


def store(path: Path, key: str, result: StageResult) -> None:
    """Write ``result`` under ``key`` atomically."""
    write_json(path, {"key": key, "result": result.to_dict()})
