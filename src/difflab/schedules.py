"""Noise schedules and the forward process: Weng eq. (1), (3), (7)-(12), (22).

Convention (the public contract): steps are t = 1..T; ``betas[t-1]`` is β_t. Every table is a
float64 tensor of shape (T,); values are gathered in float64 and cast to the data's dtype only
at the end, so ᾱ_t near 0 or 1 keeps its precision.

ᾱ_0 = 1 by definition (no noise at t = 0); ``alpha_bar_at`` accepts t = 0 for that reason, which
the samplers use for their last step x_{τ_1} → x_0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Schedule:
    """A variance schedule {β_t}, t = 1..T, and the closed forms built on it.

    Build one with :func:`linear`, :func:`cosine` or :func:`from_betas`.
    """

    betas: Tensor  # (T,) float64, β_t in (0, 1)

    def __post_init__(self) -> None:
        b = self.betas
        if b.ndim != 1 or b.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(b.shape)}")
        if b.dtype != torch.float64:
            object.__setattr__(self, "betas", b.to(torch.float64))
        if not bool(((self.betas > 0) & (self.betas < 1)).all()):
            raise ValueError("every β_t must lie in (0, 1)")

    # --- tables, eq. (1), (3), (10) -------------------------------------------------------
    @property
    def T(self) -> int:
        return int(self.betas.numel())

    @property
    def alphas(self) -> Tensor:
        """α_t = 1 − β_t, shape (T,)."""
        return 1.0 - self.betas

    @property
    def alpha_bars(self) -> Tensor:
        """ᾱ_t = ∏_{i≤t} α_i (Weng eq. 3), shape (T,)."""
        return torch.cumprod(self.alphas, dim=0)

    @property
    def alpha_bars_prev(self) -> Tensor:
        """ᾱ_{t-1}, with ᾱ_0 = 1, shape (T,)."""
        return torch.cat([self.betas.new_ones(1), self.alpha_bars[:-1]])

    @property
    def beta_tildes(self) -> Tensor:
        """β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t (Weng eq. 10 / 28), shape (T,); β̃_1 = 0."""
        return (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars) * self.betas

    # --- gathering -----------------------------------------------------------------------
    def _check_t(self, t: Tensor, allow_zero: bool = False) -> Tensor:
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point:
            raise TypeError("t must be an integer tensor of steps in 1..T")
        lo = 0 if allow_zero else 1
        if t.numel() and (int(t.min()) < lo or int(t.max()) > self.T):
            raise ValueError(f"t must lie in {lo}..{self.T}, got {int(t.min())}..{int(t.max())}")
        return t.long()

    def alpha_bar_at(self, t: Tensor) -> Tensor:
        """ᾱ_t for integer t in 0..T (ᾱ_0 = 1), float64, same shape as t."""
        t = self._check_t(t, allow_zero=True)
        table = torch.cat([self.betas.new_ones(1), self.alpha_bars])  # (T+1,), index = t
        return table[t]

    @staticmethod
    def broadcast(values: Tensor, like: Tensor) -> Tensor:
        """Reshape per-sample values (B,) to (B, 1, …, 1) and cast to ``like``'s dtype/device."""
        shape = (values.shape[0],) + (1,) * (like.ndim - 1)
        return values.reshape(shape).to(dtype=like.dtype, device=like.device)

    # --- forward process ------------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε  — Weng eq. (3); Ho et al. 2020, eq. (4).

        x0, noise: (B, …); t: int64 (B,) in 1..T.
        """
        ab = self.alpha_bar_at(self._check_t(t))  # (B,)
        return self.broadcast(ab.sqrt(), x0) * x0 + self.broadcast((1 - ab).sqrt(), x0) * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean μ̃_t(x_t, x_0) and variance β̃_t of q(x_{t−1} | x_t, x_0) — Weng eq. (7), (10).

        μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t.
        Returns mean (B, …) and var (B, 1, …, 1), broadcastable against x_t.
        """
        t = self._check_t(t)
        return posterior_step(self.alpha_bar_at(t), self.alpha_bar_at(t - 1), x0, x_t)

    def q_posterior_eps(self, x_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """μ̃_t = (x_t − β_t / √(1 − ᾱ_t) · ε) / √α_t — Weng eq. (12), the mean of eq. (7) in ε."""
        t = self._check_t(t)
        beta = self.broadcast(self.betas[t - 1], x_t)
        ab = self.broadcast(self.alpha_bar_at(t), x_t)
        return (x_t - beta / (1 - ab).sqrt() * eps) / (1 - beta).sqrt()


def posterior_coefs(ab_t, ab_s):
    """Coefficients of q(x_s | x_t, x_0) for any s < t, from ᾱ_t and ᾱ_s (floats or tensors).

    With α_{t|s} = ᾱ_t / ᾱ_s and β_{t|s} = 1 − α_{t|s}, this is Weng eq. (10) on the sub-chain
    s → t (Nichol & Dhariwal 2021, §4: β re-derived from ᾱ on a strided sequence):
    μ̃ = c0·x_0 + ct·x_t with c0 = √ᾱ_s β_{t|s}/(1−ᾱ_t), ct = √α_{t|s} (1−ᾱ_s)/(1−ᾱ_t), and
    variance β̃_{t|s} = (1−ᾱ_s)/(1−ᾱ_t) · β_{t|s}. Returns (c0, ct, β̃_{t|s}, β_{t|s}).
    """
    a_ts = ab_t / ab_s
    b_ts = 1 - a_ts
    c0 = ab_s**0.5 * b_ts / (1 - ab_t)
    ct = a_ts**0.5 * (1 - ab_s) / (1 - ab_t)
    return c0, ct, (1 - ab_s) / (1 - ab_t) * b_ts, b_ts


def posterior_step(ab_t: Tensor, ab_s: Tensor, x0: Tensor, x_t: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """Mean (B, …) and variance (B, 1, …) of q(x_s | x_t, x_0) for per-sample ᾱ_t, ᾱ_s (B,)."""
    c0, ct, var, _ = posterior_coefs(ab_t, ab_s)
    bc = Schedule.broadcast
    return bc(c0, x0) * x0 + bc(ct, x_t) * x_t, bc(var, x_t)


# --- constructors ------------------------------------------------------------------------


def linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Linear β_t from β_1 = 1e-4 to β_T = 0.02 (Ho et al. 2020, §4; Weng §"Parameterization
    of β_t").

    These endpoints were chosen for T = 1000; with a much smaller T, ᾱ_T stays far from 0 and
    x_T is not pure noise. Scale the endpoints by 1000/T to keep the same ᾱ curve.
    """
    _check_T(T)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError("need 0 < beta_start <= beta_end < 1")
    return Schedule(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))


def cosine(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Cosine schedule — Weng eq. (22); Nichol & Dhariwal 2021, eq. (17).

    ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), β_t = clip(1 − ᾱ_t/ᾱ_{t−1}, max_beta).

    Caution with ε-prediction: the clip binds at the very end, so ᾱ_T ≈ 2.4e-9 but
    ᾱ_{T−1} ≈ 2.4e-6 (T = 1000). A sampler step that leaves t ≈ T multiplies the error of a
    *learned* ε̂ by about √(ᾱ_s/ᾱ_t), hundreds of times: a trained 2-D model sampled with DDIM
    or Heun on the "linspace" or "trailing" spacings (which start at T) scored SWD 100× its
    floor, and 0.6-0.9× with ``spacing="leading"`` (which starts at T − ⌊T/S⌋ + 1). Exact
    denoisers are unaffected. Sample cosine-trained ε-models with ``spacing="leading"`` (the
CLI and the evaluation after training do so by default: ``TrainConfig.eval_spacing="auto"``).
    """
    _check_T(T)
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    ab = f / f[0]  # (T+1,), ab[0] = 1
    betas = (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)
    return Schedule(betas)


def from_betas(betas) -> Schedule:
    """A schedule from explicit β_1..β_T (any sequence or tensor)."""
    return Schedule(torch.as_tensor(betas, dtype=torch.float64).flatten())


def _check_T(T: int) -> None:
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")


def generator_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    """Where random numbers of ``generator`` are drawn (its own device; ``fallback`` for None).
    Draws happen there and are then moved, so a CPU generator gives the same numbers whatever
    device the model runs on (and CPU runs stay bit-identical)."""
    return generator.device if generator is not None else fallback
