"""Which timesteps a sampler visits: strided schedules τ_S > … > τ_1 (Weng §"Fewer Sampling Steps").

Three spacings, each exact and documented (1-indexed, t ∈ 1..T; S = number of steps, S ≤ T):

- ``"linspace"``  τ = round(linspace(1, T, S)) — starts at T, ends at 1 (S = 1 gives [T]: a
  single step must start from noise). The evenly strided schedule of Nichol & Dhariwal 2021
  (§4, "evenly spaced real numbers between 1 and T").
- ``"leading"``   τ_k = 1 + k·⌊T/S⌋, k = 0..S−1 — ends at 1 and starts at 1 + (S−1)⌊T/S⌋,
  which is below T unless S = T (T = 1000, S = 10: 901, 801, …, 1). DDIM's original choice
  (Song et al. 2020) and diffusers' "leading" with steps_offset = 1.
- ``"trailing"``  τ_k = round(T − k·T/S), k = 0..S−1 — starts at T, ends at round(T/S). Lin et
  al. 2024 (Table 2): the first step sees pure noise; the last update jumps from τ_1 straight to
  x_0. It ends at t = 1 only when S = T.

round(x) is ⌊x + ½⌋ (not banker's rounding), which keeps the steps strictly decreasing for any
S ≤ T. Every sampler's last update goes from τ_1 to x_0 (ᾱ_0 = 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

SPACINGS = ("linspace", "leading", "trailing")


def timesteps(T: int, steps: int, spacing: str = "linspace") -> Tensor:
    """The S visited timesteps, int64 (S,), strictly decreasing."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..T (T={T}), got {steps!r}")
    S = steps
    k = torch.arange(S, dtype=torch.float64)
    if spacing == "linspace":
        ts = torch.floor(1 + k * ((T - 1) / max(S - 1, 1)) + 0.5) if S > 1 else k.new_tensor([T])
    elif spacing == "leading":
        ts = 1 + k * (T // S)
    elif spacing == "trailing":
        ts = torch.floor(T - k * (T / S) + 0.5).flip(0)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return ts.long().flip(0)


def resolve(T: int, steps: int | Sequence[int] | Tensor | None, spacing: str = "linspace"
            ) -> Tensor:
    """Steps as the samplers take them: None → all T; an int S → ``timesteps(T, S, spacing)``;
    an explicit list of distinct timesteps in 1..T → those, sorted decreasing."""
    if steps is None:
        return torch.arange(T, 0, -1)
    if isinstance(steps, int) and not isinstance(steps, bool):
        return timesteps(T, steps, spacing)
    ts = torch.as_tensor(steps)
    if ts.ndim != 1 or ts.numel() == 0 or ts.dtype.is_floating_point:
        raise ValueError("explicit timesteps must be a non-empty list of integers")
    ts = ts.long().sort(descending=True).values
    if int(ts[-1]) < 1 or int(ts[0]) > T or (ts[:-1] == ts[1:]).any():
        raise ValueError(f"explicit timesteps must be distinct integers in 1..T (T={T})")
    return ts


def capped(T: int, t_max: int, steps: int | Sequence[int] | None, spacing: str,
           own: str) -> Tensor | None:
    """The grid of a sampler that only visits t ≤ t_max (DPM-Solver++'s λ clip, EDM's σ cap):
    None → every t ≤ t_max; an explicit list → those timesteps, unclipped; S ≥ t_max (but ≤ T)
    → every t ≤ t_max; a spacing of this module → that grid on 1..t_max. Returns None when
    ``spacing`` is the sampler's ``own`` grid ("logsnr", "karras"), which it builds itself."""
    if steps is None:
        return torch.arange(t_max, 0, -1)
    if not isinstance(steps, int) or isinstance(steps, bool):
        return resolve(T, steps)
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..T (T={T}), got {steps!r}")
    if steps >= t_max:  # more steps than timesteps below the cap: take them all
        return torch.arange(t_max, 0, -1)
    return None if spacing == own else timesteps(t_max, steps, spacing)


def pairs(ts: Tensor) -> list[tuple[int, int]]:
    """[(τ_S, τ_{S−1}), …, (τ_1, 0)]: each update's (t, s), s < t, ending at s = 0."""
    nxt = torch.cat([ts[1:], ts.new_zeros(1)])
    return list(zip(ts.tolist(), nxt.tolist(), strict=True))


def check_eta(eta: float) -> float:
    if not (isinstance(eta, int | float) and eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    return float(eta)
