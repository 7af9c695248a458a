"""The variational bound: Weng eq. (13)-(16), (18), (23); Ho et al. 2020 §3; Nichol & Dhariwal 2021.

L_vlb = L_T + Σ_{t=2}^T L_{t−1} + L_0 (eq 16), every term per sample and in nats, summed over
the data dimensions D:

- L_T     = KL(q(x_T | x_0) ‖ N(0, I))                          — :func:`prior_kl`
- L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)), t ≥ 2 — :func:`vlb_terms`
- L_0     = −log p_θ(x_0 | x_1), the discretised Gaussian decoder of Ho et al. (§3.3) for data
            in [−1, 1] with K levels, or (``levels=None``) the Gaussian density for continuous
            data.

p_θ(x_{t−1} | x_t) = N(μ_θ, Σ_θ) (eq 6): μ_θ from ε̂ (eq 17, computed as μ̃_t(x_t, x̂_0) through
eq 10-11); Σ_θ fixed at β̃_t or β_t, or learned by eq. (23) for a model returning (ε̂, v).
Bits/dim = nats / (D ln 2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .parameterization import Model, x0_from_eps
from .schedules import Schedule, generator_device, posterior_coefs

VARIANCES = ("beta_tilde", "beta", "learned")


# --- Gaussian pieces ---------------------------------------------------------------------


def normal_kl(mean1, logvar1, mean2, logvar2) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats — the closed form the
    post points to under eq. (16) (each L_{t−1} compares two Gaussians). Arguments broadcast."""
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(a) for a in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (logvar2 - logvar1 - 1.0 + (logvar1 - logvar2).exp()
                  + (mean1 - mean2).pow(2) * (-logvar2).exp())


def _log1mexp(a: Tensor) -> Tensor:
    """log(1 − e^a) for a ≤ 0, accurate at both ends (Mächler 2012)."""
    return torch.where(a > -math.log(2), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def discretized_gaussian_log_likelihood(x0: Tensor, mean: Tensor, log_scale: Tensor,
                                        levels: int = 256) -> Tensor:
    """log p(x0) of the discretised Gaussian decoder — the L_0 of Weng eq. (16); Ho et al. 2020,
    eq. (13).

    x0 lies on the K-level grid {−1 + 2k/(K−1)} of [−1, 1] (K = ``levels``); each level owns the
    bin [x0 − δ, x0 + δ], δ = 1/(K−1), and the two edge bins take the tails (−∞ and +∞), so the
    K probabilities sum to 1 for any mean and scale. Elementwise; returns log-probabilities of
    x0's shape. Computed in float64 with log Φ (``torch.special.log_ndtr``) and the difference
    taken on the side of the Gaussian where it does not cancel, so it never returns log(0) for
    finite inputs.
    """
    if levels < 2:
        raise ValueError(f"levels must be at least 2, got {levels}")
    dtype = torch.promote_types(x0.dtype, mean.dtype)
    x, m, ls = x0.double(), mean.double(), torch.as_tensor(log_scale).double()
    delta = 1.0 / (levels - 1)
    inv_s = (-ls).exp()
    a, b = (x - delta - m) * inv_s, (x + delta - m) * inv_s  # standardised bin edges, a < b
    # log(Φ(b) − Φ(a)); for a bin right of the mean use Φ(−a) − Φ(−b), which does not cancel
    flip = (a + b) > 0
    hi, lo = torch.where(flip, -a, b), torch.where(flip, -b, a)
    log_hi = torch.special.log_ndtr(hi)
    mid = log_hi + _log1mexp((torch.special.log_ndtr(lo) - log_hi).clamp(max=-1e-300))
    left = torch.special.log_ndtr(b)  # x0 = −1: (−∞, −1 + δ]
    right = torch.special.log_ndtr(-a)  # x0 = +1: [1 − δ, +∞)
    out = torch.where(x < -1 + delta, left, torch.where(x > 1 - delta, right, mid))
    return out.to(dtype)


def gaussian_log_likelihood(x0: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(x0; mean, e^logvar), elementwise: the decoder for continuous data."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (x0 - mean).pow(2) * (-logvar).exp())


# --- the reverse process p_θ(x_{t−1} | x_t) -----------------------------------------------


def _log_var_tables(schedule: Schedule) -> tuple[Tensor, Tensor]:
    """(log β̃_t clipped, log β_t), float64 (T,). β̃_1 = 0, so at t = 1 log β̃_2 stands in
    (improved-diffusion's ``posterior_log_variance_clipped``); with T = 1, log β_1."""
    bt = schedule.beta_tildes.clone()
    bt[0] = bt[1] if schedule.T > 1 else schedule.betas[0]
    return bt.log(), schedule.betas.log()


def _split(out) -> tuple[Tensor, Tensor | None]:
    return (out[0], out[1]) if isinstance(out, tuple) else (out, None)


def p_from_eps(schedule: Schedule, x_t: Tensor, t: Tensor, eps: Tensor, v: Tensor | None = None,
               variance: str | None = None) -> tuple[Tensor, Tensor]:
    """Mean μ_θ and log-variance of p_θ(x_{t−1} | x_t) from a model's ε̂ (and v).

    μ_θ(x_t, t) = (x_t − β_t/√(1−ᾱ_t) · ε̂)/√α_t — Weng eq. (17) — computed as μ̃_t(x_t, x̂_0) with
    x̂_0 from eq. (11) (the same number; at t = 1 it is x̂_0 itself). log Σ_θ:

    - ``"beta_tilde"``: log β̃_t (eq. 10), clipped at t = 1 to log β̃_2;
    - ``"beta"``: log β_t (Ho et al. 2020, §3.2);
    - ``"learned"``: v log β_t + (1 − v) log β̃_t — Weng eq. (23); Nichol & Dhariwal 2021, eq. (15),
      with the same clipped log β̃.

    ``None`` picks "learned" when v is given, else "beta_tilde". x_t, eps, v: (B, …);
    t: int64 (B,). Returns mean (B, …) and log_var (B, …) or (B, 1, …) for fixed variances.
    """
    if variance is None:
        variance = "beta_tilde" if v is None else "learned"
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    if variance == "learned" and v is None:
        raise ValueError("variance='learned' needs a model that returns (eps, v)")
    t = schedule._check_t(t)
    bc = Schedule.broadcast
    ab_t, ab_s = schedule.alpha_bar_at(t), schedule.alpha_bar_at(t - 1)  # (B,) float64
    x0_hat = x0_from_eps(x_t, eps, bc(ab_t, x_t))  # eq. (11)
    c0, ct, _, _ = posterior_coefs(ab_t, ab_s)
    mean = bc(c0, x_t) * x0_hat + bc(ct, x_t) * x_t  # eq. (17) via eq. (10)
    log_bt, log_b = (bc(tab[t - 1], x_t) for tab in _log_var_tables(schedule))  # (B, 1, …)
    if variance == "beta_tilde":
        return mean, log_bt
    if variance == "beta":
        return mean, log_b
    return mean, v * log_b + (1 - v) * log_bt  # eq. (23)


def p_mean_variance(model: Model, schedule: Schedule, x_t: Tensor, t: Tensor,
                    cond: dict | None = None, variance: str | None = None
                    ) -> tuple[Tensor, Tensor]:
    """μ_θ(x_t, t) and log Σ_θ(x_t, t) of p_θ(x_{t−1} | x_t) — Weng eq. (6), (17), (23).

    Calls ``model(x_t, t, **cond)``; a model returning (ε̂, v) has the learned variance of
    eq. (23). See :func:`p_from_eps` for ``variance``.
    """
    eps, v = _split(model(x_t, t, **(cond or {})))
    return p_from_eps(schedule, x_t, t, eps, v, variance)


# --- the terms of eq. (16) ---------------------------------------------------------------


def _sum_dims(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)  # (B, …) -> (B,)


def terms_from_p(schedule: Schedule, x0: Tensor, x_t: Tensor, t: Tensor, mean: Tensor,
                 log_var: Tensor, levels: int | None = 256) -> Tensor:
    """L_{t−1} (t ≥ 2) or L_0 (t = 1) per sample, in nats, given p_θ's mean and log-variance —
    Weng eq. (16), (18). Returns (B,)."""
    q_mean, _ = schedule.q_posterior(x0, x_t, t)  # eq. (7), (10)
    q_log_var = Schedule.broadcast(_log_var_tables(schedule)[0][t - 1], x_t)  # finite at t = 1
    kl = _sum_dims(normal_kl(q_mean, q_log_var, mean, log_var))  # (B,)
    if levels is None:
        ll = gaussian_log_likelihood(x0, mean, log_var)
    else:
        ll = discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var, levels)
    return torch.where(t == 1, -_sum_dims(ll), kl)


def vlb_terms(model: Model, schedule: Schedule, x0: Tensor, t: Tensor,
              noise: Tensor | None = None, levels: int | None = 256, *,
              variance: str | None = None, cond: dict | None = None,
              generator: torch.Generator | None = None) -> Tensor:
    """One term of the bound per sample, in nats:
    L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) for t ≥ 2 (Weng eq. 16, 18; Ho et al.
    2020, eq. 5) and L_0 = −log p_θ(x_0 | x_1) for t = 1.

    x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (eq. 3) with ``noise`` ε (drawn if None). ``levels``: K for the
    discretised decoder of data on a K-level grid of [−1, 1]; None for continuous data (Gaussian
    decoder density). x0: (B, …); t: int64 (B,). Returns (B,).
    """
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                            device=generator_device(generator, x0.device)).to(x0.device)
    x_t = schedule.q_sample(x0, t, noise)
    mean, log_var = p_mean_variance(model, schedule, x_t, t, cond, variance)
    return terms_from_p(schedule, x0, x_t, t, mean, log_var, levels)


def prior_kl(schedule: Schedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per sample, in nats — Weng eq. (16). x0: (B, …) → (B,)."""
    ab = Schedule.broadcast(schedule.alpha_bars[-1:].expand(x0.shape[0]), x0)  # (B, 1, …)
    return _sum_dims(normal_kl(ab.sqrt() * x0, (1 - ab).log(), 0.0, 0.0))


@torch.no_grad()
def vlb_all_terms(model: Model, schedule: Schedule, x0: Tensor, levels: int | None = 256, *,
                  batch_t: int = 50, variance: str | None = None, cond: dict | None = None,
                  generator: torch.Generator | None = None) -> Tensor:
    """Every term L_0, L_1, …, L_{T−1} for each sample, in nats: (B, T), column t−1 from step t.

    Steps are evaluated ``batch_t`` at a time (one model call on batch_t·B rows), each with fresh
    noise. ``cond`` values that are tensors with a batch dimension are repeated alongside x0.
    """
    B, T = x0.shape[0], schedule.T
    out = x0.new_empty(B, T, dtype=torch.float64)
    for start in range(1, T + 1, batch_t):
        ts = torch.arange(start, min(start + batch_t, T + 1), device=x0.device)  # (k,)
        k = ts.numel()
        t = ts.repeat_interleave(B)  # (k·B,)
        xs = x0.repeat(k, *([1] * (x0.ndim - 1)))  # (k·B, …)
        c = {n: (v.repeat(k, *([1] * (v.ndim - 1))) if torch.is_tensor(v) and v.ndim else v)
             for n, v in (cond or {}).items()}
        terms = vlb_terms(model, schedule, xs, t, None, levels, variance=variance, cond=c,
                          generator=generator)  # (k·B,)
        out[:, start - 1:start - 1 + k] = terms.double().reshape(k, B).T
    return out


def vlb_bpd(model: Model, schedule: Schedule, x0: Tensor, levels: int | None = 256, *,
            batch_t: int = 50, variance: str | None = None, cond: dict | None = None,
            generator: torch.Generator | None = None) -> Tensor:
    """The full bound L_vlb = L_T + Σ_{t=2}^T L_{t−1} + L_0 over all T terms — Weng eq. (13), (16);
    Ho et al. 2020, eq. (5) — per sample, in bits/dim (nats / (D ln 2)). x0: (B, …) → (B,) float64.

    With ``levels=K`` this bounds −log₂ P(x_0) of data on a K-level grid (L_0 discretised); with
    ``levels=None`` it bounds −log₂ p(x_0) for continuous data (a density, so it may be negative).
    One noise draw per term: average over samples for the expectation of eq. (13).
    """
    terms = vlb_all_terms(model, schedule, x0, levels, batch_t=batch_t, variance=variance,
                          cond=cond, generator=generator)  # (B, T)
    D = x0[0].numel()
    return (terms.sum(1) + prior_kl(schedule, x0).double()) / (D * math.log(2))


# --- training with the bound -------------------------------------------------------------


class ImportanceSampler:
    """Importance sampling of t for the bound — Nichol & Dhariwal 2021, §3.3 (eq. 18-19).

    Keeps the last ``history`` values of L_t per step. Until every t has ``history`` values, t is
    uniform; then p_t ∝ √E[L_t²], mixed with ``uniform_prob`` of the uniform distribution (as
    improved-diffusion does, so that every p_t > 0). Each draw carries the weight 1/(T p_t), so
    E_{t∼p}[w_t L_t] = (1/T) Σ_t L_t: unbiased for the uniform average, hence T·w·L_t for L_vlb.
    """

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 0.001):
        self.T, self.history, self.uniform_prob = T, history, uniform_prob
        self._values = torch.zeros(T, history, dtype=torch.float64)  # ring buffer per t
        self._count = torch.zeros(T, dtype=torch.long)  # values seen per t (capped at history)
        self._next = torch.zeros(T, dtype=torch.long)  # next slot to write

    @property
    def warm(self) -> bool:
        return bool((self._count >= self.history).all())

    def probs(self) -> Tensor:
        """p_t for t = 1..T, float64 (T,)."""
        if not self.warm:
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        p = self._values.pow(2).mean(1).sqrt()  # √E[L_t²], (T,)
        p = p / p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def weights(self, t: Tensor) -> Tensor:
        """1/(T p_t) for steps t (int64 (B,)), float64 (B,)."""
        return 1.0 / (self.T * self.probs()[t.cpu() - 1]).to(t.device)

    def sample(self, batch: int, generator: torch.Generator | None = None, device=None
               ) -> tuple[Tensor, Tensor]:
        """t ∼ p (int64 (B,), in 1..T) and weights 1/(T p_t) (float64 (B,))."""
        p = self.probs()
        t = torch.multinomial(p, batch, replacement=True, generator=generator) + 1  # (B,)
        return t.to(device), (1.0 / (self.T * p[t - 1])).to(device)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record per-sample L_t values (B,) for steps t (B,), in batch order: the same state as
        writing them one by one into each step's ring buffer, without a Python loop."""
        i = t.detach().cpu().long() - 1  # (B,)
        v = losses.detach().double().cpu().reshape(-1)  # (B,)
        order = torch.sort(i, stable=True).indices  # batch order within each step
        i, v = i[order], v[order]
        per_t = torch.bincount(i, minlength=self.T)  # (T,) values of each step in this batch
        start = torch.cumsum(per_t, 0) - per_t  # (T,) where each step's run begins in i
        rank = torch.arange(len(i)) - start[i]  # (B,) 0, 1, … within each step
        keep = rank >= per_t[i] - self.history  # older ones would be overwritten anyway
        slot = (self._next[i] + rank) % self.history
        self._values[i[keep], slot[keep]] = v[keep]
        self._next = (self._next + per_t) % self.history
        self._count = torch.clamp(self._count + per_t, max=self.history)

    def state_dict(self) -> dict:
        return {"values": self._values.clone(), "count": self._count.clone(),
                "next": self._next.clone()}

    def load_state_dict(self, state: dict) -> None:
        self._values.copy_(state["values"])
        self._count.copy_(state["count"])
        self._next.copy_(state["next"])


def l_hybrid(model: Model, schedule: Schedule, x0: Tensor, lam: float = 0.001,
             generator: torch.Generator | None = None, t: Tensor | None = None,
             noise: Tensor | None = None, *, sampler: ImportanceSampler | None = None,
             levels: int | None = 256, **cond) -> Tensor:
    """L_hybrid = L_simple + λ L_vlb with the stop-gradient on μ_θ — Weng eq. (19), (23) and the
    text after it; Nichol & Dhariwal 2021, §3.1 (eq. 16).

    One model call gives (ε̂, v). L_simple is the mean ‖ε − ε̂‖² over batch and dimensions (as
    :func:`difflab.losses.l_simple`). The bound's term uses μ_θ from ε̂.detach(), so it trains
    Σ_θ only (v); a plain ε-model has a fixed Σ and its L_vlb term carries no gradient. As in
    improved-diffusion, L_vlb is estimated by T·L_{t−1} in bits/dim (L_T is constant and left
    out), so λ = 0.001 gives their ``vb · T/1000``.

    t is uniform on 1..T, or drawn from ``sampler`` (an :class:`ImportanceSampler`): then every
    sample's loss is weighted by 1/(T p_t) (unbiased for both parts) and the sampler's history is
    updated with the sample's L_{t−1}. Returns a scalar.
    """
    t, w, noise = _draws(schedule, x0, generator, t, noise, sampler)
    x_t = schedule.q_sample(x0, t, noise)  # (B, …)
    eps, v = _split(model(x_t, t, **cond))
    mse = (noise - eps).pow(2).flatten(1).mean(1)  # (B,)
    mean, log_var = p_from_eps(schedule, x_t, t, eps.detach(), v)  # stop-gradient on μ_θ
    D = x0[0].numel()
    vb = terms_from_p(schedule, x0, x_t, t, mean, log_var, levels) / (D * math.log(2))  # (B,)
    if sampler is not None:
        sampler.update(t, vb)
    per_sample = mse + lam * schedule.T * vb.to(mse.dtype)  # (B,)
    if w is not None:
        per_sample = per_sample * w.to(per_sample.dtype)
    return per_sample.mean()


def _draws(schedule: Schedule, x0: Tensor, generator: torch.Generator | None, t: Tensor | None,
           noise: Tensor | None, sampler: ImportanceSampler | None
           ) -> tuple[Tensor, Tensor | None, Tensor]:
    """t (uniform, or from ``sampler`` with its weights 1/(T p_t)) and ε, unless given."""
    B, w = x0.shape[0], None
    if t is None and sampler is not None:
        t, w = sampler.sample(B, generator, x0.device)
    elif t is None:
        t = torch.randint(1, schedule.T + 1, (B,), generator=generator,
                          device=generator_device(generator, x0.device)).to(x0.device)
    elif sampler is not None:
        w = sampler.weights(t)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                            device=generator_device(generator, x0.device)).to(x0.device)
    return t, w, noise


def l_vlb(model: Model, schedule: Schedule, x0: Tensor,
          generator: torch.Generator | None = None, t: Tensor | None = None,
          noise: Tensor | None = None, *, sampler: ImportanceSampler | None = None,
          levels: int | None = 256, per_sample: bool = False, **cond) -> Tensor:
    """L_vlb alone as a training loss — Weng eq. (16), (18), the bound the post says is hard to
    optimise on its own; Nichol & Dhariwal 2021, §3.3 (their L_vlb, with importance sampling).

    One term T·L_{t−1} (t ≥ 2; −T log p_θ(x_0 | x_1) at t = 1) per sample, in bits/dim, with
    μ_θ and Σ_θ both trained (no stop-gradient, unlike :func:`l_hybrid`): E_t[T·L_{t−1}] is
    L_vlb less the constant L_T. t is uniform on 1..T, or drawn from ``sampler`` (an
    :class:`ImportanceSampler`, p_t ∝ √E[L_t²] once every t has its 10 values) and weighted by
    1/(T p_t), which keeps the estimate unbiased; the sampler's history gets each sample's
    term. A plain ε-model has Σ_θ = β̃_t. Returns the batch mean, or with ``per_sample`` the
    weighted terms (B,)."""
    t, w, noise = _draws(schedule, x0, generator, t, noise, sampler)
    x_t = schedule.q_sample(x0, t, noise)  # (B, …)
    eps, v = _split(model(x_t, t, **cond))
    mean, log_var = p_from_eps(schedule, x_t, t, eps, v)
    D = x0[0].numel()
    vb = terms_from_p(schedule, x0, x_t, t, mean, log_var, levels) / (D * math.log(2))  # (B,)
    if sampler is not None:
        sampler.update(t, vb)
    out = schedule.T * vb
    if w is not None:
        out = out * w.to(out.dtype)
    return out if per_sample else out.mean()
