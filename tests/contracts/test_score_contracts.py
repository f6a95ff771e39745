"""Every registered guard score keeps the score contract."""

from __future__ import annotations

import pytest

from contract_checks import check_score, check_score_needs_model
from hardened.guard import SCORES, make_score
from helpers import tiny_cnn

#: smaller training budgets for the scores that train networks (speed only: a score missing
#: here is still checked, with its defaults)
QUICK = {
    "vae": {"epochs": 2, "hidden": 16, "latent": 4},
    "wgan-inverter": {"gan_steps": 4, "critic_steps": 1, "width": 4, "latent": 4,
                      "inverter_steps": 4, "search_steps": 4, "search_step": 0.2},
}


@pytest.mark.parametrize("name", SCORES.names())
def test_score_keeps_the_contract(name: str) -> None:
    model = tiny_cnn()
    check_score(lambda: make_score(name, model, **QUICK.get(name, {})), model)


@pytest.mark.parametrize("name", SCORES.names())
def test_needs_model_is_what_make_score_requires(name: str) -> None:
    check_score_needs_model(name)
