"""A small client of ``POST /v1/predict`` (standard library only, no extra needed).

``predict_files(url, paths)`` uploads image files as multipart (the server decodes and resizes
them) and ``predict_arrays(url, images)`` posts a JSON batch; both return the parsed answer.
An HTTP error becomes a ``HardenedError`` carrying the server's own message.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hardened.errors import ConfigError, DataError, InputError

__all__ = ["predict_files", "predict_arrays", "predict_url"]


def predict_url(url: str) -> str:
    """``url`` of a service or of its predict endpoint -> the predict endpoint."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url must start with http:// or https://, got {url!r}")
    base = url.rstrip("/")
    return base if base.endswith("/v1/predict") else base + "/v1/predict"


def _post(url: str, body: bytes, content_type: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    if api_key:
        headers["X-API-Key"] = api_key
    request = urllib.request.Request(predict_url(url), data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the user's URL)
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            detail = json.loads(error.read()).get("detail", "")
        except (ValueError, AttributeError):
            detail = ""
        retry = f" (retry after {error.headers['Retry-After']} s)" if error.headers.get("Retry-After") else ""
        raise InputError(f"the service answered {error.code}: {detail or error.reason}{retry}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(f"cannot reach {predict_url(url)}: {reason}; is 'hardened serve' running there?") from None


def predict_files(url: str, paths: Sequence[str | os.PathLike[str]], *, api_key: str | None = None,
                  timeout: float = 60.0) -> dict[str, Any]:
    """Upload PNG/JPEG files as one multipart request; the service's answer (one per file, in order)."""
    boundary = uuid.uuid4().hex
    parts = []
    for entry in paths:
        path = Path(entry)
        if not path.is_file():
            raise DataError(f"{path} is not a file; give PNG or JPEG files")
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name.replace(chr(34), "_")}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        parts.append(head + path.read_bytes() + b"\r\n")
    if not parts:
        raise InputError("no files given: pass PNG or JPEG files")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return _post(url, body, f"multipart/form-data; boundary={boundary}", api_key, timeout)


def predict_arrays(url: str, images: Any, *, api_key: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Post ``images`` (N×C×H×W or N×H×W nested lists, an array or a tensor, in [0, 1]) as JSON."""
    values = images.tolist() if hasattr(images, "tolist") else images
    return _post(url, json.dumps({"images": values}).encode(), "application/json", api_key, timeout)
