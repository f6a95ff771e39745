"""The served batch function traced into one TorchScript graph: the same answers as eager, and
eager wherever tracing fails or would change an answer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hardened.guard import GuardedClassifier, make_score
from hardened.serve.predictors import GuardPredictor, ModelPredictor
from hardened.serve.tracing import trace_batch


def _same_answers(eager: list[dict], traced: list[dict]) -> None:
    assert len(eager) == len(traced)
    for a, b in zip(eager, traced, strict=True):
        assert (a["label"], a["accepted"], a["status"], a["reason"]) == (b["label"], b["accepted"], b["status"], b["reason"])
        torch.testing.assert_close(torch.tensor(a["probabilities"]), torch.tensor(b["probabilities"]), rtol=1e-5, atol=1e-6)
        if a["score"] is not None:
            assert abs(a["score"] - b["score"]) <= 1e-4 * max(1.0, abs(a["score"]))


def test_traced_guards_give_the_eager_answers_and_stay_eager_past_their_batch(digits_model, digits):
    x = torch.cat([digits.test.x[:20], torch.rand(12, 1, 8, 8)])  # digits (accepted) and noise (refused)
    for name, options in (("energy", {}), ("mahalanobis", {"layers": "all"}), ("softmax", {})):
        score = make_score(name, digits_model, **options).fit(digits.train)
        guard = GuardedClassifier(digits_model, score, classes=digits.train.classes)
        guard.calibrate(digits.test.x[100:300], fpr=0.05)
        eager, traced = GuardPredictor(guard), GuardPredictor(guard)
        reason = traced.prepare(16)
        assert traced.traced.graph is not None and reason.startswith("traced"), (name, reason)
        for batch in (x[:1], x[:7], x[4:20]):  # within the traced range
            _same_answers(eager.predict(batch), traced.predict(batch))
        assert any(not a["accepted"] for a in traced.predict(x[16:32]))
        assert traced.traced(x) is None  # 32 > 16: the eager path answers
        _same_answers(eager.predict(x), traced.predict(x))
    assert GuardPredictor(guard).prepare(16, trace=False) == "served eager"


def test_a_traced_model_predictor_gives_the_eager_logits(digits_model, digits):
    eager, traced = ModelPredictor(digits_model, (1, 8, 8)), ModelPredictor(digits_model, (1, 8, 8))
    assert traced.prepare(8).startswith("traced")
    _same_answers(eager.predict(digits.test.x[:8]), traced.predict(digits.test.x[:8]))
    assert all(p.requires_grad for p in digits_model.parameters())  # tracing left the weights as they were


class _DataDependent(nn.Module):
    """A branch on the data: a trace records one side only, so it must be refused."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1) * self.scale
        return flat[:, :3] if float(flat.mean()) > 0.5 else -flat[:, :3]


class _Untraceable(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.tensor(x.flatten(1).tolist())  # leaves the graph


def test_tracing_that_would_change_an_answer_or_fails_stays_eager():
    model = _DataDependent()

    def logits(x: Tensor) -> tuple[Tensor]:
        return (model(x),)

    # random batches in [0, 1] have means near 0.5 on both sides of the branch across sizes;
    # shift half the checks' inputs so that both sides are taken
    shifted = trace_batch(lambda x: logits(x * 0.2 + (0.8 if x.shape[0] == 2 else 0.0)), [model], (1, 4, 4), 8)
    assert shifted.graph is None and "disagreed" in shifted.reason
    untraceable = _Untraceable()
    failed = trace_batch(lambda x: (untraceable(x),), [untraceable], (1, 4, 4), 8)
    assert failed.graph is None and "eager" in failed.reason
    scripted = torch.jit.script(nn.Linear(3, 2))
    assert trace_batch(lambda x: (scripted(x),), [scripted], (3,), 4).graph is None
