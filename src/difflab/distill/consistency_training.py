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
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..parameterization import Model
from ..schedules import Schedule
from ..training.parts import adamw, draw_batch, ema_, frozen_copy, set_lr
from .consistency import ConsistencyModel, karras_sigmas, karras_timesteps, sigma_table
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
            cond: dict | None = None) -> Tensor:
    """L_CD on a batch x0 (B, …) — Weng eq. (31); Song et al. 2023, Alg. 2. ts: the levels as
    increasing integer steps (N,) (``karras_timesteps``). Returns a scalar."""
    cond = cond or {}
    n = torch.randint(0, ts.numel() - 1, (x0.shape[0],), generator=generator)  # (B,)
    t_lo, t_hi = ts[n].to(x0.device), ts[n + 1].to(x0.device)  # t_n < t_{n+1}, (B,)
    table = sigma_table(schedule).to(x0.device)
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_hi = x0 + Schedule.broadcast(table[t_hi], x0) * z  # x̃ at σ_{n+1}, (B, …)
    x_lo = solver(teacher, schedule, x_hi, t_hi, t_lo, cond)  # x̂^φ at σ_n
    with torch.no_grad():
        y = target(x_lo, table[t_lo], **cond)
    return distance(model(x_hi, table[t_hi], **cond), y).mean()


def ct_loss(model: ConsistencyModel, target: ConsistencyModel, x0: Tensor, sigmas: Tensor, *,
            distance: Distance = l2, generator: torch.Generator | None = None,
            cond: dict | None = None) -> Tensor:
    """L_CT on a batch x0 (B, …) — Weng eq. (32); Song et al. 2023, Alg. 3: the same z at two
    adjacent levels of ``sigmas`` (N,) increasing. Returns a scalar."""
    cond = cond or {}
    n = torch.randint(0, sigmas.numel() - 1, (x0.shape[0],), generator=generator)  # (B,)
    s_lo, s_hi = sigmas[n].to(x0.device), sigmas[n + 1].to(x0.device)  # (B,) float64
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


# --- the loops -----------------------------------------------------------------------------
@dataclass
class Resume:
    """Where a loop starts and stops, for checkpointed runs (``distill.runs``): updates
    ``start`` … min(iters, ``stop``) − 1 of the ``iters``-step schedules (learning rate, N(k),
    μ(k) depend on the step only), with ``optimizer`` (restored AdamW state, or None for a new
    one); ``callback(k, optimizer)`` after update k (1-based), e.g. to save a checkpoint. The
    caller restores the generator, the model and its target."""

    start: int = 0
    stop: int | None = None
    optimizer: torch.optim.Optimizer | None = None
    callback: Callable[[int, torch.optim.Optimizer], None] | None = None


def _fit(model: ConsistencyModel, target: ConsistencyModel | None, data: Tensor, iters: int,
         batch: int, lr: float, lr_decay: bool, weight_decay: float, grad_clip: float,
         generator: torch.Generator | None, cond_data: dict | None, log: list | None,
         loss_and_mu: Callable[[int, Tensor, dict, ConsistencyModel],
                               tuple[Tensor, float]],
         resume: Resume | None = None) -> ConsistencyModel:
    if target is None:
        target = frozen_copy(model)
    resume = resume or Resume()
    opt = resume.optimizer if resume.optimizer is not None else adamw(model, lr, weight_decay)
    model.train()
    params = list(model.parameters())
    end = iters if resume.stop is None else min(iters, resume.stop)
    for k in range(resume.start, end):
        x0, cond = draw_batch(data, batch, generator, cond_data)
        loss, mu = loss_and_mu(k, x0, cond, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(params, grad_clip)
        if lr_decay:
            set_lr(opt, lr * (1 - k / iters))
        opt.step()
        ema_(target, model, mu)  # θ⁻ ← stopgrad(μ θ⁻ + (1 − μ) θ)
        if log is not None:
            log.append(loss.item())
        if resume.callback is not None:
            resume.callback(k + 1, opt)
    target.eval()
    return model.eval()


def consistency_distill(model: ConsistencyModel, teacher: Model, schedule: Schedule,
                        data: Tensor, *, N: int = 18, rho: float = 7.0,
                        solver: Solver = heun_step, distance: Distance = l2, mu: float = 0.95,
                        iters: int = 2000, batch: int = 256, lr: float = 1e-4,
                        lr_decay: bool = False, weight_decay: float = 0.0, grad_clip: float = 1.0,
                        generator: torch.Generator | None = None,
                        cond_data: dict[str, Tensor] | None = None,
                        target: ConsistencyModel | None = None,
                        log: list[float] | None = None) -> ConsistencyModel:
    """Consistency distillation — Song et al. 2023, Alg. 2; Weng eq. (31). Trains ``model``
    (θ, in place; returned in eval mode) against the ε-model ``teacher`` on ``schedule``.

    Its σ range must cover the teacher's levels: build it with ``ConsistencyModel.from_schedule``.
    N, ρ: the Karras levels (N = 18 and Heun were the paper's best on CIFAR-10, Weng Fig. 12).
    ``target``: a copy of the model that holds θ⁻ (deep-copied from ``model`` when None; pass
    one to keep it). ``cond_data``: per-example conditioning, passed to teacher and model.
    The learning rate is constant as in the paper; ``lr_decay=True`` decays it linearly to 0
    (the tests do, for a converged end point in a few hundred steps). F_θ only ever sees the M
    training levels: for multistep sampling, re-noise to levels among
    ``sigma_table(schedule)[karras_timesteps(schedule, N)]`` when in doubt.
    """
    ts = karras_timesteps(schedule, N, rho)  # (M,) increasing
    table = sigma_table(schedule)
    if float(table[ts[0]]) < model.sigma_min or float(table[ts[-1]]) > model.sigma_max:
        raise ValueError("the model's [σ_min, σ_max] must contain the schedule's levels")

    def step(k, x0, cond, tgt):
        return cd_loss(model, tgt, teacher, schedule, x0, ts, solver=solver, distance=distance,
                       generator=generator, cond=cond), mu

    return _fit(model, target, data, iters, batch, lr, lr_decay, weight_decay, grad_clip, generator,
                cond_data, log, step)


def consistency_train(model: ConsistencyModel, data: Tensor, *, s0: int = 2, s1: int = 150,
                      mu0: float = 0.9, rho: float = 7.0, distance: Distance = l2,
                      iters: int = 2000, batch: int = 256, lr: float = 1e-4,
                      lr_decay: bool = False, weight_decay: float = 0.0, grad_clip: float = 1.0,
                      generator: torch.Generator | None = None,
                      cond_data: dict[str, Tensor] | None = None,
                      target: ConsistencyModel | None = None,
                      log: list[float] | None = None,
                      resume: Resume | None = None) -> ConsistencyModel:
    """Consistency training — Song et al. 2023, Alg. 3; Weng eq. (32): no teacher; step k of K
    = ``iters`` uses N(k) Karras levels in [σ_min, σ_max] and the target decay μ(k)
    (:func:`ct_num_levels`, :func:`ct_ema_decay`; s0 = 2, s1 = 150, μ0 = 0.9 are the paper's
    CIFAR-10 values). Trains ``model`` in place and returns it in eval mode; ``resume``: a
    part of the run (:class:`Resume`); other arguments as in :func:`consistency_distill`.

    Like distillation with Euler steps, its fixed point at N levels is biased (measured on 1-D
    N(0.5, 0.3²), MLP 32×2, 1500-3000 steps, s1 = 20: one-step std 0.24-0.25, as the 18-level
    Euler ladder of the exact teacher, 0.25). With s1 = 150 it needs far more than 1500 steps:
    the paper trains 800k.
    """

    def step(k, x0, cond, tgt):
        sigmas = karras_sigmas(ct_num_levels(k, iters, s0, s1), model.sigma_min,
                               model.sigma_max, rho)
        return ct_loss(model, tgt, x0, sigmas, distance=distance, generator=generator,
                       cond=cond), ct_ema_decay(k, iters, s0, s1, mu0)

    return _fit(model, target, data, iters, batch, lr, lr_decay, weight_decay, grad_clip, generator,
                cond_data, log, step, resume)
