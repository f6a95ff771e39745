"""``POST /v1/predict`` and the other endpoints through FastAPI's TestClient (a real HTTP client
over the ASGI app): answers against the library computed directly, refusals, limits, API key."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hardened.certify import certify
from hardened.guard.inputs import image_to_tensor
from hardened.guard.probes import uniform_noise
from hardened.serve.app import ServeSettings, create_app
from hardened.serve.predictors import GuardPredictor, ModelPredictor, SmoothedPredictor


def _client(predictor, **limits) -> TestClient:
    return TestClient(create_app(predictor, ServeSettings(**limits)))


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(guard):
    with _client(GuardPredictor(guard)) as c:
        yield c


def test_json_batch_matches_the_guard(client, guard, digits):
    x = torch.cat([digits.test.x[200:206], uniform_noise(4, (1, 8, 8), seed=1)])
    response = client.post("/v1/predict", json={"images": x.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "guard" and body["n"] == 10
    direct = guard.predict_batch(x)
    logits = guard.model(x.double().float()).double()
    for i, answer in enumerate(body["predictions"]):
        assert answer["index"] == i
        assert answer["label"] == int(direct.predictions[i])
        assert answer["class_name"] == guard.classes[answer["label"]]
        assert answer["accepted"] == bool(direct.accepted[i])
        assert answer["status"] == ("accepted" if answer["accepted"] else "refused")
        assert answer["score"] == pytest.approx(float(direct.scores[i]), rel=1e-5, abs=1e-5)
        assert answer["threshold"] == pytest.approx(guard.threshold)
        assert answer["accepted"] == (answer["score"] <= answer["threshold"])
        assert (answer["reason"] is None) == answer["accepted"]
        np.testing.assert_allclose(answer["probabilities"], logits[i].softmax(0).detach().numpy(), atol=1e-5)
    refused = [a for a in body["predictions"][6:] if not a["accepted"]]
    assert len(refused) == 4 and all("threshold" in a["reason"] for a in refused)


def test_one_channel_images_may_omit_the_channel_axis(client, digits):
    x = digits.test.x[:3]
    with_channel = client.post("/v1/predict", json={"images": x.tolist()}).json()
    without = client.post("/v1/predict", json={"images": x[:, 0].tolist()}).json()
    assert with_channel == without


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    from numpy.lib import format as npy_format

    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@pytest.mark.parametrize("dtype, squeeze", [(np.float32, False), (np.float64, True)])
def test_npy_body_answers_like_json(client, digits, dtype, squeeze):
    x = torch.cat([digits.test.x[10:15], uniform_noise(3, (1, 8, 8), seed=2)]).numpy()
    array = (x[:, 0] if squeeze else x).astype(dtype)
    as_npy = client.post("/v1/predict", content=_npy(array), headers={"content-type": "application/x-npy"})
    as_json = client.post("/v1/predict", json={"images": x.tolist()})
    assert as_npy.status_code == 200, as_npy.text
    assert as_npy.json() == as_json.json()


@pytest.mark.parametrize("body, status, words", [
    (b"not an array", 422, "not a .npy array"),
    (_npy(np.zeros((1, 1, 8, 8), dtype=np.uint8)), 422, "dtype uint8"),
    (_npy(np.array([{"a": 1}], dtype=object)), 422, "dtype object"),  # pickled objects are never loaded
    (_npy(np.float32(0.5)), 422, "scalar"),
    (_npy(np.zeros((2, 1, 9, 9), dtype=np.float32)), 422, "N×1×8×8"),
    (_npy(np.full((1, 1, 8, 8), np.nan, dtype=np.float32)), 422, "NaN"),
    (_npy(np.zeros((0, 1, 8, 8), dtype=np.float32)), 422, "no images"),
    (_npy(np.zeros((65, 1, 8, 8), dtype=np.float32)), 413, "limit of 64"),
    (_npy(np.zeros((1, 1, 8, 8), dtype=np.float32))[:-10], 422, "holds 246 bytes"),  # truncated data
    (_npy(np.zeros((1, 1, 8, 8), dtype=np.float32)) + b"0000", 422, "holds 260 bytes"),  # trailing bytes
    (_npy_header((2, 10**6, 10**6, 1), "<f4") + b"abcd", 422, "holds 4 bytes"),  # 8 TB declared, never allocated
    (_npy_header((1, 1, 8, 8), ">f4") + np.zeros(64, dtype=">f4").tobytes(), 200, ""),  # big-endian is fine
])
def test_bad_npy_bodies_are_4xx_with_a_message(client, body, status, words):
    response = client.post("/v1/predict", content=body, headers={"content-type": "application/x-npy"})
    assert response.status_code == status, response.text
    assert status == 200 or words in response.json()["detail"]


def test_png_uploads_answer_like_the_decoded_images(client, guard, digits):
    digit = (digits.test.x[7, 0].numpy() * 255).round().astype(np.uint8)
    photo = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    files = [("files", ("digit.png", _png(digit), "image/png")), ("files", ("photo.png", _png(photo), "image/png"))]
    response = client.post("/v1/predict", files=files)
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    expected = guard.predict_batch(torch.cat([image_to_tensor(_png(digit), (1, 8, 8)),
                                              image_to_tensor(_png(photo), (1, 8, 8))]))
    assert [a["label"] for a in answers] == expected.predictions.tolist()
    assert [a["accepted"] for a in answers] == expected.accepted.tolist()
    assert answers[0]["accepted"] and not answers[1]["accepted"]


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 422, "not valid JSON"),
    (b'{"pictures": []}', 422, '"images"'),
    (b'{"images": []}', 422, "no images"),
    (b'{"images": [[1, 2], [3]]}', 422, "rectangular"),
    (json.dumps({"images": np.zeros((2, 1, 9, 9)).tolist()}).encode(), 422, "N×1×8×8"),
    (json.dumps({"images": np.full((1, 8, 8), 2.0).tolist()}).encode(), 422, "must lie in [0"),
    (b'{"images": [' + b",".join([b"[" + b",".join([b"[NaN,0,0,0,0,0,0,0]"] * 8) + b"]"]) + b"]}", 422, "NaN"),
    (json.dumps({"images": np.zeros((65, 8, 8)).tolist()}).encode(), 413, "limit of 64"),
])
def test_bad_json_bodies_are_4xx_with_a_message(client, body, status, words):
    response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_unsupported_content_and_oversized_uploads(guard):
    with _client(GuardPredictor(guard), max_body_bytes=4096, max_pixels=100 * 100) as c:
        text = c.post("/v1/predict", content=b"hello", headers={"content-type": "text/plain"})
        assert text.status_code == 415 and "application/json" in text.json()["detail"]
        gif = io.BytesIO()
        Image.new("L", (8, 8)).save(gif, format="GIF")
        assert c.post("/v1/predict", files=[("files", ("a.gif", gif.getvalue()))]).status_code == 415
        large = c.post("/v1/predict", files=[("files", ("big.png", _png(np.zeros((101, 100), np.uint8))))])
        assert large.status_code == 413 and "100×101" in large.json()["detail"]
        corrupt = c.post("/v1/predict", files=[("files", ("bad.png", b"\x89PNG\r\n\x1a\nbroken"))])
        assert corrupt.status_code == 422
        body = c.post("/v1/predict", json={"images": np.zeros((64, 8, 8)).tolist()})
        assert body.status_code == 413 and "limit of 4096 bytes" in body.json()["detail"]


def test_api_key(guard, digits):
    images = {"images": digits.test.x[:1].tolist()}
    with _client(GuardPredictor(guard), api_key="s3cret") as c:
        assert c.post("/v1/predict", json=images).status_code == 401
        assert c.post("/v1/predict", json=images, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/v1/predict", json=images, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes need no key


def test_health_ready_metrics_and_openapi(client, digits):
    assert client.get("/healthz").json() == {"status": "alive", "ready": True}
    assert client.get("/readyz").status_code == 200
    tagged = client.post("/v1/predict", json={"images": uniform_noise(2, (1, 8, 8), seed=5).tolist()},
                         headers={"X-Request-ID": "abc123"})
    assert tagged.headers["X-Request-ID"] == "abc123"
    client.post("/v1/predict", content=b"x", headers={"content-type": "text/plain"})
    text = client.get("/metrics").text
    for name in ("hardened_requests_total", "hardened_refusals_total", "hardened_errors_total{code=\"415\"}",
                 "hardened_request_latency_seconds_bucket", "hardened_batch_size_bucket", "hardened_queue_depth",
                 "hardened_stage_seconds_bucket{le=\"0.001\",stage=\"parse\"}"):
        assert name in text, name
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/x-npy", "multipart/form-data"}
    assert {"401", "413", "415", "422", "503"} <= set(schema["paths"]["/v1/predict"]["post"]["responses"])


def test_not_ready_before_startup(guard, digits):
    c = TestClient(create_app(GuardPredictor(guard)))  # no lifespan: never warmed up
    assert c.get("/readyz").status_code == 503
    response = c.post("/v1/predict", json={"images": digits.test.x[:1].tolist()})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"


def test_bare_model_is_never_refused(digits_model, digits):
    with _client(ModelPredictor(digits_model, (1, 8, 8), digits.train.classes)) as c:
        answers = c.post("/v1/predict", json={"images": uniform_noise(5, (1, 8, 8), seed=2).tolist()}).json()
    assert answers["kind"] == "model"
    assert all(a["accepted"] and a["score"] is None for a in answers["predictions"])


def test_smoothed_answers_match_certify(digits_model, digits):
    x = torch.cat([digits.test.x[:1], torch.full((1, 1, 8, 8), 0.5)])
    sigma, n0, n, alpha = 0.25, 50, 200, 0.01
    with _client(SmoothedPredictor(digits_model, (1, 8, 8), sigma, n0=n0, n=n, alpha=alpha, seed=3)) as c:
        first = c.post("/v1/predict", json={"images": x[:1].tolist()}).json()["predictions"][0]
    # a fresh SmoothedClassifier's first call equals certify with that seed; warm-up used it first,
    # so compare with the second draw of the same generator
    reference = SmoothedPredictor(digits_model, (1, 8, 8), sigma, n0=n0, n=n, alpha=alpha, seed=3)
    reference.predict(torch.zeros(1, 1, 8, 8))
    expected = reference.predict(x[:1])[0]
    assert first == expected
    single = certify(digits_model, x[0], sigma, n0, n, alpha, seed=11)
    assert single.abstained or single.radius == pytest.approx(sigma * _ppf(single.pa_lower))
    assert first["abstained"] == (first["label"] is None) == (not first["accepted"])
    assert math.isclose(sum(first["probabilities"]), 1.0, abs_tol=1e-9)


def _ppf(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


_json = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                     max_leaves=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(_json, st.builds(lambda v: {"images": v}, _json)))
def test_no_json_body_gives_a_5xx(client, document):
    response = client.post("/v1/predict", content=json.dumps(document).encode(),
                           headers={"content-type": "application/json"})
    assert response.status_code in (200, 413, 422), response.text


def test_the_cli_builds_the_predictor_the_options_name(guard_dir, tmp_path, digits_model):
    from hardened.cli._common import Common
    from hardened.cli.serve import _predictor
    from hardened.errors import ConfigError
    from hardened.models import save_model

    model_file = save_model(digits_model, tmp_path / "m.safetensors", arch="lenet",
                            arch_kwargs={"input_shape": [1, 8, 8], "num_classes": 10, "channels": [8, 16], "hidden": 32},
                            input_shape=(1, 8, 8))
    settings = {"trust_factory": False, "n0": 20, "n": 100, "alpha": 0.01, "input_shape": None}
    assert isinstance(_predictor(Common(device="cpu"), guard_dir, smooth=None, **settings), GuardPredictor)
    bare = _predictor(Common(model=str(model_file), device="cpu"), None, smooth=None, **settings)
    assert isinstance(bare, ModelPredictor) and bare.input_shape == (1, 8, 8)
    smoothed = _predictor(Common(model=str(model_file), device="cpu"), None, smooth=0.5, **settings)
    assert isinstance(smoothed, SmoothedPredictor) and smoothed.smoothed.sigma == 0.5 and smoothed.n == 100
    with pytest.raises(ConfigError, match="--input-shape"):
        _predictor(Common(model=str(model_file), device="cpu"), None, smooth=None, **(settings | {"input_shape": "1,8"}))
