"""The probability-flow ODE with Euler and Heun steps.

Song et al. 2021 (score SDE), eq. (13), written in the variables of DDIM (Song et al. 2020,
eq. 14) and EDM (Karras et al. 2022, Algorithm 1): with x̃ = x_t/√ᾱ_t and σ = √((1−ᾱ_t)/ᾱ_t),

    dx̃/dσ = ε_θ(√ᾱ x̃, t),

the score entering through Weng eq. (21). An Euler step in σ is exactly DDIM with η = 0; Heun
adds the trapezoidal correction (2 model evaluations per step, 1 on the last step to σ = 0, so
S steps cost 2S − 1 evaluations).

One guard: the trapezoid's error grows with the step's ratio σ_t/σ_s (the correction adds
≈ (σ_t/σ_s)/2 times the change of x̂_0 across the step). The cosine schedule's clipped tail has
σ_T ≈ 2·10⁴ but σ_{T−1} ≈ 640, so a step leaving t = T can span a ratio above 10³. Where a step's
ratio exceeds ``HEUN_MAX_RATIO`` Heun takes the Euler (= DDIM) step instead, which is exact while
x_t is still pure noise. With the linear schedule no step of S ≥ 5 linspace steps comes near it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..parameterization import Model
from ..schedules import Schedule
from ._common import Callback, alpha_bar_table, loop, predict
from .timesteps import pairs, resolve

HEUN_MAX_RATIO = 100.0


def _sigma(ab: float) -> float:
    return math.sqrt((1 - ab) / ab)


@torch.inference_mode()
def _ode(model, schedule, x_T, steps, heun, spacing, progress, callback, cond, name):
    ts = resolve(schedule.T, steps, spacing)
    ab = alpha_bar_table(schedule)
    x = x_T / math.sqrt(ab[int(ts[0])])  # x̃ = x_t / √ᾱ_t
    for i, (t, s) in enumerate(loop(pairs(ts), progress, name)):
        d = predict(model, x * math.sqrt(ab[t]), t, ab[t], cond)[0]  # dx̃/dσ at σ_t
        h = _sigma(ab[s]) - _sigma(ab[t])  # < 0
        x_next = x + h * d
        if heun and s > 0 and _sigma(ab[t]) <= HEUN_MAX_RATIO * _sigma(ab[s]):
            d2 = predict(model, x_next * math.sqrt(ab[s]), s, ab[s], cond)[0]
            x_next = x + h * 0.5 * (d + d2)
        x = x_next
        if callback is not None:
            callback(i, t, x * math.sqrt(ab[s]))
    return x  # at s = 0, x̃ = x_0


def euler(model: Model, schedule: Schedule, x_T: Tensor,
          steps: int | Sequence[int] | None = 50, generator: torch.Generator | None = None, *,
          spacing: str = "linspace", progress: bool = False, callback: Callback | None = None,
          cond: dict | None = None) -> Tensor:
    """Euler steps on the probability-flow ODE (deterministic; ``generator`` is unused)."""
    return _ode(model, schedule, x_T, steps, False, spacing, progress, callback, cond, "euler")


def heun(model: Model, schedule: Schedule, x_T: Tensor,
         steps: int | Sequence[int] | None = 50, generator: torch.Generator | None = None, *,
         spacing: str = "linspace", progress: bool = False, callback: Callback | None = None,
         cond: dict | None = None) -> Tensor:
    """Heun (2nd-order) steps on the probability-flow ODE — Karras et al. 2022, Algorithm 1
    with S_churn = 0, on the model's own timestep grid. Deterministic."""
    return _ode(model, schedule, x_T, steps, True, spacing, progress, callback, cond, "heun")
