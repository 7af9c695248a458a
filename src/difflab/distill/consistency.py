"""Consistency models — Weng eq. (30), Fig. 11; Song et al. 2023, §3 and Algorithm 1.

Coordinates. Song et al. work in the variance-exploding form x_σ = x + σ z (EDM's, Karras et al.
2022), σ ∈ [σ_min, σ_max]. difflab's variance-preserving x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (Weng
eq. 3) is the same process rescaled (as in ``samplers/ode.py``):

    x̃ = x_t / √ᾱ_t = x_0 + σ_t ε,    σ_t = √((1−ᾱ_t)/ᾱ_t),    1/ᾱ_t = 1 + σ_t².

So every function here takes and returns x̃ and σ, and the teacher's ε-model is called at
(√ᾱ_t x̃, t). ``ConsistencyModel.from_schedule`` sets σ_min = σ_1 and σ_max = σ_T of a schedule
(linear, T = 1000: 0.010 and 157), so that the probability-flow ODE the model learns is the one
difflab's samplers integrate.

The consistency function (eq. 30, with EDM's preconditioning as in Song et al.'s App. C):

    f_θ(x̃, σ) = c_skip(σ) x̃ + c_out(σ) F_θ(c_in(σ) x̃, c_noise(σ)),
    c_skip = σ_d² / ((σ − σ_min)² + σ_d²),  c_out = σ_d (σ − σ_min) / √(σ² + σ_d²),
    c_in = 1 / √(σ² + σ_d²),  c_noise = 10 ln σ (see below).

c_skip(σ_min) = 1 and c_out(σ_min) = 0 exactly (float64, then cast), so f_θ(x̃, σ_min) = x̃
bit for bit for any finite F_θ: the boundary condition holds by construction.

How σ reaches the network. F_θ is any module called as F(x, c_noise, **cond); difflab's MLP and
U-Net accept a float "t" in their sinusoidal embedding. Song et al.'s code feeds 1000 · ¼ ln σ
(EDM's c_noise ×1000, for an embedding built for t ∈ 0..1000); EDM's own networks feed ¼ ln σ.
difflab's default is 10 ln σ, between the two, chosen by measurement: distillation trains F_θ on
N levels only, and with 250 ln σ the embedding's fast features make F_θ at the levels between
them arbitrary. 1-D Gaussian (μ 0.5, s 0.3), N = 18, 800 steps, MLP 32×2: one-step samples
agree (std 0.316-0.321 for both), but 4-step samples, which visit other levels, had mean
0.57-0.58, std 0.35-0.36 with 250 ln σ (2 seeds) and mean 0.49-0.54, std 0.32-0.34 with
10 ln σ (4 seeds).
``log_sigma_noise(250.0)`` reproduces Song et al.'s choice. Consistency training of a U-Net is
another matter: there 250 ln σ beats 10 ln σ (iCT, 500 updates: FD 168 against 204 on digits
over four seeds, 125 against 147 on MNIST 16×16 over two, lower on every seed), while on 2-D
mixtures with the MLP 10 stays better; so ``ct_noise_scale`` (default 10) is 250 in the digits
and mnist presets (benchmarks/ict_noise_input.py, results/ict_noise_input_*.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..samplers.consistency import consistency_sample, default_levels  # noqa: F401 (Alg. 1)
from ..samplers.edm import karras_sigmas as _karras_decreasing
from ..samplers.edm import schedule_sigmas
from ..schedules import Schedule

_F64 = torch.float64


# --- σ on a schedule, and Karras grids -----------------------------------------------------
def sigma_table(schedule: Schedule) -> Tensor:
    """[σ_0 = 0, σ_1, …, σ_T] with σ_t = √((1−ᾱ_t)/ᾱ_t), float64 (T+1,), indexed by t."""
    sig = schedule_sigmas(schedule)  # (T,)
    return torch.cat([sig.new_zeros(1), sig])


def karras_sigmas(N: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """The Karras levels (Karras et al. 2022, eq. (5); Song et al. 2023, §5) in the increasing
    order consistency models use: float64 (N,), σ_min … σ_max (N ≥ 2, ρ = 7). The sampler's
    :func:`difflab.samplers.karras_sigmas` reversed, without its final 0."""
    if N < 2 or not 0 < sigma_min < sigma_max:
        raise ValueError("need N >= 2 and 0 < sigma_min < sigma_max")
    return _karras_decreasing(N, sigma_min, sigma_max, rho)[:-1].flip(0)


def karras_timesteps(schedule: Schedule, N: int, rho: float = 7.0) -> Tensor:
    """The Karras grid of N levels between σ_1 and σ_T snapped to the schedule's own steps
    (nearest in log σ), duplicates dropped: int64 (M,), increasing, t_1 = 1, t_M = T, M ≤ N.

    Consistency distillation uses it so that its ε-model teacher, which only knows integer t,
    is evaluated exactly at each level. (Linear schedule, T = 1000, N = 18: all 18 distinct.)
    """
    table = sigma_table(schedule)[1:]  # (T,), σ_1..σ_T
    target = karras_sigmas(N, float(table[0]), float(table[-1]), rho)  # (N,)
    idx = (target.log()[:, None] - table.log()[None]).abs().argmin(1)  # (N,)
    return torch.unique(idx + 1)  # sorted, increasing


# --- the consistency function --------------------------------------------------------------
def log_sigma_noise(scale: float = 10.0) -> Callable[[Tensor], Tensor]:
    """c_noise(σ) = scale · ln σ (EDM: ¼ ln σ, Karras et al. 2022, Table 1; Song et al.'s code:
    250 ln σ; difflab's default 10 ln σ — see the module docstring)."""

    def c_noise(sigma: Tensor) -> Tensor:
        return scale * sigma.log()

    return c_noise


def schedule_time(schedule: Schedule) -> Callable[[Tensor], Tensor]:
    """c_noise(σ) = t(σ): the schedule's own (fractional) timestep of the level σ, log σ
    interpolated linearly between the steps 1..T (clamped there), float64 (B,) → (B,).

    With it (and c_in = √ᾱ) a consistency network sees what an ε-model of that schedule sees,
    x_t and t — what lets ``ConsistencyModel.v_from_schedule`` start from a teacher's weights.
    At σ = σ_t it returns t exactly."""
    log_sig = schedule_sigmas(schedule).log()  # (T,), increasing; entry [t−1] is step t

    def c_noise(sigma: Tensor) -> Tensor:
        ls = sigma.log().to(log_sig.device).clamp(float(log_sig[0]), float(log_sig[-1]))
        hi = torch.searchsorted(log_sig, ls).clamp(1, len(log_sig) - 1)  # (B,)
        lo = hi - 1
        frac = (ls - log_sig[lo]) / (log_sig[hi] - log_sig[lo])
        return (lo + 1 + frac).to(sigma.device)  # step lo+1 … hi+1

    return c_noise


class ConsistencyModel(nn.Module):
    """f_θ(x̃, σ) = c_skip(σ) x̃ + c_out(σ) F_θ(c_in(σ) x̃, c_noise(σ)) — Weng eq. (30).

    net: F_θ, called as net(x (B, …), c_noise (B,) float, **cond) -> (B, …). sigma_data: σ_d of
    the preconditioning (0.5 for images in [−1, 1] as in the paper; about the data's std).
    v_output: F_θ predicts v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022), so c_out changes sign;
    with σ_d = 1 and c_in = 1/√(σ² + 1) = √ᾱ this is x̂_0 = √ᾱ x_t − √(1−ᾱ) v̂ up to the σ_min
    shift that makes the boundary exact — see :meth:`v_from_schedule`.
    """

    is_consistency_model = True  # how samplers.consistency knows f_θ without importing distill

    def __init__(self, net: nn.Module, sigma_min: float, sigma_max: float,
                 sigma_data: float = 0.5,
                 c_noise: Callable[[Tensor], Tensor] | None = None, v_output: bool = False):
        super().__init__()
        if not 0 < sigma_min < sigma_max or sigma_data <= 0:
            raise ValueError("need 0 < sigma_min < sigma_max and sigma_data > 0")
        self.net = net
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.sigma_data = float(sigma_data)
        self.c_noise = c_noise if c_noise is not None else log_sigma_noise()
        self.out_sign = -1.0 if v_output else 1.0

    @classmethod
    def from_schedule(cls, net: nn.Module, schedule: Schedule, sigma_data: float = 0.5,
                      **kwargs) -> ConsistencyModel:
        """σ_min = σ_1, σ_max = σ_T of ``schedule`` (the VE image of its steps 1..T)."""
        table = sigma_table(schedule)
        return cls(net, float(table[1]), float(table[-1]), sigma_data, **kwargs)

    @classmethod
    def v_from_schedule(cls, net: nn.Module, schedule: Schedule) -> ConsistencyModel:
        """f_θ whose F_θ is a v-network of ``schedule``'s own coordinates: it is called on
        (x_t = √ᾱ x̃, t(σ)) exactly as an ε- or v-model of the schedule, and
        f_θ = c_skip x̃ − c_out v̂ with σ_d = 1. So F_θ can start as a copy of the teacher's
        network (as progressive distillation's students do; an ε-network's output is close to
        v at low noise, where v → ε), and a v-student of progressive distillation is an exact
        start: away from σ_min, f_θ is its one-step x̂_0."""
        return cls.from_schedule(net, schedule, 1.0, c_noise=schedule_time(schedule),
                                 v_output=True)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in) at σ (float64 tensor): Song et al. 2023, App. C."""
        sd2, d = self.sigma_data**2, sigma - self.sigma_min
        c_skip = sd2 / (d**2 + sd2)
        c_out = self.out_sign * self.sigma_data * d / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, c_in

    def forward(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        """f_θ(x̃, σ): x (B, …) in VE coordinates; sigma a float or (B,) — pass float64 (or a
        Python float) for the boundary to be exact at σ_min."""
        s = torch.as_tensor(sigma, dtype=_F64, device=x.device).expand(x.shape[0])  # (B,)
        c_skip, c_out, c_in = (Schedule.broadcast(c, x) for c in self.scalings(s))
        out = self.net(c_in * x, self.c_noise(s).to(x.dtype), **cond)  # F_θ, (B, …)
        return c_skip * x + c_out * out
