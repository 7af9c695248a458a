"""Ancestral DDPM sampling — Weng eq. (17); Ho et al. 2020, Algorithm 2 — full or strided."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..parameterization import Model
from ..schedules import Schedule, posterior_coefs
from ._common import Callback, alpha_bar_table, loop, noise_like, predict
from .timesteps import pairs, resolve

VARIANCES = ("beta_tilde", "beta")


@torch.inference_mode()
def ddpm(
    model: Model,
    schedule: Schedule,
    x_T: Tensor,
    steps: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    *,
    variance: str = "beta_tilde",
    spacing: str = "linspace",
    progress: bool = False,
    callback: Callback | None = None,
    cond: dict | None = None,
) -> Tensor:
    """x_{t−1} ~ N(μ_θ(x_t, t), σ_t² I), from x_T (B, …) down to x_0.

    μ_θ = (x_t − β_t/√(1−ᾱ_t) · ε_θ(x_t, t)) / √α_t (Weng eq. 17), computed as μ̃_t(x_t, x̂_0)
    with x̂_0 from eq. (11) — the same number, and the form that thresholding will need.
    σ_t² = β̃_t (``variance="beta_tilde"``) or β_t (``"beta"``), Ho et al. 2020, §3.2.

    ``steps``: None → all T steps; S < T → strided sampling on τ_S > … > τ_1 (see
    :mod:`difflab.samplers.timesteps`), where each update s < t uses β re-derived from ᾱ,
    β_{t|s} = 1 − ᾱ_t/ᾱ_s, and β̃_{t|s} = (1−ᾱ_s)/(1−ᾱ_t)·β_{t|s} (Nichol & Dhariwal 2021, §4);
    an explicit list of timesteps also works. No noise is added on the last update (to x_0).
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    ts = resolve(schedule.T, steps, spacing)
    ab = alpha_bar_table(schedule)
    x = x_T
    for i, (t, s) in enumerate(loop(pairs(ts), progress, "ddpm")):
        _, x0_hat = predict(model, x, t, ab[t], cond)
        c0, ct, beta_tilde, beta = posterior_coefs(ab[t], ab[s])
        x = c0 * x0_hat + ct * x  # μ_θ(x_t, t), eq. (17) via eq. (10)-(11)
        if s > 0:
            var = beta_tilde if variance == "beta_tilde" else beta
            x = x + math.sqrt(var) * noise_like(x, generator)
        if callback is not None:
            callback(i, t, x)
    return x
