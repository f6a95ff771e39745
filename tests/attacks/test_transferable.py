"""Transfer from ensembles: the ensemble is the mean of logits, DI and TI switched off give
MI-FGSM exactly, DI is seeded and size-preserving, the TI kernel, the transfer matrix's
diagonal is the white-box success rate, a callable target, bad options."""

from __future__ import annotations

import pytest
import torch

from hardened.attacks import MIFGSM, DiverseInputs, LogitEnsemble, TransferMIFGSM
from hardened.attacks.transferable import gaussian_kernel
from hardened.errors import ConfigError
from hardened.evaluate import transfer_matrix
from helpers import blob_data, tiny_cnn, tiny_mlp


def test_the_ensemble_is_the_mean_of_the_logits() -> None:
    a, b, x = tiny_cnn(seed=1), tiny_mlp(seed=2), blob_data(n=5).x
    with torch.no_grad():
        torch.testing.assert_close(LogitEnsemble([a, b])(x), (a(x) + b(x)) / 2)


def test_diverse_inputs_keep_the_size_are_seeded_and_off_at_p_zero() -> None:
    model, x = tiny_cnn(), blob_data(n=4).x
    with torch.no_grad():
        assert torch.equal(DiverseInputs(model, p=0.0)(x), model(x))
        first, again = DiverseInputs(model, p=1.0, resize_rate=1.5, seed=3), DiverseInputs(model, p=1.0, resize_rate=1.5, seed=3)
        outputs = [first(x) for _ in range(3)]
        assert all(torch.equal(o, again(x)) for o in outputs)
        assert outputs[0].shape == (4, 3) and not all(torch.equal(o, model(x)) for o in outputs)


def test_the_ti_kernel_is_a_normalised_symmetric_gaussian() -> None:
    kernel = gaussian_kernel(5, dtype=torch.float64)
    assert kernel.shape == (5, 5) and float(kernel.sum()) == pytest.approx(1.0)
    assert torch.equal(kernel, kernel.T) and torch.equal(kernel, kernel.flip(0))
    assert int(kernel.argmax()) == 12


def test_without_di_and_ti_it_is_mifgsm() -> None:
    model, data = tiny_cnn(), blob_data(n=8, seed=2)
    plain = MIFGSM(eps=0.1)(model, data.x, data.y)
    same = TransferMIFGSM(eps=0.1, diversity_prob=0.0, kernel_size=1)(model, data.x, data.y)
    assert torch.equal(plain.x_adv, same.x_adv)
    smoothed = TransferMIFGSM(eps=0.1, diversity_prob=0.0, kernel_size=3)(model, data.x, data.y)
    assert not torch.equal(plain.x_adv, smoothed.x_adv)


def test_the_transfer_matrix_diagonal_is_the_white_box_success_rate() -> None:
    a, b, data = tiny_cnn(seed=1), tiny_cnn(seed=2), blob_data(n=12, seed=3)
    matrix = transfer_matrix(
        {"a": a, "a+b": LogitEnsemble([a, b])}, {"a": a, "b-as-a-function": lambda x: b(x)},
        data.x, data.y, eps=0.2, attack="mifgsm",
    )
    result = MIFGSM(eps=0.2)(a, data.x, data.y)
    correct = result.pred_clean == data.y
    white_box = float((result.success & correct).sum()) / int(correct.sum())
    assert matrix.success[0][0] == pytest.approx(white_box)
    assert matrix.sources == ["a", "a+b"] and matrix.targets == ["a", "b-as-a-function"]
    assert all(0.0 <= v <= 1.0 for row in matrix.success for v in row) and matrix.to_dict()["kind"] == "transfer_matrix"


@pytest.mark.parametrize(
    ("build", "match"),
    [(lambda: TransferMIFGSM(eps=0.1, kernel_size=4), "odd"), (lambda: TransferMIFGSM(eps=0.1, diversity_prob=1.5), "diversity_prob"),
     (lambda: LogitEnsemble([]), "at least one"), (lambda: transfer_matrix({}, {}, torch.zeros(1, 1, 8, 8), torch.zeros(1), eps=0.1), "source")],
)
def test_bad_options_are_config_errors(build, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build()
