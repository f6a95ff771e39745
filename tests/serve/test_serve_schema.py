"""schemathesis against the OpenAPI schema of a real ``hardened serve`` process: cases generated
from the schema, valid and invalid (malformed bodies, wrong types, missing fields, wrong
content types), never get a 5xx, answer with a documented status code, and a 200 answer
conforms to the documented response schema. Bounded (``max_examples``) to run in about 20 s.

Huge and hostile shapes the generator rarely reaches are sent by hand beside it: very long
and very deep arrays, a huge declared body, a decompression-bomb-sized PNG header.
"""

from __future__ import annotations

import struct
import zlib

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(guard_server):
    return schemathesis.openapi.from_url(f"{guard_server.url}/openapi.json")


_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_cases_never_get_a_5xx(api_schema, mode):
    """Every operation of the schema, ``max_examples`` cases each, valid (positive) or made to break
    the schema (negative: wrong types, missing fields, malformed bodies).

    (schemathesis' own pytest loader, ``from_fixture``, relies on pytest internals that pytest 9
    removed, so the cases are drawn from each operation's hypothesis strategy here.)"""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/healthz", "/readyz", "/metrics"}
    if mode is GenerationMode.NEGATIVE:  # the GET endpoints take nothing that could be made invalid
        operations = [op for op in operations if op.method.upper() == "POST"]
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def call(case) -> None:
            case.call_and_validate(checks=_CHECKS, timeout=30)

        call()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` pixels and holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("name, content, content_type, status", [
    ("one image 1×1×100000", b'{"images": [[[' + b",".join([b"0"] * 100_000) + b"]]]}", "application/json", 422),
    ("2000 images (over --max-images 16)", b'{"images": [' + b",".join([b"[[0]]"] * 2000) + b"]}",
     "application/json", 413),
    ("arrays nested 5000 deep", b'{"images": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json", 422),
    ("a body over 1 MiB", b'{"images": [[[' + b"0," * 600_000 + b"0]]]}", "application/json", 413),
    ("a 60000×60000 PNG header", _png_header(60_000, 60_000), "image/png", 415),
    ("a number too large for float32", b'{"images": [[[1e400]]]}', "application/json", 422),
    ("a string where numbers go", b'{"images": [[["0"]]]}', "application/json", 422),
    ("no body", b"", "application/json", 422),
])
def test_huge_and_hostile_bodies_are_4xx(guard_server, name, content, content_type, status):
    response = httpx.post(f"{guard_server.url}/v1/predict", content=content, headers={"content-type": content_type},
                          timeout=30)
    assert response.status_code == status, (name, response.text)
    assert response.json()["detail"]


def test_a_huge_png_upload_is_413(guard_server):
    files = [("files", ("bomb.png", _png_header(60_000, 60_000), "image/png"))]
    response = httpx.post(f"{guard_server.url}/v1/predict", files=files, timeout=30)
    assert response.status_code == 413 and "pixels" in response.json()["detail"]
