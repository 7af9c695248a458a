"""Exact likelihood through the probability-flow ODE, and a closed-form reference.

Song et al. 2021 (score SDE), §4.3 and App. D.2 (eq. 39-40): the ODE dx/dt = f(x, t) carries
the data density along, d log p_t(x(t))/dt = −∇·f(x(t), t) (instantaneous change of variables,
Chen et al. 2018), so

    log p_0(x(0)) = log p_T(x(T)) + ∫_0^T ∇·f(x(t), t) dt,

with ∇·f estimated by Hutchinson's trick, ∇·f ≈ zᵀ (∂f/∂x) z, E[zzᵀ] = I (one vector-Jacobian
product per evaluation; Grathwohl et al. 2019). The bits/dim of the VLB live in
:mod:`difflab.vlb`.

Coordinates are those of :mod:`difflab.samplers.ode`: x̃ = x/√ᾱ_t, σ = √((1−ᾱ_t)/ᾱ_t), and
dx̃/dσ = ε_θ(√ᾱ x̃, t) (Weng eq. 21 turns the score into ε).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .oracle import Gaussian, GaussianMixture
from .parameterization import Model
from .samplers.timesteps import resolve
from .schedules import Schedule, generator_device


def gaussian_nll_bpd(dist: Gaussian | GaussianMixture, x0: Tensor) -> Tensor:
    """−log₂ q(x0) / D for data drawn from an oracle distribution: the exact NLL of continuous
    data, in bits/dim. x0: (B, D) → (B,) float64. The reference the bounds are tested against."""
    return -dist.log_prob(x0) / (x0.shape[1] * math.log(2))


def _probe(like: Tensor, kind: str, generator: torch.Generator | None) -> Tensor:
    z = torch.randn(like.shape, generator=generator, dtype=like.dtype,
                    device=generator_device(generator, like.device)).to(like.device)
    return z.sign() if kind == "rademacher" else z  # sign of a Gaussian is Rademacher


def _f_and_div(model: Model, x: Tensor, t: int, ab: float, z: Tensor, cond: dict
               ) -> tuple[Tensor, Tensor]:
    """f = dx̃/dσ = ε_θ(√ᾱ x̃, t) and the Hutchinson estimate of ∇·f. x, z: (N, …).

    The estimate is zᵀ (∂f/∂x̃) z − κ (‖z‖² − D) with κ = √(ᾱ(1−ᾱ)) = σ/(1+σ²), the divergence
    per dimension of the exact f for unit-variance data. The control variate has mean zero for
    any probe with E[zzᵀ] = I, vanishes for Rademacher probes (‖z‖² = D), and takes the large
    isotropic part D/σ of ∇·f out of a Gaussian probe's variance.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        tb = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (N,)
        out = model(x * math.sqrt(ab), tb, **cond)
        eps = out[0] if isinstance(out, tuple) else out  # a learned variance plays no part
        (vjp,) = torch.autograd.grad(eps, x, grad_outputs=z)
    zz = z.flatten(1)
    div = (vjp.flatten(1) * zz).sum(1) - math.sqrt(ab * (1 - ab)) * (zz.pow(2).sum(1) - zz.shape[1])
    return eps.detach(), div  # (N, …), (N,)


def ode_bpd(model: Model, schedule: Schedule, x0: Tensor,
            steps: int | Sequence[int] | None = None, hutchinson_samples: int = 1,
            generator: torch.Generator | None = None, levels: int | None = 256, *,
            probe: str = "rademacher", cond: dict | None = None) -> Tensor:
    """Bits/dim of x0 under the probability-flow ODE of an ε-model — Song et al. 2021, App. D.2,
    eq. (39)-(40); the ODE of Weng eq. (21) in the σ-coordinates of ``samplers.ode``.

    What it computes, per sample (x0: (B, …) → (B,) float64):

    - ``levels=None`` (continuous data): −log₂ p_θ(x0) / D, the model's density at x0.
    - ``levels=K`` (data on the K-level grid of [−1, 1], bin width 2/(K−1)): uniform
      dequantisation, y = x0 + u with u ∼ U[−1/(K−1), 1/(K−1)]^D, and
      −log₂ p_θ(y) / D + log₂((K−1)/2) — one draw of the dequantisation bound on the discrete
      data's bits/dim (Theis et al. 2016; Song et al. 2021, App. D.2). It is an upper bound in
      expectation over u, and equals the bin-probability bits/dim when p_θ is flat across a bin.

    How: from σ = 0 to σ_T, x̃ and the log-density change are integrated together on the model's
    own grid t = 1 … T (``steps``: None → every t; S → S grid points, linspace, ending at T;
    or an explicit list), since the model accepts integer t only.

    - first segment [0, σ_1]: trapezoid with f(x̃, 0) = 0 (f = −σ ∇ log p_σ vanishes at σ = 0
      for any density with a finite score);
    - then Heun steps in σ for x̃ (exact where x̃ is still pure noise, where x̃ ∝ σ), and the
      trapezoidal rule in log σ for ∫ ∇·f dσ = ∫ σ ∇·f d log σ (σ ∇·f → D there, so the large
      steps of a clipped cosine tail cost nothing);
    - at σ_T: log N(x_T; 0, I) with x_T = √ᾱ_T x̃, plus (D/2) log ᾱ_T for x̃ = x_T/√ᾱ_T.

    Errors: Heun's O(h²) on this fixed grid (linear schedule, T = 1000: ≈ 1e-4 bits/dim on
    Gaussian data, measured against the closed form in ``tests/test_likelihood.py``), the prior
    mismatch log q(x_T)/N(x_T; 0, I), and the Hutchinson noise of ``hutchinson_samples``
    probes (``probe``: "rademacher", the lower-variance choice, or "gaussian"), each fixed along
    its trajectory (FFJORD); it averages out over samples. Costs 2·S − 1 model evaluations, each
    with a backward pass, on hutchinson_samples·B rows.
    """
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    if hutchinson_samples < 1:
        raise ValueError("hutchinson_samples must be at least 1")
    cond = dict(cond or {})
    B, D, k = x0.shape[0], x0[0].numel(), hutchinson_samples
    x = x0
    offset = 0.0
    if levels is not None:
        delta = 1.0 / (levels - 1)
        u = torch.rand(x0.shape, generator=generator, dtype=x0.dtype,
                       device=generator_device(generator, x0.device)).to(x0.device)
        x = x0 + (2 * u - 1) * delta  # uniform dequantisation
        offset = D * math.log((levels - 1) / 2)  # −D log(bin width), nats
    reps = (k,) + (1,) * (x0.ndim - 1)
    x = x.repeat(*reps)  # (k·B, …): each copy gets its own probe
    cond = {n: (v.repeat(k, *([1] * (v.ndim - 1))) if torch.is_tensor(v) and v.ndim else v)
            for n, v in cond.items()}
    z = _probe(x, probe, generator)  # (k·B, …), fixed along the trajectory
    ts = resolve(schedule.T, steps).flip(0).tolist()  # increasing: t_1 < … < t_S
    ab = [1.0] + schedule.alpha_bars.tolist()
    sig = [math.sqrt((1 - a) / a) for a in ab]

    # [0, σ_{t_1}]: trapezoid with f = 0 at σ = 0
    t = ts[0]
    d, div = _f_and_div(model, x, t, ab[t], z, cond)
    x = x + 0.5 * sig[t] * d
    integral = 0.5 * sig[t] * div.double()  # ∫ ∇·f dσ, (k·B,)
    for t, s in zip(ts[:-1], ts[1:], strict=True):  # σ_t < σ_s
        d, div = _f_and_div(model, x, t, ab[t], z, cond)
        h = sig[s] - sig[t]
        d2, div2 = _f_and_div(model, x + h * d, s, ab[s], z, cond)
        x = x + 0.5 * h * (d + d2)  # Heun in σ
        dlog = math.log(sig[s] / sig[t])
        integral = integral + 0.5 * dlog * (sig[t] * div.double() + sig[s] * div2.double())

    abT = ab[ts[-1]]
    x_T = (x * math.sqrt(abT)).double().flatten(1)  # (k·B, D)
    log_prior = -0.5 * (x_T.pow(2).sum(1) + D * math.log(2 * math.pi)) + 0.5 * D * math.log(abT)
    log_p = (log_prior + integral).reshape(k, B).mean(0)  # (B,)
    return (-log_p + offset) / (D * math.log(2))
