"""SDE-DPM-Solver++ (multistep, data prediction) — Lu et al. 2022b, "DPM-Solver++: Fast Solver
for Guided Sampling of Diffusion Probabilistic Models", §5 and Appendix B ("SDE-DPM-Solver++"),
on a discrete ε-model: the stochastic companion of :mod:`.dpm_solver`.

With α_t = √ᾱ_t, σ_t = √(1−ᾱ_t), λ_t = log(α_t/σ_t) and h = λ_s − λ_t > 0 for a step t → s,
the reverse SDE in data prediction x̂_0 = x_θ(x_t, t) has the exact solution

    x_s = (σ_s/σ_t) e^{−h} x_t + 2 α_s ∫_{λ_t}^{λ_s} e^{−2(λ_s−λ)} x̂_0(λ) dλ
          + σ_s √(1 − e^{−2h}) z,   z ~ N(0, I).

Holding x̂_0 at its value at t gives the first-order solver

    x_s = (σ_s/σ_t) e^{−h} x_t + α_s (1 − e^{−2h}) x̂_0 + σ_s √(1 − e^{−2h}) z,

which is DDPM's ancestral step with σ² = β̃ on the same sub-chain, i.e. DDIM with η = 1 (Weng
eq. 29; (σ_s/σ_t)e^{−h} = (1−ᾱ_s)√ᾱ_t / ((1−ᾱ_t)√ᾱ_s) and σ_s²(1 − e^{−2h}) = β̃_{t|s}); a
test checks the identity. The second-order multistep solver ("2M SDE") adds the first divided
difference of x̂_0 in λ, D_1 = (x̂_0 − x̂_0^{prev}) / r, r = h_prev / h, with the midpoint
weight of diffusers' ``sde-dpmsolver++`` and k-diffusion's ``dpmpp_2m_sde``:

    x_s = … + α_s (1 − e^{−2h}) (x̂_0 + D_1 / 2) + σ_s √(1 − e^{−2h}) z.

One model evaluation a step; the first step is first order (no history), and the step to x_0
(λ_0 = ∞) returns x̂_0 without noise. The grid and the λ clip are those of DPM-Solver++
(:func:`.dpm_solver.dpm_timesteps`; default ``spacing="auto"``). Why it exists: at few steps
the ODE solvers carry their truncation error to the end, while the SDE's injected noise
contracts past errors (Karras et al. 2022, §4).

Measured in benchmarks/samplers_oracle.py (results/samplers_oracle.md; exact mixture
denoisers, so only the solver's error counts): on the tuning targets the geometric mean of its
error ÷ DDIM's is 0.54-0.92 at 10 NFE and 0.48-0.61 at 20 — worse than the ODE solvers there
(2M 0.32-0.54, UniPC 0.23-0.44) — but it is the best of the default configurations at 50 NFE
(0.45 linear, 0.58 cosine; the ODE solvers 0.60-0.75), where it also comes nearest DDPM-1000.
Its default grid "auto" is the best of trailing/logsnr/auto on both schedules together (0.63);
"blend" scores 0.45 on those exact denoisers but is not the default for the reason given in
the notes of :mod:`.dpm_solver` (trained networks; "capped-blend", UniPC's grid, is mixed here:
better on the digits U-Nets, worse on latent MNIST). On exact denoisers, then, use ``dpm++`` or
``unipc`` for few steps and ``dpm++sde`` for quality at 50 or more.

Trained networks order them the other way at 10-20 steps: the injected noise also contracts the
network's own errors, which an exact denoiser does not have. FD against the train split (the
committed classifier's features, seeds 1-2, ``difflab eval RUN --sampler S --steps N -n 900
--seed K``, n = 500 for latent MNIST) at 10 and 20 steps on the default grids: the digits
U-Nets 6.1-12.1 with ``dpm++sde`` against 11.5-27.0 with ``unipc``, latent MNIST 26.5-41.0
against 60.4-72.6; lower in every paired cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..parameterization import Model
from ..schedules import Schedule
from ._common import Callback, noise_like
from .dpm_solver import LAMBDA_MIN, dpm_timesteps, half_log_snr, multistep


def sde_update(x: Tensor, x0s: list[Tensor], lams: list[float], ab_t: float, ab_s: float,
               order: int, z: Tensor) -> Tensor:
    """One step t → s > 0 of SDE-DPM-Solver++ of ``order`` 1 or 2; x0s / lams newest first
    (x0s[0] = x̂_0 at t); z ~ N(0, I) like x (B, …)."""
    h = half_log_snr(ab_s) - lams[0]  # > 0
    decay = math.exp(-h) * math.sqrt((1 - ab_s) / (1 - ab_t))  # (σ_s/σ_t) e^{−h}
    gain = -math.expm1(-2 * h)  # 1 − e^{−2h}
    d = x0s[0]
    if order == 2:
        r = (lams[0] - lams[1]) / h
        d = x0s[0] + (x0s[0] - x0s[1]) / (2 * r)  # x̂_0 + D_1 / 2 (midpoint)
    return decay * x + math.sqrt(ab_s) * gain * d + math.sqrt((1 - ab_s) * gain) * z


@torch.inference_mode()
def dpm_solver_pp_sde(
    model: Model,
    schedule: Schedule,
    x_T: Tensor,
    steps: int | Sequence[int] | None = 20,
    generator: torch.Generator | None = None,
    *,
    order: int = 2,
    spacing: str = "auto",
    lambda_min: float | None = LAMBDA_MIN,
    progress: bool = False,
    callback: Callback | None = None,
    cond: dict | None = None,
) -> Tensor:
    """Multistep SDE-DPM-Solver++ of ``order`` 1 (= DDIM η = 1 on the same grid) or 2 (2M SDE);
    one model evaluation a step, noise from ``generator``. x_T: (B, …). ``spacing`` and
    ``lambda_min``: as :func:`~difflab.samplers.dpm_solver.dpm_solver_pp` (the module notes)."""
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2 for the SDE solver, got {order!r}")

    def step(x, x0s, lams, ab_t, ab_s, i):
        if ab_s >= 1.0:  # s = 0: λ_0 = ∞, x_0 = x̂_0, no noise
            return x0s[0]
        return sde_update(x, x0s, lams, ab_t, ab_s, min(order, i + 1), noise_like(x, generator))

    ts = dpm_timesteps(schedule, steps, spacing, lambda_min, sampler="dpm++sde").tolist()
    return multistep(model, schedule, x_T, ts, order, step, progress=progress,
                     callback=callback, cond=cond, desc=f"dpm++{order}m-sde")
