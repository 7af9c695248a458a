"""Training objectives. L_simple here; the VLB terms and L_hybrid come with learned variance.

Weng eq. (19)-(20); Ho et al. 2020, Algorithm 1 and eq. (14).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .parameterization import Model, v_from_eps_x0
from .schedules import Schedule, generator_device


def sample_t(schedule: Schedule, batch: int, generator: torch.Generator | None = None,
             device=None) -> Tensor:
    """t ~ Uniform{1, …, T}, int64 (B,)."""
    where = generator_device(generator, torch.device(device or "cpu"))
    return torch.randint(1, schedule.T + 1, (batch,), generator=generator, device=where).to(device)


def l_simple(
    model: Model,
    schedule: Schedule,
    x0: Tensor,
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    prediction: str = "eps",
    **cond,
) -> Tensor:
    """L_simple = E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖² — Weng eq. (19).

    x0: (B, …). t is drawn uniformly from 1..T and ε from N(0, I) unless given. Returns the
    mean over the batch and the data dimensions (a scalar), as in Ho et al.'s implementation.

    ``prediction`` names what the network outputs and so its regression target: "eps" (ε, the
    equation above), "v" (v = √ᾱ_t ε − √(1−ᾱ_t) x_0, Salimans & Ho 2022, eq. (8)-(9): in x_0
    terms the weight 1 + SNR_t, where ε's is SNR_t) or "x0" (x_0 itself, weight 1). At small
    ᾱ_t an ε-network's x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t multiplies its error by 1/√ᾱ_t; a v- or
    x_0-network predicts x̂_0 there directly (what a super-resolution stage, whose x_0 is
    nearly known from its low-resolution input, needs at every t).
    """
    if t is None:
        t = sample_t(schedule, x0.shape[0], generator, x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                            device=generator_device(generator, x0.device)).to(x0.device)
    x_t = schedule.q_sample(x0, t, noise)  # (B, …)
    out = model(x_t, t, **cond)
    eps_hat = out[0] if isinstance(out, tuple) else out  # a learned-variance model gives (ε̂, v)
    if prediction == "eps":
        target = noise
    elif prediction == "v":
        ab = schedule.broadcast(schedule.alpha_bar_at(t), x0)  # ᾱ_t (B, 1, …) in x0's dtype
        target = v_from_eps_x0(noise, x0, ab)
    elif prediction == "x0":
        target = x0
    else:
        raise ValueError(f"prediction must be eps, v or x0, got {prediction!r}")
    return (target - eps_hat).pow(2).mean()
