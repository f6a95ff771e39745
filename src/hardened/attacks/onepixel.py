"""One-pixel / few-pixel attack: differential evolution over k (position, colour) genes.

Su, Vargas & Sakurai 2019, "One pixel attack for fooling deep neural networks" (IEEE TEVC). Each
candidate sets ``k`` pixels ``(row, col)`` to the colours ``(v_1..v_C)`` it carries; the search is
``scipy.optimize.differential_evolution`` (vectorised, deferred updating, no polishing) on the
logit margin ``z_y - max_{j != y} z_j`` (targeted: ``max_{j != t} z_j - z_t``), run for ``maxiter``
generations (no convergence test: a flat margin is common, not convergence) or stopped as soon as
the best candidate is adversarial.

Batched over images: one scipy solver per image runs in its own thread, and each generation the
solvers hand their whole populations to the caller, which evaluates all of them in **one** model
call and hands the margins back (solvers run in lockstep, so the model sees one batch per
generation). The attack changes at most ``k`` pixels (positions may coincide: fewer then).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np
import torch
from scipy.optimize import differential_evolution
from torch import Tensor

from hardened._util.seeding import mix_seed
from hardened._util.validate import check_int, check_real, check_seed
from hardened.attacks.base import ATTACKS, Attack, Oracle
from hardened.attacks.minimal import _goal_margin
from hardened.threat import ThreatModel

__all__ = ["OnePixel", "paint_pixels"]


def paint_pixels(x: Tensor, genes: Tensor, bounds: tuple[float, float]) -> Tensor:
    """Images ``x`` (P×C×H×W) with the pixels of ``genes`` (P×k×(2+C): row, col, colour) painted.

    Positions are floored and clipped into the image; colours clipped into ``bounds``.
    """
    p, c, h, w = x.shape
    out = x.clone()
    rows = genes[..., 0].floor().long().clamp(0, h - 1)
    cols = genes[..., 1].floor().long().clamp(0, w - 1)
    colours = genes[..., 2:].clamp(*bounds).to(x.dtype)  # P×k×C
    index = torch.arange(p, device=x.device)[:, None].expand_as(rows)
    out.permute(0, 2, 3, 1)[index, rows, cols] = colours
    return out


class _Aborted(Exception):
    """Raised inside a solver thread when the model call serving it failed."""


class _Lockstep:
    """Collects each solver's population request and answers them all with one model call."""

    def __init__(self, n: int) -> None:
        self.requests: queue.Queue[tuple[int, np.ndarray | None]] = queue.Queue()
        self.answers: list[queue.Queue[np.ndarray | None]] = [queue.Queue() for _ in range(n)]
        self.errors: list[BaseException] = []

    def abort(self) -> None:
        """Release every waiting solver (its objective raises): the caller failed."""
        for answers in self.answers:
            answers.put(None)

    def objective(self, i: int) -> Any:
        def evaluate(population: np.ndarray) -> np.ndarray:  # D×S (scipy's vectorised layout)
            self.requests.put((i, population))
            answer = self.answers[i].get()
            if answer is None:
                raise _Aborted
            return answer

        return evaluate


@ATTACKS.register("onepixel", aliases=("one-pixel", "few-pixel"))
class OnePixel(Attack):
    """Few-pixel attack by differential evolution (Su et al. 2019); L0, untargeted or targeted.

    Works on any function ``x -> logits`` (no gradients).

    Args:
        max_pixels: ``k``, the pixels changed per image.
        popsize: scipy's population multiplier (population ``popsize * k * (2 + C)``).
        maxiter: most generations.
        mutation, recombination: DE's differential weight and crossover probability.
        bounds: the pixel box; seed: the search's seed (one stream per image).
    """

    name = "onepixel"
    norms = ("l0",)
    targeted = True
    needs_gradients = False
    scores_only = True
    seeded = True

    def __init__(
        self,
        *,
        max_pixels: int = 1,
        popsize: int = 10,
        maxiter: int = 75,
        mutation: float = 0.5,
        recombination: float = 1.0,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        self.max_pixels = check_int(max_pixels, "max_pixels", minimum=1)
        self.popsize = check_int(popsize, "popsize", minimum=1)
        self.maxiter = check_int(maxiter, "maxiter", minimum=1)
        self.mutation = check_real(mutation, "mutation", minimum=0.0, maximum=2.0, open_below=True)
        self.recombination = check_real(recombination, "recombination", minimum=0.0, maximum=1.0)
        self.bounds = ThreatModel("linf", 0.0, bounds).bounds
        self.seed = check_seed(seed)

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        n, c, h, w = x.shape
        k, (lo, hi) = self.max_pixels, self.bounds
        limits = [(0.0, h - 1e-6), (0.0, w - 1e-6)] + [(lo, hi)] * c
        lockstep, found = _Lockstep(n), [np.zeros(0)] * n
        base = 0 if self.seed is None else self.seed

        def solve(i: int) -> None:
            try:
                result = differential_evolution(
                    lockstep.objective(i), limits * k, popsize=self.popsize, maxiter=self.maxiter,
                    mutation=self.mutation, recombination=self.recombination, polish=False, tol=0.0, atol=-1.0,
                    init="random", vectorized=True, updating="deferred",
                    rng=np.random.default_rng(None if self.seed is None else mix_seed(base, i)),
                    callback=lambda intermediate_result: bool(intermediate_result.fun < 0),
                )
                found[i] = result.x
            except _Aborted:
                pass
            except BaseException as error:  # re-raised by the caller's thread
                lockstep.errors.append(error)
            finally:
                lockstep.requests.put((i, None))

        threads = [threading.Thread(target=solve, args=(i,), daemon=True) for i in range(n)]
        for thread in threads:
            thread.start()
        try:
            self._serve(oracle, x, y, targets, lockstep, n)
        except BaseException:
            lockstep.abort()
            raise
        finally:
            for thread in threads:
                thread.join()
        if lockstep.errors:
            raise lockstep.errors[0]
        genes = torch.as_tensor(np.stack(found), dtype=torch.float64, device=x.device)
        return paint_pixels(x, genes.view(n, k, 2 + c), self.bounds)

    def _serve(
        self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None, lockstep: _Lockstep, n: int
    ) -> None:
        """Answer the solvers generation by generation with one model call each."""
        k, c = self.max_pixels, x.shape[1]
        running = n
        while running:
            batch: list[tuple[int, np.ndarray]] = []
            for _ in range(running):
                i, population = lockstep.requests.get()
                if population is None:
                    running -= 1
                else:
                    batch.append((i, population))
            if not batch:
                continue
            rows = torch.as_tensor(np.concatenate([[i] * p.shape[1] for i, p in batch]), device=x.device)
            genes = np.concatenate([p.T for _, p in batch])
            genes_t = torch.as_tensor(genes, dtype=torch.float64, device=x.device).view(-1, k, 2 + c)
            logits = oracle.query(paint_pixels(x[rows], genes_t, self.bounds), rows)
            margins = _goal_margin(logits, y[rows], None if targets is None else targets[rows])
            margins_np = margins.double().cpu().numpy()
            start = 0
            for i, population in batch:
                lockstep.answers[i].put(margins_np[start : start + population.shape[1]])
                start += population.shape[1]
