"""Explicit random generators and the one seed mixer; the library never reseeds the global RNG."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["make_generator", "mix_seed"]


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device``, seeded with ``seed`` (or from entropy when ``None``)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def mix_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed that is a pure function of ``(seed, *parts)`` (numpy ``SeedSequence``).

    Streams derived for different ``parts`` (a sample index, an epoch and step) are independent,
    and the value for given parts does not depend on which others were drawn before it.
    """
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, *(int(p) for p in parts)]
    state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
