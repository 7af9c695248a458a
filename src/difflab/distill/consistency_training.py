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

Improved consistency training (iCT; Song & Dhariwal 2023, "Improved Techniques for Training
Consistency Models", §3) changes five things, each a function below:

- no EMA target: θ⁻ = stopgrad(θ) (§3.2: the EMA target makes the loss biased at finite N);
- the pseudo-Huber distance d(x, y) = √(‖x − y‖² + c²) − c, c = 0.00054 √d (§3.3,
  :func:`~difflab.distill.distances.pseudo_huber`);
- the exponential curriculum N(k) = min(s0 · 2^⌊k/K'⌋, s1) + 1, K' = ⌊K / (⌊log2(s1/s0)⌋ + 1)⌋
  (eq. 8; s0 = 10, s1 = 1280: eight doubling stages of equal length over the K updates of the
  run, so a short run goes through the same stages as the paper's 400k);
- levels drawn from a discretised lognormal, p(σ_i) ∝ erf((log σ_{i+1} − P_mean)/(√2 P_std)) −
  erf((log σ_i − P_mean)/(√2 P_std)) (eq. 10; P_mean = −1.1, P_std = 2.0) over the Karras σ's;
- the weight λ(σ_i) = 1/(σ_{i+1} − σ_i) (§3.1), and dropout shared by the two branches (both
  forward passes see the same dropout mask: :func:`ict_loss` seeds them identically).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import Tensor

from ..parameterization import Model
from ..schedules import Schedule
from .consistency import ConsistencyModel, sigma_table
from .distances import Distance, l2, pseudo_huber

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


# --- improved consistency training, Song & Dhariwal 2023 ------------------------------------
def ict_num_stages(s0: int = 10, s1: int = 1280) -> int:
    """⌊log2(s1/s0)⌋ + 1, the curriculum's stages of :func:`ict_num_levels` (8 for 10 → 1280)."""
    return int(math.log2(s1 // s0)) + 1


def ict_num_levels(k: int, K: int, s0: int = 10, s1: int = 1280) -> int:
    """N(k) = min(s0 · 2^⌊k/K'⌋, s1) + 1, K' = ⌊K / (⌊log2(s1/s0)⌋ + 1)⌋ — Song & Dhariwal
    2023, eq. (8): s0 = 10 levels doubling to s1 = 1280 in equal stages of the K updates."""
    stage = max(K // ict_num_stages(s0, s1), 1)
    return min(s0 * 2 ** (k // stage), s1) + 1


def lognormal_level_probs(sigmas: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """p(i), i = 0..N−2: the probability of the pair (σ_i, σ_{i+1}) of ``sigmas`` (N,)
    increasing — Song & Dhariwal 2023, eq. (10): the mass of N(P_mean, P_std²) on
    [log σ_i, log σ_{i+1}), renormalised. Float64 (N − 1,)."""
    u = (sigmas.double().log() - p_mean) / (math.sqrt(2.0) * p_std)
    p = torch.special.erf(u[1:]) - torch.special.erf(u[:-1])  # (N − 1,)
    return p / p.sum()


def ict_weight(sigmas: Tensor, n: Tensor) -> Tensor:
    """λ(σ_n) = 1/(σ_{n+1} − σ_n) for the pairs n (B,) of ``sigmas`` (N,) — Song & Dhariwal
    2023, §3.1. Float64 (B,)."""
    s = sigmas.double().to(n.device)
    return 1.0 / (s[n + 1] - s[n])


@contextmanager
def seeded(seed: int | None, device: torch.device):
    """Run the block with the global RNG (of ``device`` too) set to ``seed`` and restore it
    afterwards: two blocks with the same seed draw the same dropout masks. None: no-op."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


def ict_loss(model: ConsistencyModel, x0: Tensor, sigmas: Tensor, n: Tensor, z: Tensor, *,
             distance: Distance = pseudo_huber, cond: dict | None = None,
             dropout_seed: int | None = None, weighted: bool = True) -> Tensor:
    """The iCT loss on a batch x0 (B, …) — Song & Dhariwal 2023, Alg. 1:
    E[λ(σ_n) d(f_θ(x + σ_{n+1} z, σ_{n+1}), stopgrad f_θ(x + σ_n z, σ_n))], the target from
    the same network θ (no EMA) with the same dropout mask (both branches run under
    ``dropout_seed``). n (B,) indexes ``sigmas`` (N,) increasing; z (B, …). Returns a scalar:
    the λ-weighted mean (``weighted=False``: the plain mean)."""
    cond = cond or {}
    sigmas = sigmas.to(n.device)
    s_lo, s_hi = sigmas[n].to(x0.device), sigmas[n + 1].to(x0.device)  # (B,) float64
    with torch.no_grad(), seeded(dropout_seed, x0.device):
        y = model(x0 + Schedule.broadcast(s_lo, x0) * z, s_lo, **cond)
    with seeded(dropout_seed, x0.device):
        d = distance(model(x0 + Schedule.broadcast(s_hi, x0) * z, s_hi, **cond), y)  # (B,)
    if not weighted:
        return d.mean()
    return (ict_weight(sigmas, n).to(d.device, d.dtype) * d).mean()
