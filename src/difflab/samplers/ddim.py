"""DDIM — Weng eq. (27)-(29); Song et al. 2020 (DDIM), eq. (12) — with inversion and slerp."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..parameterization import Model
from ..schedules import Schedule, posterior_coefs
from ._common import Callback, alpha_bar_table, loop, noise_like, predict
from .timesteps import check_eta, pairs, resolve


@torch.inference_mode()
def ddim(
    model: Model,
    schedule: Schedule,
    x_T: Tensor,
    steps: int | Sequence[int] | None = 50,
    generator: torch.Generator | None = None,
    *,
    eta: float = 0.0,
    spacing: str = "linspace",
    progress: bool = False,
    callback: Callback | None = None,
    cond: dict | None = None,
) -> Tensor:
    """x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ_t²) ε̂ + σ_t z for each update s < t — Weng eq. (29).

    σ_t² = η β̃_{t|s} = η (1−ᾱ_s)/(1−ᾱ_t) (1 − ᾱ_t/ᾱ_s) (eq. 28 on the sub-chain; Song et al.
    2020, eq. 16). η = 0 is deterministic (DDIM); η = 1 is ancestral DDPM with σ² = β̃ on the
    same steps — the same Gaussian, drawn with the same noise. x_T: (B, …).
    """
    eta = check_eta(eta)
    ts = resolve(schedule.T, steps, spacing)
    ab = alpha_bar_table(schedule)
    x = x_T
    for i, (t, s) in enumerate(loop(pairs(ts), progress, "ddim")):
        eps, x0_hat = predict(model, x, t, ab[t], cond)
        var = eta * posterior_coefs(ab[t], ab[s])[2]  # σ_t² = η β̃_{t|s}; 0 when s = 0
        x = math.sqrt(ab[s]) * x0_hat + math.sqrt(max(1 - ab[s] - var, 0.0)) * eps
        if var > 0:
            x = x + math.sqrt(var) * noise_like(x, generator)
        if callback is not None:
            callback(i, t, x)
    return x


@torch.inference_mode()
def ddim_invert(
    model: Model,
    schedule: Schedule,
    x0: Tensor,
    steps: int | Sequence[int] | None = 50,
    *,
    spacing: str = "linspace",
    progress: bool = False,
    callback: Callback | None = None,
    cond: dict | None = None,
) -> Tensor:
    """Run deterministic DDIM (η = 0) backwards, x_0 → x_{τ_S}: the encoder of Song et al. 2020,
    §5.4, and the reason DDIM latents can be edited and interpolated.

    Each update t → t' (t < t') reuses ε̂ at the current point, x_{t'} = √ᾱ_{t'} x̂_0 +
    √(1−ᾱ_{t'}) ε̂ (eq. 29 with σ = 0 read the other way); at x_0 itself ε̂ is taken at τ_1.
    ``ddim(model, schedule, ddim_invert(model, schedule, x0, S), S)`` returns ≈ x0, with an error
    that shrinks as S grows.
    """
    ts = resolve(schedule.T, steps, spacing).flip(0).tolist()  # increasing τ_1 < … < τ_S
    ab = alpha_bar_table(schedule)
    x = x0
    for i, (t, t_next) in enumerate(loop(list(zip([0] + ts[:-1], ts, strict=True)), progress,
                                         "ddim-invert")):
        t_eval = t if t > 0 else t_next
        eps, _ = predict(model, x, t_eval, ab[t_eval], cond)
        x0_hat = (x - math.sqrt(1 - ab[t]) * eps) / math.sqrt(ab[t])  # eq. (11) at t
        x = math.sqrt(ab[t_next]) * x0_hat + math.sqrt(1 - ab[t_next]) * eps
        if callback is not None:
            callback(i, t_next, x)
    return x


def slerp(z0: Tensor, z1: Tensor, alpha: float | Tensor) -> Tensor:
    """Spherical interpolation between two latents, per sample (Song et al. 2020, §5.4;
    Shoemake 1985): sin((1−α)θ)/sin θ · z0 + sin(αθ)/sin θ · z1, θ the angle between them.

    Keeps the norm typical of Gaussian latents, which linear interpolation shrinks. z0, z1:
    (B, …); alpha a float or a (B,) tensor. Falls back to linear interpolation when θ ≈ 0.
    """
    a = torch.as_tensor(alpha, dtype=torch.float64)
    f0, f1 = z0.flatten(1).double(), z1.flatten(1).double()  # (B, D)
    cos = (f0 * f1).sum(1) / (f0.norm(dim=1) * f1.norm(dim=1))
    theta = cos.clamp(-1, 1).acos()  # (B,)
    small = theta < 1e-6
    st = torch.where(small, torch.ones_like(theta), theta.sin())
    w0 = torch.where(small, 1 - a, ((1 - a) * theta).sin() / st)
    w1 = torch.where(small, a * torch.ones_like(theta), (a * theta).sin() / st)
    out = w0[:, None] * f0 + w1[:, None] * f1
    return out.reshape(z0.shape).to(z0.dtype)
