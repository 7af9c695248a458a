"""Annealed Langevin dynamics — Weng eq. (4) run over decreasing noise levels with the score of
eq. (21), as in NCSN (Song & Ermon 2019, Algorithm 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..parameterization import Model
from ..schedules import Schedule
from ._common import Callback, alpha_bar_table, loop, noise_like, predict
from .timesteps import resolve


@torch.inference_mode()
def langevin(
    model: Model,
    schedule: Schedule,
    x_T: Tensor,
    steps: int | Sequence[int] | None = 100,
    generator: torch.Generator | None = None,
    *,
    n_each: int = 10,
    step_size: float = 0.5,
    denoise: bool = True,
    spacing: str = "geometric",
    progress: bool = False,
    callback: Callback | None = None,
    cond: dict | None = None,
) -> Tensor:
    """Sample with the score alone: ``n_each`` Langevin updates at each of ``steps`` noise levels.

    NCSN perturbs data additively, x̃ = x_0 + σ z. The diffusion's x_t maps onto that as
    x̃ = x_t/√ᾱ_t with σ_t = √((1−ᾱ_t)/ᾱ_t), and the score there is ∇ log q(x̃) = −ε_θ(x_t, t)/σ_t
    (eq. 21 rescaled). At each level, n_each updates of eq. (4),

        x̃ ← x̃ + (δ_t/2) ∇ log q(x̃) + √δ_t z,  δ_t = step_size · σ_t²

    (NCSN's α_i ∝ σ_i²). Levels run from τ_S down to τ_1. ``spacing="geometric"`` (the default)
places ``steps`` levels geometrically in σ between σ_T and σ_1, as NCSN does, each rounded to the
nearest timestep (duplicates dropped, so there may be fewer); the timestep spacings of
:mod:`difflab.samplers.timesteps` and explicit lists also work. With ``denoise``, a
    last Tweedie step x̂_0 = x̃ + σ² ∇ log q(x̃) (= eq. 11) removes the smallest level's noise
    (Jolicoeur-Martineau et al. 2021). Model evaluations: steps · n_each (+1 with denoise).
    """
    if not (n_each >= 1 and step_size > 0):
        raise ValueError("langevin needs n_each >= 1 and step_size > 0")
    ab = alpha_bar_table(schedule)
    if spacing == "geometric" and isinstance(steps, int):
        ts = geometric_levels(schedule, steps)
    else:
        ts = resolve(schedule.T, steps, "linspace" if spacing == "geometric" else spacing).tolist()
    x = x_T / math.sqrt(ab[ts[0]])  # VE coordinates, std ≈ σ_max
    for i, t in enumerate(loop(ts, progress, "langevin")):
        sigma = math.sqrt((1 - ab[t]) / ab[t])
        delta = step_size * sigma**2
        for _ in range(n_each):
            eps = predict(model, x * math.sqrt(ab[t]), t, ab[t], cond)[0]
            x = x - 0.5 * delta / sigma * eps + math.sqrt(delta) * noise_like(x, generator)
        if callback is not None:
            callback(i, t, x * math.sqrt(ab[t]))
    if denoise:
        t = ts[-1]
        eps = predict(model, x * math.sqrt(ab[t]), t, ab[t], cond)[0]
        x = x - math.sqrt((1 - ab[t]) / ab[t]) * eps
    return x


def geometric_levels(schedule: Schedule, levels: int) -> list[int]:
    """Timesteps whose σ_t = √((1−ᾱ_t)/ᾱ_t) lie nearest (in log σ) to ``levels`` geometrically
    spaced values from σ_T down to σ_1; decreasing, distinct, first T and last 1."""
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= schedule.T:
        raise ValueError(f"steps must be an integer in 1..T (T={schedule.T}), got {levels!r}")
    ab = schedule.alpha_bars
    log_sigma = 0.5 * ((1 - ab) / ab).log()  # (T,), increasing in t
    target = torch.linspace(float(log_sigma[-1]), float(log_sigma[0]), levels, dtype=torch.float64)
    nearest = (log_sigma[None, :] - target[:, None]).abs().argmin(1) + 1  # (levels,)
    return nearest.unique().flip(0).tolist()
