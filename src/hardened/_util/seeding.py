"""Explicit random generators and the one seed mixer; the library never reseeds the global RNG."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageStreams", "draw_per_image", "make_generator", "mix_seed"]

RowDraw = Callable[[Tensor, "torch.Generator | None"], Tensor]


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


class ImageStreams:
    """One random stream per image of a batch, image ``i`` seeded from ``(seed, *parts, index[i])``.

    A batch's draw is its images' own draws stacked (``draw``), so it depends neither on which
    other images share the batch nor on the process that holds them: data-parallel training,
    where each rank holds a slice of the global batch, draws what one process draws. Successive
    draws continue each image's stream. The generators are made on the first draw (a method
    that draws nothing pays nothing); a slice (``streams[a:b]``) shares its images' streams.
    """

    def __init__(self, seed: int, parts: Sequence[int], index: Sequence[int] | Tensor,
                 device: torch.device | str = "cpu") -> None:
        self._seed, self._parts, self._device = int(seed), tuple(int(p) for p in parts), device
        self._index = [int(i) for i in index]
        self._generators: list[torch.Generator] | None = None

    @classmethod
    def _of(cls, generators: list[torch.Generator], device: torch.device | str) -> ImageStreams:
        streams = cls(0, (), [], device)
        streams._generators = generators
        return streams

    def generators(self) -> list[torch.Generator]:
        """The images' generators, in batch order (made on the first call)."""
        if self._generators is None:
            self._generators = [make_generator(mix_seed(self._seed, *self._parts, i), self._device)
                                for i in self._index]
        return self._generators

    def __len__(self) -> int:
        return len(self._generators) if self._generators is not None else len(self._index)

    def __getitem__(self, rows: slice) -> ImageStreams:
        return ImageStreams._of(self.generators()[rows], self._device)

    def draw(self, fn: RowDraw, x: Tensor) -> Tensor:
        """``fn(x[i:i+1], generator_i)`` for each image, concatenated (``fn`` must act row by row)."""
        if len(x) != len(self):
            raise ValueError(f"{len(self)} image streams cannot draw for a batch of {len(x)}")
        if not len(x):
            return fn(x, None)
        return torch.cat([fn(x[i:i + 1], g) for i, g in enumerate(self.generators())])


def draw_per_image(fn: RowDraw, x: Tensor, source: torch.Generator | ImageStreams | None) -> Tensor:
    """``fn(x, source)``, or with ``ImageStreams`` each image's row from its own stream."""
    if isinstance(source, ImageStreams):
        return source.draw(fn, x)
    return fn(x, source)
