"""The FastAPI application: ``create_app(predictor, settings)``.

Endpoints: ``POST /v1/predict`` (JSON ``{"images": [...]}``, a ``.npy`` array or multipart
PNG/JPEG uploads; one
answer per image, see ``schemas.ImageAnswer``), ``GET /healthz`` (alive), ``GET /readyz``
(loaded and warmed up: 200, else 503), ``GET /metrics`` (Prometheus text), ``GET /openapi.json``.

The request is read with a size limit before any parsing, parsed off the event loop, queued in
the micro-batcher (a full queue is 503 with ``Retry-After``) and answered when its batch has
run on the batcher's worker thread, so the event loop only moves bytes. On shutdown (uvicorn
stops accepting on SIGTERM and waits for the requests in flight) the batcher answers every
queued request before it stops. Every request is logged as one JSON line on the
``hardened.serve.access`` logger.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import torch
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from hardened import __version__
from hardened.errors import ConfigError
from hardened.serve.batching import Closed, MicroBatcher, QueueFull
from hardened.serve.inputs import Rejected, images_from_json, images_from_npy, images_from_uploads
from hardened.serve.metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from hardened.serve.predictors import Predictor
from hardened.serve.schemas import (
    NPY_MEDIA_TYPE,
    PREDICT_REQUEST_BODY,
    ErrorResponse,
    HealthResponse,
    PredictResponse,
)

__all__ = ["ServeSettings", "create_app", "API_KEY_HEADER"]

API_KEY_HEADER = "X-API-Key"
_INLINE_PARSE_BYTES = 64 * 1024  # smaller JSON bodies (a few images) parse on the event loop in < 1 ms
access_log = logging.getLogger("hardened.serve.access")
# request ids: one random prefix per process and a counter (uuid4 per request reads os.urandom,
# a system call that gives up the GIL to the batcher's worker on every request)
_ID_PREFIX = uuid.uuid4().hex[:12]
_ID_COUNTER = itertools.count()


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialised by orjson (several times faster than ``json.dumps`` on float lists)."""
    return Response(orjson.dumps(document), status_code=status, headers=headers, media_type="application/json")


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of one service.

    Attributes:
        max_batch: most images per model batch; 1 switches micro-batching off.
        max_wait_ms: longest a request waits for others to fill its batch.
        max_queue: most requests waiting; beyond it 503 with ``Retry-After: retry_after_s``.
        max_body_bytes: largest request body (413 beyond).
        max_images: most images in one request (413 beyond).
        max_pixels: most pixels in one uploaded image (413 beyond).
        api_key: when set, ``/v1/*`` needs it in the ``X-API-Key`` header (401 without).
        trace: trace the predictor's batch function into one TorchScript graph where it gives
            the same answers (``hardened.serve.tracing``). Off by default: on 2 CPU cores under
            load the traced service was slower (0.43× the bare forward against 0.76× eager).
    """

    max_batch: int = 32
    trace: bool = False
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_body_bytes: int = 16 * 2**20
    max_images: int = 64
    max_pixels: int = 4096 * 4096
    api_key: str | None = None
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_images", "max_pixels", "retry_after_s"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("the API key is empty; give a non-empty key or none")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"detail": message}, status, headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read in chunks; 413 as soon as it passes ``limit`` bytes (or declares more)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejected(413, f"the body is {int(declared)} bytes, over the limit of {limit} bytes; send fewer or smaller images")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejected(413, f"the body is over the limit of {limit} bytes; send fewer or smaller images")
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploads(request: Request, body: bytes, max_images: int) -> list[tuple[str, bytes]]:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=max_images, max_fields=max_images,
                                     max_part_size=len(body) + 1).parse()
    except MultiPartException as error:
        status = 413 if "Too many" in error.message else 422
        raise Rejected(status, f"the multipart body cannot be used: {error.message} (at most {max_images} files)") from None
    files = []
    for _, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.append((value.filename or "upload", await value.read()))
    await form.close()
    if not files:
        raise Rejected(422, "the multipart body has no files: upload PNG or JPEG files")
    return files


class _Service:
    """What one app holds: the predictor, its batcher, the metrics and the ready flag."""

    def __init__(self, predictor: Predictor, settings: ServeSettings) -> None:
        self.predictor, self.settings = predictor, settings
        self.batcher = MicroBatcher(predictor.predict, max_batch=settings.max_batch,
                                    max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue)
        self.metrics = ServiceMetrics(queue_depth=lambda: self.batcher.queue_depth)
        self.batcher.on_batch = self.metrics.observe_batch
        self.ready = False
        self.preparation = "not prepared yet"

    def warm_up(self) -> None:
        """Prepare the predictor (trace it where that gives the same answers), then one batch of
        zeros through it: loads kernels and allocates before the first client."""
        prepare = getattr(self.predictor, "prepare", None)
        self.preparation = prepare(self.settings.max_batch, trace=self.settings.trace) if prepare else "served eager"
        access_log.info(orjson.dumps({"event": "prepared", "kind": self.predictor.kind,
                                      "batch_function": self.preparation}).decode())
        self.predictor.predict(torch.zeros(1, *self.predictor.input_shape))

    async def predict(self, request: Request) -> Response:
        settings = self.settings
        if settings.api_key is not None:
            given = request.headers.get(API_KEY_HEADER, "")
            if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                return _error(401, f"missing or wrong API key: send it in the {API_KEY_HEADER} header",
                              {"WWW-Authenticate": API_KEY_HEADER})
        if not self.ready:
            return _error(503, "the model is not loaded yet (or the service is stopping); retry shortly",
                          {"Retry-After": str(settings.retry_after_s)})
        started = time.perf_counter()
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        shape = self.predictor.input_shape
        self.batcher.expect()
        try:
            body = await _read_body(request, settings.max_body_bytes)
            if content_type == "application/json" and len(body) <= _INLINE_PARSE_BYTES:
                x = images_from_json(body, shape, settings.max_images)  # a thread hop costs more
            elif content_type == "application/json":
                x = await run_in_threadpool(images_from_json, body, shape, settings.max_images)
            elif content_type == NPY_MEDIA_TYPE:
                x = images_from_npy(body, shape, settings.max_images)  # no text: microseconds
            elif content_type == "multipart/form-data":
                files = await _uploads(request, body, settings.max_images)
                x = await run_in_threadpool(images_from_uploads, files, shape, settings.max_images,
                                            settings.max_pixels)
            else:
                raise Rejected(415, f"content type {content_type or 'none'!r} is not accepted: send "
                                    'application/json {"images": [...]}, application/x-npy (np.save) '
                                    "or multipart/form-data PNG/JPEG files")
        except BaseException as error:
            self.batcher.withdraw()
            if isinstance(error, Rejected):
                return _error(error.status, error.message)
            raise
        self.metrics.stage.labels("parse").observe(time.perf_counter() - started)
        request.state.images = int(x.shape[0])
        try:
            future = self.batcher.submit(x, announced=True)  # ends the announcement, also when refused
        except (QueueFull, Closed) as busy:
            return _error(503, f"the service is busy ({busy}); retry after {settings.retry_after_s} s",
                          {"Retry-After": str(settings.retry_after_s)})
        answers = await asyncio.wrap_future(future)
        for index, answer in enumerate(answers):
            answer["index"] = index
        self.metrics.observe_answers(answers)
        return _json({"kind": self.predictor.kind, "n": len(answers), "predictions": answers})


class _AccessLog:
    """Pure ASGI middleware (no per-request task, unlike ``BaseHTTPMiddleware``): counts every
    answer by endpoint and code, times it, tags it with ``X-Request-ID`` and logs one JSON line."""

    def __init__(self, app: Any, service: _Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = dict(scope.get("headers", ())).get(b"x-request-id", b"")[:64]
        request_id = given.decode("latin-1") if given else f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
        status = [500]

        async def tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            seconds = time.perf_counter() - started
            path = scope.get("path", "")
            self.service.metrics.observe_request(path if path in _ENDPOINTS else "other", status[0], seconds)
            if access_log.isEnabledFor(logging.INFO):  # build the line only when someone reads it
                client = scope.get("client")
                access_log.info(orjson.dumps({
                    "event": "access", "time": round(time.time(), 6), "request_id": request_id,
                    "method": scope.get("method"), "path": path, "status": status[0],
                    "ms": round(1000 * seconds, 3), "client": client[0] if client else None,
                    "images": scope.get("state", {}).get("images")}).decode())


def create_app(predictor: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``predictor`` (see the module docstring); warmed up on startup."""
    service = _Service(predictor, settings or ServeSettings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.warm_up)
        service.batcher.start()
        service.ready = True
        try:
            yield
        finally:
            service.ready = False
            await run_in_threadpool(service.batcher.close)

    app = FastAPI(title="hardened", version=__version__, lifespan=lifespan,
                  description="A classifier that refuses unreliable inputs: guarded, smoothed or bare.")
    app.state.service = service

    app.add_middleware(_AccessLog, service=service)

    errors = {code: {"model": ErrorResponse} for code in (401, 413, 415, 422, 503)}

    @app.post("/v1/predict", response_model=PredictResponse, responses=errors,  # type: ignore[arg-type]
              openapi_extra={"requestBody": PREDICT_REQUEST_BODY},
              summary="Classify images, or refuse the unreliable ones")
    async def predict(request: Request) -> Response:
        return await service.predict(request)

    @app.get("/healthz", response_model=HealthResponse, summary="The process is alive")
    async def healthz() -> dict[str, Any]:
        return {"status": "alive", "ready": service.ready}

    @app.get("/readyz", response_model=HealthResponse, responses={503: {"model": HealthResponse}},
             summary="The model is loaded and warmed up")
    async def readyz() -> Response:
        return _json({"status": "ready" if service.ready else "not ready", "ready": service.ready},
                     200 if service.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


_ENDPOINTS = frozenset({"/v1/predict", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})
