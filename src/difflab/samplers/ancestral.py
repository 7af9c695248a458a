"""Ancestral DDPM sampling — Weng eq. (17); Ho et al. 2020, Algorithm 2 — full or strided."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..parameterization import Model, x0_from_eps
from ..schedules import Schedule, posterior_coefs
from ._common import Callback, alpha_bar_table, loop, model_output, noise_like
from .timesteps import pairs, resolve

VARIANCES = ("beta_tilde", "beta", "learned")


@torch.inference_mode()
def ddpm(
    model: Model,
    schedule: Schedule,
    x_T: Tensor,
    steps: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    *,
    variance: str | None = None,
    spacing: str = "linspace",
    progress: bool = False,
    callback: Callback | None = None,
    cond: dict | None = None,
) -> Tensor:
    """x_{t−1} ~ N(μ_θ(x_t, t), σ_t² I), from x_T (B, …) down to x_0.

    μ_θ = (x_t − β_t/√(1−ᾱ_t) · ε_θ(x_t, t)) / √α_t (Weng eq. 17), computed as μ̃_t(x_t, x̂_0)
    with x̂_0 from eq. (11) — the same number, and the form that thresholding will need.
    σ_t² = β̃_t (``variance="beta_tilde"``) or β_t (``"beta"``), Ho et al. 2020, §3.2; or the
    learned Σ_θ = exp(v log β_t + (1 − v) log β̃_t) of eq. (23) (``"learned"``, Nichol & Dhariwal
    2021) for a model that returns (ε̂, v). The default (None) is "learned" for such a model and
    "beta_tilde" otherwise.

    ``steps``: None → all T steps; S < T → strided sampling on τ_S > … > τ_1 (see
    :mod:`difflab.samplers.timesteps`), where each update s < t uses β re-derived from ᾱ,
    β_{t|s} = 1 − ᾱ_t/ᾱ_s, and β̃_{t|s} = (1−ᾱ_s)/(1−ᾱ_t)·β_{t|s} (Nichol & Dhariwal 2021, §4);
    an explicit list of timesteps also works. No noise is added on the last update (to x_0).
    """
    if variance is not None and variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    ts = resolve(schedule.T, steps, spacing)
    ab = alpha_bar_table(schedule)
    x = x_T
    for i, (t, s) in enumerate(loop(pairs(ts), progress, "ddpm")):
        eps, v = model_output(model, x, t, cond)
        if variance == "learned" and v is None:
            raise ValueError("variance='learned' needs a model that returns (eps, v)")
        x0_hat = x0_from_eps(x, eps, torch.tensor(ab[t], dtype=x.dtype, device=x.device))
        c0, ct, beta_tilde, beta = posterior_coefs(ab[t], ab[s])
        x = c0 * x0_hat + ct * x  # μ_θ(x_t, t), eq. (17) via eq. (10)-(11)
        if s > 0:
            if v is not None and variance in (None, "learned"):  # eq. (23), elementwise
                std = (0.5 * (v * math.log(beta) + (1 - v) * math.log(beta_tilde))).exp()
            else:
                std = math.sqrt(beta if variance == "beta" else beta_tilde)
            x = x + std * noise_like(x, generator)
        if callback is not None:
            callback(i, t, x)
    return x
