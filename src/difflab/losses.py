"""Training objectives. L_simple here; the VLB terms and L_hybrid come with learned variance.

Weng eq. (19)-(20); Ho et al. 2020, Algorithm 1 and eq. (14).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .parameterization import Model
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
    **cond,
) -> Tensor:
    """L_simple = E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖² — Weng eq. (19).

    x0: (B, …). t is drawn uniformly from 1..T and ε from N(0, I) unless given. Returns the
    mean over the batch and the data dimensions (a scalar), as in Ho et al.'s implementation.
    """
    if t is None:
        t = sample_t(schedule, x0.shape[0], generator, x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                            device=generator_device(generator, x0.device)).to(x0.device)
    x_t = schedule.q_sample(x0, t, noise)  # (B, …)
    out = model(x_t, t, **cond)
    eps_hat = out[0] if isinstance(out, tuple) else out  # a learned-variance model gives (ε̂, v)
    return (noise - eps_hat).pow(2).mean()
