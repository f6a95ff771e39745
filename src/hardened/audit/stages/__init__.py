"""The audit's stages, one module each; importing this package registers every one of them.

Every module here is imported (so a new stage is one new file with ``@register_stage``); the
report order is each stage's ``position``.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")
