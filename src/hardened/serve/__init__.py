"""``hardened serve``: a guarded, smoothed or bare classifier as an HTTP service (extra ``[serve]``).

Modules: ``predictors`` (one batch in, one answer per image out), ``batching`` (the bounded
micro-batching queue and its worker thread), ``metrics`` (Prometheus), ``schemas`` (the API's
pydantic models), ``app`` (the FastAPI application factory), ``client`` (a urllib client,
no extra needed). ``create_app`` and ``ServeSettings`` are imported lazily so that
``import hardened.serve`` works without FastAPI installed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from hardened.errors import ConfigError

__all__ = ["create_app", "ServeSettings", "require_serve_extra"]

# module names to look for -> the package that provides them (python-multipart < 0.0.13: "multipart")
_EXTRA = {("fastapi",): "fastapi", ("uvicorn",): "uvicorn", ("prometheus_client",): "prometheus-client",
          ("python_multipart", "multipart"): "python-multipart", ("orjson",): "orjson"}


def require_serve_extra() -> None:
    """``ConfigError`` naming ``pip install "hardened[serve]"`` when a package of the extra is missing."""
    missing = [package for modules, package in _EXTRA.items()
               if all(importlib.util.find_spec(module) is None for module in modules)]
    if missing:
        raise ConfigError(f"the HTTP service needs {', '.join(missing)}, which are not installed: "
                          'pip install "hardened[serve]"')


def __getattr__(name: str) -> Any:
    if name in ("create_app", "ServeSettings"):
        require_serve_extra()
        from hardened.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'hardened.serve' has no attribute {name!r}")
