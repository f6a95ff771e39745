"""Black-box targets: a real local HTTP server (the ``hardened serve`` API, errors, stalls,
garbage, wrong shapes, PNG upload), retries, timeouts, the rate limit, the hard budget with
partial results, exact query counts over random budgets, callables, modules and ONNX."""

from __future__ import annotations

import json
import time
from email.parser import BytesParser
from email.policy import default as default_policy
from io import BytesIO

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from hardened.attacks import NES, HopSkipJump, Square
from hardened.errors import ConfigError, InputError, QueryBudgetExceeded, TargetError
from hardened.models.blackbox import (
    CallableTarget,
    HttpMapping,
    HttpTarget,
    OnnxTarget,
    TorchTarget,
    as_target,
    attack_target,
)
from helpers import tiny_mlp
from http_toys import Behaviour, Server, serve_model, server

MODEL = tiny_mlp(seed=4, classes=3)

serve_api = serve_model(MODEL)


def _images(n: int = 4, seed: int = 0) -> Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_http_target_speaks_the_serve_api_and_gives_log_probabilities() -> None:
    x = _images(5)
    with server(serve_api) as httpd:
        target = HttpTarget(httpd.url, max_batch=2)
        scores = target(x)
        assert httpd.requests == 3, "5 images in requests of at most 2"
    with torch.no_grad():
        expected = MODEL(x).log_softmax(1)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    assert target.queries == 5 and target.calls == 1
    assert json.loads(httpd.bodies[0][0])["images"] == x[:2].tolist()


def test_square_runs_on_an_http_target_and_counts_every_query() -> None:
    x = _images(4, seed=1)
    with torch.no_grad():
        y = MODEL(x).argmax(1)
    with server(serve_api) as httpd:
        target = HttpTarget(httpd.url)
        result = Square(eps=0.3, queries=30, seed=0)(target, x, y)
    assert result.forward_count == target.queries
    assert result.total_queries is not None and result.total_queries + 2 * len(x) == target.queries
    local = Square(eps=0.3, queries=30, seed=0)(MODEL, x, y)
    assert torch.equal(result.success, local.success), "the endpoint and the module disagree"


def _failing(times: int, status: int = 500) -> Behaviour:
    def behaviour(httpd: Server, body: bytes, content_type: str) -> tuple[int, bytes, float]:
        if httpd.requests <= times:
            return status, b'{"detail": "boom"}', 0.0
        return serve_api(httpd, body, content_type)

    return behaviour


def test_a_5xx_is_retried_with_backoff_and_counted_once() -> None:
    with server(_failing(2)) as httpd:
        target = HttpTarget(httpd.url, retries=3, backoff=0.05)
        start = time.monotonic()
        target(_images(3))
        assert httpd.requests == 3
    assert time.monotonic() - start >= 0.05 + 0.1, "backoff 0.05 then 0.1 seconds"
    assert target.queries == 3


def test_a_server_that_keeps_failing_gives_a_target_error() -> None:
    with server(_failing(100)) as httpd:
        target = HttpTarget(httpd.url, retries=2, backoff=0.0)
        with pytest.raises(TargetError, match="failed 3 times.*HTTP 500"):
            target(_images(2))
        assert httpd.requests == 3
    assert target.queries == 0


def test_a_4xx_is_not_retried() -> None:
    with server(_failing(100, status=422)) as httpd:
        with pytest.raises(TargetError, match="refused the request: HTTP 422"):
            HttpTarget(httpd.url, retries=3, backoff=0.0)(_images(2))
        assert httpd.requests == 1


def test_a_stalling_server_times_out_and_is_retried() -> None:
    def stall(httpd: Server, body: bytes, content_type: str) -> tuple[int, bytes, float]:
        status, answer, _ = serve_api(httpd, body, content_type)
        return status, answer, 0.6 if httpd.requests == 1 else 0.0

    with server(stall) as httpd:
        target = HttpTarget(httpd.url, timeout=0.2, retries=1, backoff=0.0)
        assert target(_images(2)).shape == (2, 3)
        assert httpd.requests == 2
    with server(lambda h, b, c: (200, b"{}", 0.6)) as httpd:
        with pytest.raises(TargetError, match="failed 2 times.*timed out"):
            HttpTarget(httpd.url, timeout=0.2, retries=1, backoff=0.0)(_images(2))


def test_an_unreachable_endpoint_gives_a_target_error() -> None:
    with server(serve_api) as httpd:
        url = httpd.url
    with pytest.raises(TargetError, match="failed 2 times.*check that it is up"):
        HttpTarget(url, retries=1, backoff=0.0, timeout=1.0)(_images(1))


@pytest.mark.parametrize(
    "answer, message",
    [
        (b"<html>oops</html>", "not JSON"),
        (b'{"result": []}', "no 'predictions' field"),
        (b'{"predictions": [{"label": 0, "probabilities": [1, 0, 0]}]}', "1 predictions for 2 images"),
        (b'{"predictions": [{"label": 0}, {"label": 1}]}', "no 'probabilities' field"),
        (b'{"predictions": [{"probabilities": [1, 0]}, {"probabilities": [1, 0, 0]}]}', "not numbers"),
        (b'{"predictions": [{"probabilities": ["a", 0, 0]}, {"probabilities": [1, 0, 0]}]}', "not numbers"),
        (b'{"predictions": [{"probabilities": [-1, 0, 2]}, {"probabilities": [1, 0, 0]}]}', "not probabilities"),
    ],
)
def test_garbage_and_wrong_shapes_give_a_target_error(answer: bytes, message: str) -> None:
    with server(lambda h, b, c: (200, answer, 0.0)) as httpd:
        target = HttpTarget(httpd.url, retries=0)
        with pytest.raises(TargetError, match=message):
            target(_images(2))
    assert target.queries == 0


def test_the_wrong_number_of_classes_is_a_target_error() -> None:
    with server(serve_api) as httpd:
        with pytest.raises(TargetError, match="3 scores per image, expected 10"):
            HttpTarget(httpd.url, num_classes=10)(_images(2))


def test_the_budget_refuses_a_query_before_it_is_sent() -> None:
    with server(serve_api) as httpd:
        target = HttpTarget(httpd.url, budget=10)
        target(_images(8))
        with pytest.raises(QueryBudgetExceeded, match="budget of 10 images") as info:
            target(_images(3))
        assert httpd.requests == 1, "a refused query reached the server"
    assert (info.value.spent, info.value.budget, info.value.asked) == (8, 10, 3)
    assert target.queries == 8 and target.remaining == 2


def test_partial_results_survive_a_spent_budget_and_a_failing_endpoint() -> None:
    x = _images(6, seed=2)
    with torch.no_grad():
        y = MODEL(x).argmax(1)
    square = Square(eps=0.01, queries=5, seed=0)
    per_batch = 2 * (5 + 2)  # at most 5 search queries + check + measurement per image
    with server(serve_api) as httpd:
        target = HttpTarget(httpd.url, budget=per_batch + 1)
        with pytest.raises(QueryBudgetExceeded) as info:
            attack_target(square, target, x, y, batch_size=2)
        partial = info.value.partial
        assert partial is not None and partial.labels.numel() == 2
        assert target.queries <= per_batch + 1
        assert partial.forward_count <= per_batch
    calls = {"n": 0}

    def flaky(httpd: Server, body: bytes, content_type: str) -> tuple[int, bytes, float]:
        calls["n"] += 1
        return (500, b"", 0.0) if calls["n"] > 12 else serve_api(httpd, body, content_type)

    with server(flaky) as httpd:
        with pytest.raises(TargetError) as failed:
            attack_target(square, HttpTarget(httpd.url, retries=0), x, y, batch_size=2)
    assert failed.value.partial is not None and failed.value.partial.labels.numel() >= 1


def test_the_rate_limit_spaces_requests() -> None:
    with server(serve_api) as httpd:
        target = HttpTarget(httpd.url, rate=20.0)
        start = time.monotonic()
        for _ in range(5):
            target(_images(1))
    assert time.monotonic() - start >= 4 / 20.0


def test_a_labels_only_endpoint_gives_one_hot_scores_and_hsja_runs_on_it() -> None:
    x = _images(3, seed=3)
    with torch.no_grad():
        y = MODEL(x).argmax(1)
    with server(serve_api) as httpd:
        target = HttpTarget(httpd.url, mapping=HttpMapping(scores_key=None), num_classes=3)
        scores = target(x)
        assert torch.equal(scores, torch.nn.functional.one_hot(y, 3).float())
        result = HopSkipJump(eps=2.0, queries=60, seed=0)(target, x, y)
    assert result.forward_count + len(x) == target.queries
    with pytest.raises(ConfigError, match="num_classes"):
        HttpTarget("http://127.0.0.1:1", mapping=HttpMapping(scores_key=None))


def test_png_upload_sends_one_8_bit_png_per_image() -> None:
    from PIL import Image

    x = _images(2, seed=4)

    def png_api(httpd: Server, body: bytes, content_type: str) -> tuple[int, bytes, float]:
        message = BytesParser(policy=default_policy).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        images = [np.asarray(Image.open(BytesIO(part.get_content()))) for part in message.iter_parts()]
        batch = torch.tensor(np.stack(images), dtype=torch.float32)[:, None] / 255
        return serve_api(httpd, json.dumps({"images": batch.tolist()}).encode(), "application/json")

    with server(png_api) as httpd:
        scores = HttpTarget(httpd.url, mapping=HttpMapping(encoding="png"))(x)
    with torch.no_grad():
        expected = MODEL((x * 255).round() / 255).log_softmax(1)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_bad_target_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="http://"):
        HttpTarget("127.0.0.1:8000")
    with pytest.raises(ConfigError, match="encoding"):
        HttpMapping(encoding="xml")
    with pytest.raises(ConfigError, match="timeout"):
        HttpTarget("http://127.0.0.1:1", timeout=0)
    with pytest.raises(ConfigError, match="callable"):
        CallableTarget(3)
    with pytest.raises(InputError, match="N×C×H×W"):
        TorchTarget(MODEL)(torch.rand(8, 8))


def test_a_callable_answering_garbage_gives_a_target_error() -> None:
    with pytest.raises(TargetError, match="N×K"):
        CallableTarget(lambda x: np.zeros(len(x)))(_images(2))
    with pytest.raises(TargetError, match="NaN"):
        CallableTarget(lambda x: torch.full((len(x), 3), float("nan")))(_images(2))
    with pytest.raises(TargetError, match="not numbers"):
        CallableTarget(lambda x: "cat")(_images(2))
    with pytest.raises(TargetError, match="labels outside"):
        CallableTarget(lambda x: [5] * len(x), labels_only=True, num_classes=3)(_images(2))


def test_a_module_target_matches_the_module_and_keeps_its_mode() -> None:
    model = tiny_mlp(seed=1)
    model.train()
    x = _images(3)
    scores = as_target(model)(x)
    assert model.training
    with torch.no_grad():
        torch.testing.assert_close(scores, model.eval()(x))


class _Rows:
    """A function x -> logits that counts every row it is asked about."""

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        with torch.no_grad():
            return MODEL(x)


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(["square", "nes", "hsja"]),
    budget=st.integers(0, 400),
    queries=st.integers(1, 120),
    seed=st.integers(0, 100),
)
def test_query_counts_are_exact_and_the_budget_is_never_exceeded(name, budget, queries, seed):
    x = _images(3, seed=seed)
    with torch.no_grad():
        y = MODEL(x).argmax(1)
    attack = {
        "square": lambda: Square(eps=0.3, queries=queries, seed=seed),
        "nes": lambda: NES(eps=0.3, queries=queries, samples=10, seed=seed),
        "hsja": lambda: HopSkipJump(eps=1.0, queries=queries, init_evals=10, seed=seed),
    }[name]()
    counter = _Rows()
    target = CallableTarget(counter, budget=budget)
    try:
        result = attack_target(attack, target, x, y, batch_size=2)
    except QueryBudgetExceeded as error:
        assert error.spent == target.queries and error.spent + error.asked > budget
    else:
        assert result.forward_count == counter.rows
        assert result.queries is not None and bool((result.queries <= queries).all())
        assert int(result.queries.sum()) + 2 * len(x) == counter.rows
    assert target.queries == counter.rows <= budget


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter needs no onnxscript
def test_an_onnx_session_is_a_target(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "model.onnx"
    torch.onnx.export(MODEL, (_images(1),), str(path), input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    target = OnnxTarget(path)
    x = _images(4)
    with torch.no_grad():
        torch.testing.assert_close(target(x), MODEL(x), atol=1e-5, rtol=1e-5)
    y = MODEL(x).argmax(1)
    result = Square(eps=0.3, queries=10, seed=0)(target, x, y)
    assert result.forward_count + len(x) == target.queries
    assert torch.equal(result.success, Square(eps=0.3, queries=10, seed=0)(MODEL, x, y).success)
    assert isinstance(as_target(str(path)), OnnxTarget)
    with pytest.raises(ConfigError, match="no ONNX file"):
        OnnxTarget(tmp_path / "missing.onnx")


def test_a_missing_onnxruntime_names_the_extra(tmp_path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"hardened\[onnx\]"):
        OnnxTarget(tmp_path / "model.onnx")


def test_a_url_that_already_names_the_path_is_kept() -> None:
    assert HttpTarget("http://127.0.0.1:8000/v1/predict").url == "http://127.0.0.1:8000/v1/predict"
    assert HttpTarget("http://127.0.0.1:8000/").url == "http://127.0.0.1:8000/v1/predict"


def test_images_answered_before_a_failed_request_are_counted() -> None:
    with server(lambda h, b, c: serve_api(h, b, c) if h.requests == 1 else (503, b"", 0.0)) as httpd:
        target = HttpTarget(httpd.url, max_batch=2, retries=0, budget=5)
        with pytest.raises(TargetError, match="HTTP 503"):
            target(_images(4))
        assert httpd.requests == 2
    assert target.queries == 2, "the first request's 2 answered images count against the budget"
    with pytest.raises(QueryBudgetExceeded):
        target(_images(4))


class _RecordingBar:
    """A ProgressTask that records every advance with the target's count at that moment."""

    def __init__(self, target: TorchTarget) -> None:
        self.target, self.advances, self.descriptions = target, [], []

    def advance(self, amount: float = 1.0) -> None:
        self.advances.append((amount, self.target.queries))

    def describe(self, text: str) -> None:
        self.descriptions.append(text)


@pytest.mark.parametrize("attack", [Square(eps=0.05, queries=7, restarts=2, seed=0), HopSkipJump(eps=0.5, queries=9)])
def test_the_progress_bar_follows_every_query_and_ends_at_its_total(attack) -> None:
    """With ``queries_per_image`` the bar moves with each query the target answers (never ahead
    of it), is topped up by each batch's unspent budget, and its total is exactly the budget."""
    x = _images(5, seed=3)
    with torch.no_grad():
        y = MODEL(x).argmax(1)
    target = TorchTarget(MODEL)
    bar = _RecordingBar(target)
    per_image = attack.queries * getattr(attack, "restarts", 1) + 2
    result = attack_target(attack, target, x, y, batch_size=2, bar=bar, queries_per_image=per_image)
    assert sum(amount for amount, _ in bar.advances) == 5 * per_image
    live, top_ups, before = 0, 0, 0
    for amount, answered in bar.advances:  # a live advance follows a query, a top-up follows none
        if answered > before:
            assert amount == answered - before, "the bar did not move by the query's images"
            live += amount
        else:
            top_ups += 1
        before = answered
    assert live == target.queries and top_ups == 3  # 3 batches of at most 2 images
    assert bar.descriptions[-1] == f"{attack.name}: {target.queries:,} queries"
    assert target.on_query is None, "attack_target left its listener on the target"
    assert result.forward_count == target.queries
