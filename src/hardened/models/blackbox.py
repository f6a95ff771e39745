"""Black-box targets: anything that maps images to scores (or only to labels), counted and budgeted.

A target is a callable ``x -> scores`` (N×C×H×W float in [0, 1] -> float32 N×K), so every
attack with ``needs_gradients = False`` (Square, NES, HopSkipJump) runs on it unchanged:

- ``TorchTarget``: an ``nn.Module`` used without gradients (eval mode, ``no_grad``);
- ``CallableTarget``: any Python function returning a tensor or an array;
- ``OnnxTarget``: an ``onnxruntime.InferenceSession`` or a ``.onnx`` file (extra ``hardened[onnx]``);
- ``HttpTarget``: a remote endpoint, JSON arrays or PNG upload, the ``hardened serve`` API by
  default (``POST {url}/v1/predict``); the request/response mapping is one ``HttpMapping``.

Every target counts the images it answered (``queries``) and keeps a hard ``budget``: a query
that would exceed it is refused before it is sent (``QueryBudgetExceeded``), so the budget is
never exceeded. An answer of the wrong shape, non-finite or unparsable is a ``TargetError``.
A target that answers labels only gives one-hot scores (``labels_only = True``); probabilities
are turned into log-probabilities, whose softmax is the probabilities again.

``OutputsOnly`` presents a target as an ``nn.Module`` without gradients, for the code that takes
modules but only runs them forward (accuracy, smoothing, guards, score-based attacks): its
forward refuses an input that requires a gradient, so a gradient method fails with a message.

``attack_target`` runs an attack batch by batch and, when the target fails or the budget is
spent, attaches the merged result of the finished batches to the error (``error.partial``).
"""

from __future__ import annotations

import http.client
import io
import json
import math
import time
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from hardened._util.batching import batch_slices, eval_mode
from hardened._util.validate import check_int, check_real
from hardened.errors import ConfigError, InputError, QueryBudgetExceeded, TargetError

if TYPE_CHECKING:
    from hardened._util.progress import ProgressTask
    from hardened.attacks.base import Attack, AttackResult

__all__ = [
    "BlackBox", "TorchTarget", "CallableTarget", "OnnxTarget", "HttpTarget", "HttpMapping",
    "OutputsOnly", "as_target", "attack_target",
]


class BlackBox(ABC):
    """A counted, budgeted map images N×C×H×W -> scores N×K (float32, on the images' device).

    Args:
        budget: the most images this target answers over its life (``None``: no limit).
        num_classes: K; needed by labels-only targets (one-hot scores), checked otherwise.
        labels_only: the target answers labels, not scores.

    Attributes:
        queries: images answered so far (what the budget limits); calls: queries made.
        on_query: called with the number of images after each answered query (``None``: no
            one listens); ``attack_target`` uses it to move a progress bar query by query.
    """

    on_query: Callable[[int], None] | None = None

    def __init__(self, *, budget: int | None = None, num_classes: int | None = None,
                 labels_only: bool = False) -> None:
        self.budget = None if budget is None else check_int(budget, "budget", minimum=0)
        self.num_classes = None if num_classes is None else check_int(num_classes, "num_classes", minimum=1)
        self.labels_only = bool(labels_only)
        if self.labels_only and self.num_classes is None:
            raise ConfigError("a labels-only target needs num_classes= (the scores are one-hot)")
        self.queries = 0
        self.calls = 0

    @property
    def remaining(self) -> int | None:
        """Images the budget still allows (``None``: no limit)."""
        return None if self.budget is None else self.budget - self.queries

    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(f"a black-box target takes images N×C×H×W, got {shape}")
        n = x.shape[0]
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(self.queries, self.budget, n)
        before = self.queries
        answer = self._answer(x.detach())
        self.calls += 1
        scores = self._as_scores(answer, n).to(x.device)
        self.queries = before + n
        if self.on_query is not None:
            self.on_query(n)
        return scores

    def labels(self, x: Tensor) -> Tensor:
        """The predicted labels (N,), int64."""
        return self(x).argmax(dim=1)

    @abstractmethod
    def _answer(self, x: Tensor) -> Any:
        """The raw answer for ``x``: scores N×K or labels N (tensor, array or nested lists)."""

    def _as_scores(self, answer: Any, n: int) -> Tensor:
        try:
            values = torch.as_tensor(np.asarray(answer, dtype=np.float64))
        except (TypeError, ValueError) as error:
            raise TargetError(f"the target answered something that is not numbers ({error})") from error
        if self.labels_only:
            return self._one_hot(values, n)
        if values.dim() != 2 or values.shape[0] != n:
            raise TargetError(f"the target must answer scores N×K, got shape {tuple(values.shape)} for {n} images")
        if self.num_classes is not None and values.shape[1] != self.num_classes:
            raise TargetError(f"the target answered {values.shape[1]} scores per image, expected {self.num_classes}")
        if not bool(torch.isfinite(values).all()):
            raise TargetError("the target answered NaN or infinite scores")
        return values.float()

    def _one_hot(self, labels: Tensor, n: int) -> Tensor:
        assert self.num_classes is not None
        if labels.shape != (n,) or not bool(torch.isfinite(labels).all()) or not bool((labels == labels.round()).all()):
            raise TargetError(f"the target must answer {n} integer labels, got shape {tuple(labels.shape)}")
        if n and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise TargetError(f"the target answered labels outside 0..{self.num_classes - 1}")
        return nn.functional.one_hot(labels.long(), self.num_classes).float()


class TorchTarget(BlackBox):
    """An ``nn.Module`` queried without gradients, in eval mode (restored after each query)."""

    def __init__(self, model: nn.Module, **options: Any) -> None:
        super().__init__(**options)
        self.model = model

    def _answer(self, x: Tensor) -> Tensor:
        with eval_mode(self.model), torch.no_grad():
            return self.model(x).double().cpu()


class CallableTarget(BlackBox):
    """Any function ``x -> scores`` (or labels, with ``labels_only=True``): tensor, array or lists."""

    def __init__(self, fn: Callable[[Tensor], Any], **options: Any) -> None:
        super().__init__(**options)
        if not callable(fn):
            raise ConfigError(f"the target must be callable, got {type(fn).__name__}")
        self.fn = fn

    def _answer(self, x: Tensor) -> Any:
        with torch.no_grad():
            out = self.fn(x)
        return out.detach().double().cpu() if isinstance(out, Tensor) else out


class OnnxTarget(BlackBox):
    """An ``onnxruntime.InferenceSession`` (or a ``.onnx`` path): first input fed float32 N×C×H×W,
    output ``output`` (index) read as scores."""

    def __init__(self, session: Any, *, output: int = 0, **options: Any) -> None:
        super().__init__(**options)
        if isinstance(session, str | Path):
            try:
                import onnxruntime
            except ImportError as error:
                raise ConfigError("ONNX targets need onnxruntime: pip install 'hardened[onnx]'") from error
            if not Path(session).is_file():
                raise ConfigError(f"no ONNX file at {session}")
            session = onnxruntime.InferenceSession(str(session), providers=["CPUExecutionProvider"])
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output = check_int(output, "output", minimum=0)

    def _answer(self, x: Tensor) -> Any:
        feed = {self.input_name: x.cpu().numpy().astype(np.float32)}
        return self.session.run(None, feed)[self.output]


@dataclass(frozen=True)
class HttpMapping:
    """How images become a request and an answer becomes scores: adjust this for another API.

    Defaults are the ``hardened serve`` API: ``POST {url}/v1/predict`` with JSON
    ``{"images": N×C×H×W}`` answering ``{"predictions": [{"label", "probabilities"}, ...]}``.

    Attributes:
        path: appended to the target's url.
        encoding: ``"json"`` (nested lists) or ``"png"`` (multipart upload, one 8-bit PNG per
            image in field ``png_field``; the images are quantised to 1/255).
        images_key: JSON field of the images.
        predictions_key: answer field holding one entry per image (``""``: the answer itself).
        scores_key: field of an entry holding its scores (``None``: labels only; an entry may
            also be a bare list of scores or a bare label).
        label_key: field of an entry holding its label.
        probabilities: the scores are probabilities (turned into log-probabilities) rather
            than logits.
    """

    path: str = "/v1/predict"
    encoding: str = "json"
    images_key: str = "images"
    predictions_key: str = "predictions"
    scores_key: str | None = "probabilities"
    label_key: str = "label"
    probabilities: bool = True
    png_field: str = "files"

    def __post_init__(self) -> None:
        if self.encoding not in ("json", "png"):
            raise ConfigError(f"HttpMapping.encoding must be 'json' or 'png', got {self.encoding!r}")

    def request(self, x: Tensor) -> tuple[bytes, str]:
        """The request body and its content type for images ``x``."""
        if self.encoding == "json":
            return json.dumps({self.images_key: x.cpu().tolist()}).encode(), "application/json"
        return _multipart(self.png_field, [_png(image) for image in x.cpu()])

    def scores(self, body: bytes, n: int) -> Any:
        """Scores N×K (or labels N when ``scores_key`` is ``None``) from an answer's body."""
        try:
            answer = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise TargetError(f"the endpoint answered something that is not JSON: {body[:80]!r}") from error
        entries = answer
        if self.predictions_key:
            if not isinstance(answer, dict) or self.predictions_key not in answer:
                raise TargetError(f"the endpoint's answer has no {self.predictions_key!r} field: {str(answer)[:80]}")
            entries = answer[self.predictions_key]
        if not isinstance(entries, list) or len(entries) != n:
            count = len(entries) if isinstance(entries, list) else type(entries).__name__
            raise TargetError(f"the endpoint answered {count} predictions for {n} images")
        key = self.scores_key if self.scores_key is not None else self.label_key
        try:
            values = [e[key] if isinstance(e, dict) else e for e in entries]
        except KeyError as error:
            raise TargetError(f"a prediction of the endpoint has no {key!r} field") from error
        if self.scores_key is None or not self.probabilities:
            return values
        try:
            probabilities = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise TargetError(f"the endpoint's {key!r} are not numbers ({error})") from error
        if probabilities.size and (probabilities.min() < 0 or not np.isfinite(probabilities).all()):
            raise TargetError(f"the endpoint's {key!r} are not probabilities (negative or not finite)")
        return np.log(np.clip(probabilities, 1e-30, None))


def _png(image: Tensor) -> bytes:
    from PIL import Image

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _multipart(field: str, files: Sequence[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for i, data in enumerate(files):
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="image{i}.png"\r\n'
                "Content-Type: image/png\r\n\r\n")
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class HttpTarget(BlackBox):
    """A remote classifier behind HTTP: timeouts, retries with backoff, a rate limit, a budget.

    A query of more than ``max_batch`` images is sent as several requests. A request that fails
    with a 5xx status, a connection error or a timeout is retried ``retries`` times after
    ``backoff * 2**attempt`` seconds; a 4xx status fails at once. Requests are spaced at least
    ``1 / rate`` seconds apart (``rate`` requests per second; ``None``: no limit). Only answered
    images count as queries.

    Args:
        url: the service's base url (``mapping.path`` is appended unless the url ends with it).
        mapping: the request/response mapping (default: the ``hardened serve`` API).
        timeout: seconds per request; headers: extra HTTP headers (e.g. an API key).
        budget, num_classes: see ``BlackBox``; labels-only when ``mapping.scores_key`` is None.
    """

    def __init__(
        self,
        url: str,
        *,
        mapping: HttpMapping | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        rate: float | None = None,
        max_batch: int = 256,
        headers: dict[str, str] | None = None,
        budget: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.mapping = mapping or HttpMapping()
        super().__init__(budget=budget, num_classes=num_classes, labels_only=self.mapping.scores_key is None)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"the target url must start with http:// or https://, got {url!r}")
        base = url.rstrip("/")
        self.url = base if base.endswith(self.mapping.path) else base + self.mapping.path
        self.timeout = check_real(timeout, "timeout", minimum=0.0, open_below=True)
        self.retries = check_int(retries, "retries", minimum=0)
        self.backoff = check_real(backoff, "backoff", minimum=0.0)
        self.rate = None if rate is None else check_real(rate, "rate", minimum=0.0, open_below=True)
        self.max_batch = check_int(max_batch, "max_batch", minimum=1)
        self.headers = dict(headers or {})
        self._last_request = -math.inf

    def _answer(self, x: Tensor) -> Any:
        parts = []
        for s in batch_slices(x.shape[0], self.max_batch):
            parts.append(self._send(x[s]))
            self.queries += s.stop - s.start  # answered images count even if a later request fails
        return parts[0] if len(parts) == 1 else [row for part in parts for row in list(part)]

    def _send(self, x: Tensor) -> Any:
        body, content_type = self.mapping.request(x)
        failure = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self._wait_for_rate()
            request = urllib.request.Request(
                self.url, data=body, method="POST", headers={"Content-Type": content_type, **self.headers})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return self.mapping.scores(response.read(), x.shape[0])
            except urllib.error.HTTPError as error:
                detail = error.read()[:200].decode(errors="replace")
                if error.code < 500:
                    raise TargetError(f"the endpoint {self.url} refused the request: HTTP {error.code} {detail}") from error
                failure = f"HTTP {error.code} {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
                reason = getattr(error, "reason", error)
                failure = f"{type(reason).__name__}: {reason}"
        raise TargetError(
            f"the endpoint {self.url} failed {self.retries + 1} times (last: {failure}); check that "
            "it is up, or raise timeout= / retries="
        )

    def __repr__(self) -> str:
        return f"HttpTarget({self.url!r})"

    def _wait_for_rate(self) -> None:
        if self.rate is not None:
            wait = self._last_request + 1.0 / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last_request = time.monotonic()


def as_target(model: Any, **options: Any) -> BlackBox:
    """A ``BlackBox`` for a target given as a module, an ONNX session or path, a url, or a callable."""
    if isinstance(model, BlackBox):
        return model
    if isinstance(model, nn.Module):
        return TorchTarget(model, **options)
    if isinstance(model, str) and model.startswith(("http://", "https://")):
        return HttpTarget(model, **options)
    if isinstance(model, str | Path) or hasattr(model, "get_inputs"):
        return OnnxTarget(model, **options)
    return CallableTarget(model, **options)


class OutputsOnly(nn.Module):
    """A ``BlackBox`` as an ``nn.Module`` (no parameters, no gradients): ``forward(x)`` is
    ``target(x)``, counted in ``target.queries``. An input that requires a gradient is refused
    with a ``ConfigError``, so gradient attacks and explanations fail clearly, not silently.
    ``bounds``: clamp every input into them first, for a target that refuses images outside
    them (an HTTP endpoint, given the Gaussian noise of smoothing): the model is then f∘clip."""

    def __init__(self, target: BlackBox, source: str = "", bounds: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.target = target
        self.source = source or repr(target)
        self.bounds = bounds

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and isinstance(x, Tensor) and x.requires_grad:
            raise ConfigError(
                f"{self.source} is an outputs-only model: it gives no gradients; use a score-based "
                "attack (square) or a transfer attack from a surrogate model"
            )
        return self.target(x if self.bounds is None else x.clamp(*self.bounds))

    @property
    def queries(self) -> int:
        """Images answered by the target so far."""
        return self.target.queries

    def extra_repr(self) -> str:
        return self.source


def attack_target(
    attack: Attack,
    target: BlackBox,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 100,
    targets: Tensor | None = None,
    bar: ProgressTask | None = None,
    queries_per_image: int | None = None,
) -> AttackResult:
    """Run ``attack`` on ``target`` batch by batch; return the merged ``AttackResult``.

    ``bar``, if given, shows the queries spent. Without ``queries_per_image`` it advances by the
    images of each finished batch. With it (the most images the target answers per attacked
    image: the attack's budget plus one each for its input check and final measurement; the
    bar's total is ``len(x) * queries_per_image``) it advances with every query the target
    answers, and by a batch's unspent budget once the batch is done, so it ends full.

    When the target fails (``TargetError``) or its budget is spent (``QueryBudgetExceeded``),
    the error is raised with ``error.partial`` = the merged result of the finished batches
    (``None`` if none finished), so nothing already found is lost.
    """
    from hardened.attacks.base import merge_results

    def spent(n: int) -> None:
        assert bar is not None
        bar.advance(n)
        bar.describe(f"{attack.name}: {target.queries:,} queries")

    listening = bar is not None and queries_per_image is not None
    previous = target.on_query
    if listening:
        target.on_query = spent
    parts = []
    try:
        for s in batch_slices(len(x), batch_size):
            before = target.queries
            parts.append(attack(target, x[s], y[s], targets=None if targets is None else targets[s]))
            if bar is not None:
                images = s.stop - s.start
                if queries_per_image is None:
                    bar.advance(images)
                else:
                    bar.advance(max(0, images * queries_per_image - (target.queries - before)))
                bar.describe(f"{attack.name}: {target.queries:,} queries")
    except (TargetError, QueryBudgetExceeded) as error:
        error.partial = merge_results(parts) if parts else None
        raise
    finally:
        target.on_query = previous
    return merge_results(parts) if parts else attack(target, x, y, targets=targets)
