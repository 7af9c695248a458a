"""Choosing the re-noising levels of multistep consistency sampling by search.

Algorithm 1 of Song et al. 2023 (Weng eq. 30) re-noises the sample to levels
τ_1 > … > τ_{S−1} between its S evaluations of f_θ, and leaves their choice open. For its
multistep results the paper (arXiv:2303.01469) picks them greedily, one at a time, each by a
ternary search that minimises the FID of the samples. :func:`search_levels` does the same with
any score a user supplies (FD, sliced W1, …), over ln τ_k on [ln σ_min, ln τ_{k−1}], the
earlier levels fixed, scoring the (k + 1)-step sample. Every probe draws from the same x_T and
the same re-noising noise (common random numbers), so the score differs between probes by the
level alone, not by the draw.

A ternary search alone assumes one minimum. FD from a few hundred samples is not that smooth:
on a small digits model (500 iCT updates; n = 540) FD against ln τ had its minimum near
τ ≈ 1.3 (FD 101), a smaller dip at 0.2 (126) and a flat stretch below 0.1 (135-141), where a
golden-section search over the whole range settled (σ 0.10, FD 135). So each level is first
scanned on an even grid in ln τ, and the golden-section search (a ternary search that reuses
one of its two probes at each step) then refines between the best grid point's neighbours.

Which level is best depends on the model. For 2 steps it was σ 0.6-1.3 on small
consistency-trained U-Nets (digits, MNIST 16×16) and 2-18 on 2-D MLPs. DDIM's midpoint, the
default of :func:`difflab.samplers.consistency.default_levels`, is σ ≈ 3.4 on the linear
schedule; see ``benchmarks/consistency_levels.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..schedules import Schedule
from .consistency import consistency, default_levels, unbind

GOLDEN = (math.sqrt(5) - 1) / 2  # 0.618…: the bracket shrinks by this at each probe


def golden_section(fn: Callable[[float], float], lo: float, hi: float,
                   iters: int) -> tuple[float, float]:
    """Minimise ``fn`` on [lo, hi] by golden-section search: ``iters`` iterations, each one new
    evaluation (two for the first), the bracket shrinking by 0.618 each; iters = 0 evaluates
    the middle alone. Returns (the best point evaluated, its value)."""
    memo: dict[float, float] = {}

    def at(u: float) -> float:
        if u not in memo:
            memo[u] = fn(u)
        return memo[u]

    a, b = lo, hi
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    for _ in range(iters):
        if at(c) <= at(d):  # the minimum lies in [a, d]; the probe at c is the next d
            b, d = d, c
            c = b - GOLDEN * (b - a)
        else:  # in [c, b]; the probe at d is the next c
            a, c = c, d
            d = a + GOLDEN * (b - a)
    if not memo:
        at((lo + hi) / 2)
    best = min(memo, key=memo.get)
    return best, memo[best]


def search_levels(model, schedule: Schedule, x_T: Tensor, score: Callable[[Tensor], float],
                  steps: int = 2, *, grid: int = 10, iters: int = 6, seed: int = 0
                  ) -> tuple[list[float], float, list[tuple[list[float], float]]]:
    """Greedy search of the S − 1 re-noising levels of an S-step consistency sample
    (``steps`` = S ≥ 2), as Song et al. 2023 chose theirs.

    ``model``: a consistency model (bare or bound to its conditions, as the ``consistency``
    sampler takes it). ``x_T`` (B, …): the N(0, I) noise every probe starts from. ``score``:
    x_0 (B, …) → a float, lower is better (FD to real data, sliced W1, …). ``seed``: of the
    re-noising noise, the same for every probe.

    Level k: ``grid`` probes at the centres of ``grid`` equal cells of [ln σ_min, ln τ_{k−1}]
    (τ_0 = σ_max), then ``iters`` golden-section iterations (:func:`golden_section`) between
    the best one's neighbouring centres (clipped to the range), with τ_1 … τ_{k−1} fixed,
    scoring the (k + 1)-step sample: grid + iters + 1 probes a level (grid alone if
    iters = 0; by default 17, and the final bracket is 2 · 0.618⁶ ≈ 6% of a cell). The default
    levels (:func:`default_levels`) are scored too and win if nothing probed beats them, so
    under these draws the result never scores worse than the default. Returns (levels [S − 1
    floats, decreasing], their score, every probe as (levels, score) in the order probed).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= schedule.T:
        raise ValueError(f"a level search needs steps in 2..T (T={schedule.T}), got {steps!r}")
    if grid < 1 or iters < 0:
        raise ValueError(f"need grid >= 1 and iters >= 0, got grid={grid}, iters={iters}")
    f = unbind(model)[0]
    history: list[tuple[list[float], float]] = []

    def probe(levels: list[float]) -> float:
        g = torch.Generator().manual_seed(seed)
        x0 = consistency(model, schedule, x_T, len(levels) + 1, g, sigmas=levels)  # (B, …)
        value = float(score(x0))
        if not math.isfinite(value):
            value = math.inf  # a diverged probe loses to every finite one
        history.append((list(levels), value))
        return value

    levels: list[float] = []
    found = math.inf
    for _ in range(steps - 1):
        top = levels[-1] if levels else f.sigma_max
        prefix = list(levels)
        lo, hi = math.log(f.sigma_min), math.log(top)

        def level(u: float, top: float = top) -> float:  # inside [σ_min, top] despite rounding
            return min(max(math.exp(u), f.sigma_min), top)

        def value(u: float, prefix: list[float] = prefix) -> float:
            return probe([*prefix, level(u)])

        cell = (hi - lo) / grid
        centres = [lo + (j + 0.5) * cell for j in range(grid)]
        scanned = [value(u) for u in centres]
        j = min(range(grid), key=scanned.__getitem__)
        best, found = centres[j], scanned[j]
        if iters:
            u, v = golden_section(value, max(lo, best - cell), min(hi, best + cell), iters)
            if v < found:
                best, found = u, v
        levels.append(level(best))

    default = default_levels(f, schedule, steps)
    if probe(default) < found:
        return default, history[-1][1], history
    return levels, found, history
