"""GuardedClassifier: predict or refuse, batch without raising, unscorable inputs, persistence."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import Tensor

from hardened._util.digests import tensor_digest
from hardened.errors import (
    ConfigError,
    InputError,
    ModelLoadError,
    NotFittedError,
    NotReliableClassification,
)
from hardened.guard import GuardedClassifier, calibrate_threshold, make_score
from hardened.guard.baselines import Energy


@pytest.fixture(scope="module")
def energy(digits_model, digits):
    return make_score("energy", digits_model).fit(digits.train)


@pytest.fixture
def guard(digits_model, digits, energy):
    guard = GuardedClassifier(digits_model, energy)
    guard.calibrate(digits.test.x[:150], fpr=0.05)
    return guard


class _NaNOnBright(Energy):
    """A score that fails (NaN) on images brighter than 0.6 on average."""

    def _score(self, x: Tensor) -> Tensor:
        base = super()._score(x)
        return torch.where(x.flatten(1).mean(dim=1) > 0.6, torch.full_like(base, float("nan")), base)


def test_refusal_carries_prediction_score_and_threshold(guard, digits_model, noise):
    refused = guard.predict_batch(noise)
    index = int((~refused.accepted).nonzero()[0])
    with pytest.raises(NotReliableClassification) as info:
        guard.predict(noise[index])
    error = info.value
    assert error.prediction == int(digits_model(noise[index : index + 1]).argmax())
    assert error.score == pytest.approx(float(refused.scores[index]))
    assert error.threshold == guard.threshold and error.score > error.threshold


def test_accepted_input_returns_the_class(guard, digits_model, digits):
    batch = guard.predict_batch(digits.test.x[150:200])
    index = int(batch.accepted.nonzero()[0])
    x = digits.test.x[150 + index]
    assert guard.predict(x) == int(digits_model(x[None]).argmax())
    assert guard.predict(x[None]) == guard.predict(x)


def test_batch_never_raises_and_mask_matches_scores(guard, digits, noise):
    x = torch.cat([digits.test.x[150:250], noise[:100]])
    result = guard.predict_batch(x)
    assert result.predictions.shape == result.accepted.shape == result.scores.shape == (200,)
    assert torch.equal(result.accepted, result.scores <= guard.threshold)
    assert result.accepted[:100].float().mean() > 0.8 and result.accepted[100:].float().mean() < 0.2
    json.dumps(result.to_dict())


def test_nan_scores_are_refused_never_accepted(digits_model, digits):
    score = _NaNOnBright(digits_model).fit(digits.train)
    guard = GuardedClassifier(digits_model, score, threshold=1e9)  # would accept everything
    bright = torch.full((3, 1, 8, 8), 0.9)
    result = guard.predict_batch(torch.cat([bright, digits.test.x[:3]]))
    assert result.scored.tolist() == [False] * 3 + [True] * 3
    assert result.accepted.tolist() == [False] * 3 + [True] * 3
    with pytest.raises(InputError, match="not finite"):
        guard.predict(bright[0])
    with pytest.raises(InputError, match="NaN or infinite"):
        calibrate_threshold(score.score(torch.cat([bright, digits.test.x[:200]])), fpr=0.05)


def test_missing_threshold_is_an_error(digits_model, energy, digits, tmp_path):
    guard = GuardedClassifier(digits_model, energy)
    with pytest.raises(NotFittedError, match="no threshold"):
        guard.predict(digits.test.x[0])
    with pytest.raises(NotFittedError, match="no threshold"):
        guard.predict_batch(digits.test.x[:2])
    with pytest.raises(NotFittedError, match="no threshold"):
        guard.save(tmp_path / "g")


def test_unfitted_score_and_bad_inputs(digits_model, guard):
    with pytest.raises(NotFittedError, match="not fitted"):
        GuardedClassifier(digits_model, make_score("mahalanobis", digits_model), 0.5)
    with pytest.raises(InputError, match="one image"):
        guard.predict(torch.rand(2, 1, 8, 8))
    with pytest.raises(InputError, match="fitted for images of shape"):
        guard.predict(torch.rand(1, 28, 28))
    with pytest.raises(InputError, match="must lie in"):
        guard.predict_batch(torch.full((1, 1, 8, 8), 2.0))


def test_save_load_records_calibration_and_checks_the_classifier(guard, digits, tmp_path):
    folder = guard.save(tmp_path / "g", extra={"data": "digits"})
    assert sorted(p.name for p in folder.iterdir()) == ["classifier.safetensors", "guard.json", "score.safetensors"]
    record = json.loads((folder / "guard.json").read_text())
    assert record["threshold"] == guard.threshold and record["calibration"]["method"] == "fpr"
    loaded = GuardedClassifier.load(folder, guard.model)
    assert loaded.calibration == guard.calibration
    x = digits.test.x[:50]
    assert torch.equal(loaded.predict_batch(x).accepted, guard.predict_batch(x).accepted)
    other = copy.deepcopy(guard.model)
    with torch.no_grad():
        other[-1].bias.add_(1.0)
    with pytest.raises(ModelLoadError, match="differ"):
        GuardedClassifier.load(folder, other)
    with pytest.raises(ModelLoadError, match="no classifier reference"):
        GuardedClassifier.load(folder)
    (folder / "score.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ModelLoadError, match="corrupt"):
        GuardedClassifier.load(folder, guard.model)
    with pytest.raises(ModelLoadError, match="not a saved guard"):
        GuardedClassifier.load(tmp_path / "missing", guard.model)


@pytest.mark.parametrize("name", ["energy", "softmax"])
def test_fit_free_score_guards_unfitted_as_the_readme_says(name, digits_model, digits, tmp_path):
    fitted = GuardedClassifier(digits_model, make_score(name, digits_model).fit(digits.train))
    unfitted = GuardedClassifier(digits_model, make_score(name, digits_model))
    with pytest.raises(NotFittedError, match="no input shape"):
        GuardedClassifier(digits_model, make_score(name, digits_model), 0.5).save(tmp_path / "early")
    assert not (tmp_path / "early").exists()
    held = digits.test.x[:150]
    assert unfitted.calibrate(held, fpr=0.05).threshold == fitted.calibrate(held, fpr=0.05).threshold
    assert unfitted.input_shape == (1, 8, 8)
    x = digits.test.x[150:250]
    assert torch.equal(unfitted.predict_batch(x).accepted, fitted.predict_batch(x).accepted)
    loaded = GuardedClassifier.load(unfitted.save(tmp_path / "g"), digits_model)
    assert torch.equal(loaded.predict_batch(x).scores, unfitted.predict_batch(x).scores)


class _NoContract:
    name = "plain"

    def score(self, x: Tensor) -> Tensor:
        return x.flatten(1).mean(dim=1)


def test_an_object_without_the_score_contract_is_refused_with_what_it_lacks(digits_model):
    with pytest.raises(ConfigError, match=r"lacks differentiable, is_fitted, input_shape, fit, check_input"):
        GuardedClassifier(digits_model, _NoContract(), 0.5)


def test_saving_twice_gives_byte_identical_guard_files(guard, digits, tmp_path):
    first, second = guard.save(tmp_path / "a"), guard.save(tmp_path / "b")
    for name in ("guard.json", "score.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    # fitted on real digits (every class present), not on unseeded noise whose predictions may
    # miss a class depending on the global RNG state other tests leave behind
    mahalanobis = GuardedClassifier(guard.model, make_score("mahalanobis", guard.model).fit(
        digits.train.x[:200]), guard.threshold)
    files = {mahalanobis.save(tmp_path / f"m{i}").joinpath("score.safetensors").read_bytes() for i in range(4)}
    assert len(files) == 1
    record = json.loads((tmp_path / "m0" / "guard.json").read_text())
    assert record["score_weights_sha256"] == tensor_digest(mahalanobis.score.state_tensors())


class _CountingModel(torch.nn.Module):
    """Wraps a classifier and counts the images it is called on."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += int(x.shape[0])
        return self.model(x)


@pytest.mark.parametrize("name", ["energy", "softmax", "mahalanobis", "nan-on-bright"])
def test_guarded_prediction_costs_one_classifier_pass_and_equals_two(name, digits_model, digits, noise):
    counting = _CountingModel(digits_model)
    if name == "nan-on-bright":  # a subclass that overrides _score: its own scores are kept
        score = _NaNOnBright(counting)
    else:
        score = make_score(name, counting, **({"layers": "all"} if name == "mahalanobis" else {}))
    score.fit(digits.train)
    guard = GuardedClassifier(counting, score, threshold=0.0)
    x = torch.cat([digits.test.x[:37], noise[:23], noise[:5].clamp(min=0.9)])  # the last 5 are bright
    counting.images = 0
    batch = guard.predict_batch(x)
    assert counting.images == len(x)  # one pass, not one for the logits and one for the score
    expected_scores = score.score(x)
    expected_probabilities = digits_model(x).softmax(dim=1)
    assert torch.equal(batch.scores.isnan(), expected_scores.isnan())
    torch.testing.assert_close(batch.scores.nan_to_num(), expected_scores.nan_to_num(), rtol=0, atol=1e-6)
    torch.testing.assert_close(batch.probabilities, expected_probabilities, rtol=0, atol=1e-6)
    if name == "nan-on-bright":
        assert batch.scores.isnan().any()
