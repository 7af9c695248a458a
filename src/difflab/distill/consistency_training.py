"""Consistency distillation (Weng eq. 31) and consistency training (eq. 32) — Song et al. 2023,
Algorithms 2 and 3, in the VE coordinates x̃ = x_t/√ᾱ_t of :mod:`.consistency`.

    L_CD = E[λ(σ_n) d(f_θ(x̃_{σ_{n+1}}, σ_{n+1}), f_θ⁻(x̂^φ_{σ_n}, σ_n))],
           x̂^φ_{σ_n} = x̃_{σ_{n+1}} + (σ_n − σ_{n+1}) Φ(x̃_{σ_{n+1}}, σ_{n+1}; φ)     (eq. 31)
    L_CT = E[λ(σ_n) d(f_θ(x + σ_{n+1} z, σ_{n+1}), f_θ⁻(x + σ_n z, σ_n))]               (eq. 32)

with n ~ U{1..N−1}, λ ≡ 1 (as in the paper), θ⁻ ← μ θ⁻ + (1 − μ) θ after each update.

Distillation's ODE is the probability-flow ODE of the teacher ε-model, dx̃/dσ = ε_φ(√ᾱ x̃, t)
(``samplers/ode.py``; it equals (x̃ − D_φ)/σ, EDM's form). Its levels σ_n are the Karras grid
(ρ = 7) snapped to the schedule's steps (``karras_timesteps``) so that the teacher, which takes
integer t, is evaluated exactly; one Euler step between adjacent levels is exactly a DDIM step.
Consistency training needs no teacher, so its levels are the continuous Karras grid between the
model's σ_min and σ_max, with N(k) and μ(k) growing over training (Song et al. 2023, App. C):

    N(k) = ⌈√(k/K · ((s1 + 1)² − s0²) + s0²) − 1⌉ + 1,    μ(k) = exp(s0 log μ0 / N(k)).

(Song et al.'s code divides by N(k) − 1 in μ(k); we follow the paper, which gives μ(0) = μ0.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..parameterization import Model
from ..schedules import Schedule
from .consistency import ConsistencyModel, sigma_table
from .distances import Distance, l2

Solver = Callable[[Model, Schedule, Tensor, Tensor, Tensor, dict], Tensor]


# --- one-step ODE solvers on the teacher (Φ of eq. 31) ------------------------------------
def _slope(teacher: Model, schedule: Schedule, x: Tensor, t: Tensor, cond: dict) -> Tensor:
    """dx̃/dσ = ε_φ(√ᾱ_t x̃, t) at integer t (B,): the probability-flow ODE in σ."""
    ab = Schedule.broadcast(schedule.alpha_bar_at(t).to(x.device), x)
    return teacher(x * ab.sqrt(), t, **cond)


@torch.no_grad()
def euler_step(teacher: Model, schedule: Schedule, x: Tensor, t_from: Tensor, t_to: Tensor,
               cond: dict) -> Tensor:
    """x̃ at σ_{t_to} from x̃ at σ_{t_from} by one Euler step (= one DDIM η = 0 step)."""
    table = sigma_table(schedule).to(x.device)
    h = Schedule.broadcast(table[t_to] - table[t_from], x)  # σ_n − σ_{n+1} < 0, (B, 1, …)
    return x + h * _slope(teacher, schedule, x, t_from, cond)


@torch.no_grad()
def heun_step(teacher: Model, schedule: Schedule, x: Tensor, t_from: Tensor, t_to: Tensor,
              cond: dict) -> Tensor:
    """One Heun (trapezoidal) step — Karras et al. 2022, Alg. 1; Song et al.'s default Φ."""
    table = sigma_table(schedule).to(x.device)
    h = Schedule.broadcast(table[t_to] - table[t_from], x)
    d1 = _slope(teacher, schedule, x, t_from, cond)
    d2 = _slope(teacher, schedule, x + h * d1, t_to, cond)
    return x + h * 0.5 * (d1 + d2)


# --- the losses ----------------------------------------------------------------------------
def cd_loss(model: ConsistencyModel, target: ConsistencyModel, teacher: Model,
            schedule: Schedule, x0: Tensor, ts: Tensor, *, solver: Solver = heun_step,
            distance: Distance = l2, generator: torch.Generator | None = None,
            cond: dict | None = None, n: Tensor | None = None,
            z: Tensor | None = None) -> Tensor:
    """L_CD on a batch x0 (B, …) — Weng eq. (31); Song et al. 2023, Alg. 2. ts: the levels as
    increasing integer steps (N,) (``karras_timesteps``). ``n`` (B,) in 0..N−2 and ``z``
    (B, …) are drawn from ``generator`` unless given (in that order). Returns a scalar."""
    cond = cond or {}
    if n is None:
        n = torch.randint(0, ts.numel() - 1, (x0.shape[0],), generator=generator)  # (B,)
    ts = ts.to(n.device)
    t_lo, t_hi = ts[n].to(x0.device), ts[n + 1].to(x0.device)  # t_n < t_{n+1}, (B,)
    table = sigma_table(schedule).to(x0.device)
    if z is None:
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_hi = x0 + Schedule.broadcast(table[t_hi], x0) * z  # x̃ at σ_{n+1}, (B, …)
    x_lo = solver(teacher, schedule, x_hi, t_hi, t_lo, cond)  # x̂^φ at σ_n
    with torch.no_grad():
        y = target(x_lo, table[t_lo], **cond)
    return distance(model(x_hi, table[t_hi], **cond), y).mean()


def ct_loss(model: ConsistencyModel, target: ConsistencyModel, x0: Tensor, sigmas: Tensor, *,
            distance: Distance = l2, generator: torch.Generator | None = None,
            cond: dict | None = None, n: Tensor | None = None,
            z: Tensor | None = None) -> Tensor:
    """L_CT on a batch x0 (B, …) — Weng eq. (32); Song et al. 2023, Alg. 3: the same z at two
    adjacent levels of ``sigmas`` (N,) increasing. ``n`` (B,) and ``z`` (B, …) are drawn from
    ``generator`` unless given (in that order). Returns a scalar."""
    cond = cond or {}
    if n is None:
        n = torch.randint(0, sigmas.numel() - 1, (x0.shape[0],), generator=generator)  # (B,)
    sigmas = sigmas.to(n.device)
    s_lo, s_hi = sigmas[n].to(x0.device), sigmas[n + 1].to(x0.device)  # (B,) float64
    if z is None:
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    with torch.no_grad():
        y = target(x0 + Schedule.broadcast(s_lo, x0) * z, s_lo, **cond)
    return distance(model(x0 + Schedule.broadcast(s_hi, x0) * z, s_hi, **cond), y).mean()


# --- consistency training's schedules, Song et al. 2023 App. C --------------------------------
def ct_num_levels(k: int, K: int, s0: int = 2, s1: int = 150) -> int:
    """N(k) = ⌈√(k/K · ((s1 + 1)² − s0²) + s0²) − 1⌉ + 1 (N(0) = s0, N(K) = s1 + 1)."""
    return math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1


def ct_ema_decay(k: int, K: int, s0: int = 2, s1: int = 150, mu0: float = 0.9) -> float:
    """μ(k) = exp(s0 log μ0 / N(k))."""
    return math.exp(s0 * math.log(mu0) / ct_num_levels(k, K, s0, s1))
