"""Every registered LRP composite conserves relevance and leaves the model as it was."""

from __future__ import annotations

import pytest

from contract_checks import check_composite
from hardened.explain import COMPOSITES, make_composite


@pytest.mark.parametrize("name", COMPOSITES.names())
def test_composite_keeps_the_contract(name: str) -> None:
    check_composite(name, make_composite(name))
