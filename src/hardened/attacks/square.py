"""Square attack: a score-based random search that needs only the model's outputs.

Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search" (ECCV). Each iteration changes the current best
perturbation inside one random square window (per sample) and keeps the change when the loss
improves or the sample becomes adversarial:

- Linf: the window is set to ``x + eps * s_c`` with one random sign ``s_c`` per channel; the
  start is vertical stripes of ``+-eps``.
- L2: the window gets a +-"double pyramid" pattern (concentric squares weighted 1/(k+1)^2, one
  half positive, one negative) added to its current content, and the L2 mass of a second random
  window is moved into it, so the perturbation keeps norm ``eps``; the start is a grid of such
  patterns.

A Linf window whose new signs would leave the clipped image unchanged gets new signs (up to
10 draws), so no query is spent on a no-op. The window's share of the image, ``p``, is halved on the paper's schedule (after 10, 50, 200,
500, 1000, 2000, 4000, 6000 and 8000 iterations), rescaled to the query budget by default in
Linf (as the paper's code and torchattacks do) and not in L2: on mnist-5k ``lenet`` models at
1,000 queries rescaling cuts Linf's queries per success from 133 to 38 (standard) and raises
its success 0.23 -> 0.28 (PGD-trained), but lowers L2's success 0.43 -> 0.31 (PGD-trained).
Every model evaluation of a sample counts as one query (``AttackResult.queries``); a sample
never costs more than ``queries`` per run (``restarts`` runs at most).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hardened._util.seeding import make_generator
from hardened._util.validate import check_flag, check_int, check_real, check_seed
from hardened.attacks.base import ATTACKS, Attack, Oracle
from hardened.attacks.losses import attack_loss, check_loss, is_success
from hardened.attacks.options import check_threat

__all__ = ["Square", "p_schedule", "pyramid"]

SQUARE_NORMS = ("linf", "l2")
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_TINY = 1e-12
_REDRAWS = 10  # most redraws of a Linf window's signs that would change nothing


def p_schedule(iteration: int, p_init: float, queries: int, rescale: bool) -> float:
    """The window's share ``p`` of the image at ``iteration`` (0-based); paper's schedule.

    ``p_init`` halved once per threshold of ``_HALVINGS`` passed; ``rescale`` maps the budget
    ``queries`` onto the schedule's 10,000 iterations.
    """
    at = int(iteration / queries * 10000) if rescale else iteration
    return p_init / 2 ** sum(at > t for t in _HALVINGS)


def _rectangle(a: int, b: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """a×b: concentric squares around (a//2, b//2); square k (half-width k) adds 1/(k+1)^2.

    Closed form: entry (i, j) is ``sum_{k=d}^{K-1} 1/(k+1)^2`` with ``d`` its Chebyshev
    distance to the centre and ``K = max(a//2, b//2) + 1`` squares.
    """
    count = max(a // 2, b // 2) + 1
    weights = 1.0 / torch.arange(1, count + 1, device=device, dtype=dtype) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = sum_{k >= d} weights[k]
    rows = (torch.arange(a, device=device) - a // 2).abs()
    cols = (torch.arange(b, device=device) - b // 2).abs()
    return tail[torch.maximum(rows[:, None], cols[None, :])]


def pyramid(size: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """The L2 update pattern, size×size with unit L2 norm: the upper half a positive
    ``_rectangle``, the lower half a negative one."""
    device = torch.device(device)
    top = _rectangle(size // 2, size, device, dtype)
    bottom = -_rectangle(size - size // 2, size, device, dtype)
    pattern = torch.cat([top, bottom], dim=0)
    return pattern / pattern.norm()


def _signs(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def _window(k: int, size: int, h: int, w: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """A boolean k×1×h×w mask: one size×size window per sample at a uniform position."""
    top = torch.randint(0, h - size + 1, (k, 1, 1), generator=generator, device=device)
    left = torch.randint(0, w - size + 1, (k, 1, 1), generator=generator, device=device)
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return inside[:, None]


def _channel_norm(t: Tensor) -> Tensor:
    """L2 norm over the spatial dimensions: N×C×1×1."""
    return t.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()


def _sample_norm(t: Tensor) -> Tensor:
    """L2 norm over all but the batch dimension: N×1×1×1."""
    return t.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


@ATTACKS.register("square")
class Square(Attack):
    """Square attack (Andriushchenko et al. 2020), Linf or L2, from the model's outputs only.

    Works on any function ``x -> logits`` (no gradients; every evaluation runs under
    ``torch.no_grad()``). Untargeted, or targeted with ``targets=``.

    Args:
        eps: radius of the threat model's ball.
        norm: ``"linf"`` (default) or ``"l2"``.
        queries: most model evaluations per sample and run (the start counts as one).
        restarts: runs from fresh starts on the samples still unbroken (each up to
            ``queries``); an unbroken sample keeps its highest-loss point.
        p_init: the window's initial share of the image (0.8 as the paper's AutoAttack).
        loss: ``"margin"`` (logit margin, default) or ``"ce"``.
        rescale_schedule: map the query budget onto the 10,000-iteration schedule of ``p``;
            ``None`` (default): for Linf, not for L2 (see the module's note; AutoAttack's
            standard version, 5,000 Linf queries, does not rescale).
        bounds: the pixel box.
        seed: seed of the random search; the same seed gives the same result.
    """

    name = "square"
    norms = SQUARE_NORMS
    targeted = True
    needs_gradients = False
    scores_only = True
    seeded = True

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        queries: int = 5000,
        p_init: float = 0.8,
        loss: str = "margin",
        restarts: int = 1,
        rescale_schedule: bool | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        self.threat = check_threat(norm, eps, bounds, norms=SQUARE_NORMS, attack="the Square attack")
        self.bounds = self.threat.bounds
        self.queries = check_int(queries, "queries", minimum=1)
        self.restarts = check_int(restarts, "restarts", minimum=1)
        self.p_init = check_real(p_init, "p_init", minimum=0.0, maximum=1.0, open_below=True)
        self.loss = check_loss(loss)
        rescale = self.threat.norm == "linf" if rescale_schedule is None else rescale_schedule
        self.rescale_schedule = check_flag(rescale, "rescale_schedule")
        self.seed = check_seed(seed)

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        assert self.threat is not None
        if self.threat.eps == 0.0:
            return x
        generator = make_generator(self.seed, x.device)
        best = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        todo = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.restarts):
            found, broken, loss = self._search(oracle, x, y, targets, todo, generator)
            better = broken | (loss > best_loss[todo])
            best[todo[better]] = found[better]
            best_loss[todo[better]] = loss[better].to(best_loss.dtype)
            todo = todo[~broken]
            if todo.numel() == 0:
                break
        return best

    def _search(
        self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None, rows: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One run on the batch rows ``rows``: their best points, which are broken, their loss."""
        assert self.threat is not None
        threat = self.threat
        goal = y if targets is None else targets
        best = x.clone()
        best[rows] = threat.project(x[rows] + threat.eps * self._start(x[rows], generator), x[rows])
        logits = oracle.query(best[rows], rows)
        best_loss = torch.zeros(x.shape[0], dtype=logits.dtype, device=x.device)
        best_loss[rows] = attack_loss(self.loss, logits, goal[rows], targets is not None)
        broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        broken[rows] = is_success(logits, y[rows], None if targets is None else targets[rows])
        active = rows[~broken[rows]]
        for iteration in range(self.queries - 1):
            if active.numel() == 0:
                break
            xa, ba = x[active], best[active]
            p = p_schedule(iteration, self.p_init, self.queries, self.rescale_schedule)
            step = self._linf_step if threat.norm == "linf" else self._l2_step
            candidate = threat.project(step(xa, ba, p, generator), xa)
            logits = oracle.query(candidate, active)
            loss = attack_loss(self.loss, logits, goal[active], targets is not None)
            success = is_success(logits, y[active], None if targets is None else targets[active])
            accept = (loss > best_loss[active]) | success
            best[active[accept]] = candidate[accept]
            best_loss[active[accept]] = loss[accept]
            broken[active[success]] = True
            active = active[~success]
        return best[rows], broken[rows], best_loss[rows]

    def _start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The starting direction, of unit Linf (stripes) or unit L2 (pyramid grid) norm."""
        n, c, h, w = x.shape
        if self.threat is not None and self.threat.norm == "linf":
            return _signs((n, c, 1, w), generator, x).expand(n, c, h, w)
        size = max(h // 5, 1)
        offset = (h - 5 * size) // 2 if h >= 5 else 0
        delta = torch.zeros_like(x)
        for top in range(offset, h - size + 1, size):
            for left in range(offset, w - size + 1, size):
                pattern = self._pyramids(n, size, generator, x)
                delta[:, :, top : top + size, left : left + size] += pattern * _signs((n, c, 1, 1), generator, x)
        return delta / (_sample_norm(delta) + _TINY)

    def _pyramids(self, k: int, size: int, generator: torch.Generator, like: Tensor) -> Tensor:
        """k×1×size×size: the pyramid pattern, transposed for a random half of the samples."""
        pattern = pyramid(size, like.device, like.dtype)
        flip = torch.randint(0, 2, (k, 1, 1, 1), generator=generator, device=like.device).bool()
        return torch.where(flip, pattern.T, pattern)

    def _size(self, p: float, x: Tensor, least: int) -> int:
        """The window's side: a share ``p`` of the image's pixels, at least ``least``."""
        h, w = x.shape[-2:]
        return min(max(int(round(math.sqrt(p * h * w))), least), h, w)

    def _linf_step(self, x: Tensor, best: Tensor, p: float, generator: torch.Generator) -> Tensor:
        """Set one window per sample to ``x + eps * s_c``; signs that would leave the (clipped)
        window as it is are redrawn (a query that changes nothing is wasted), as in the paper's code."""
        assert self.threat is not None
        k, c, h, w = x.shape
        size = self._size(p, x, 1)
        mask = _window(k, size, h, w, generator, x.device)
        candidate = torch.where(mask, x + self.threat.eps * _signs((k, c, 1, 1), generator, x), best)
        for _ in range(_REDRAWS):
            same = (candidate.clamp(*self.bounds) - best).abs().flatten(1).amax(dim=1) < 1e-7
            if not bool(same.any()):
                break
            signs = _signs((int(same.sum()), c, 1, 1), generator, x)
            candidate[same] = torch.where(mask[same], x[same] + self.threat.eps * signs, best[same])
        return candidate

    def _l2_step(self, x: Tensor, best: Tensor, p: float, generator: torch.Generator) -> Tensor:
        assert self.threat is not None
        eps = self.threat.eps
        k, c, h, w = x.shape
        size = self._size(p, x, 3)
        size += 1 if size % 2 == 0 and size < min(h, w) else 0
        delta = best - x
        first = _window(k, size, h, w, generator, x.device).expand(k, c, h, w)
        second = _window(k, size, h, w, generator, x.device).expand(k, c, h, w)
        inside = delta.masked_select(first).view(k, c, size, size)
        budget = (eps**2 - _sample_norm(delta).pow(2)).clamp(min=0.0) / c
        held = _channel_norm(delta * (first | second))
        update = self._pyramids(k, size, generator, x) * _signs((k, c, 1, 1), generator, x)
        update = update + inside / (_channel_norm(inside) + _TINY)
        update = update / (_channel_norm(update) + _TINY) * (budget + held.pow(2)).sqrt()
        delta = delta.masked_fill(second, 0.0).masked_scatter(first, update.contiguous())
        return x + eps * delta / (_sample_norm(delta) + _TINY)
