"""DPM-Solver++ (multistep, data prediction) — Lu et al. 2022b, "DPM-Solver++: Fast Solver for
Guided Sampling of Diffusion Probabilistic Models", Algorithm 2 (2M) and its third-order
multistep extension (3M), on a discrete ε-model.

With λ_t = log(√ᾱ_t / √(1−ᾱ_t)) (half the log-SNR) and x̂_0 = x_θ(x_t, t) the data prediction
(ε̂ → x̂_0 by Weng eq. 11), the probability-flow ODE has the exact solution (the data-prediction
form of Lu et al. 2022b)

    x_s = √(1−ᾱ_s)/√(1−ᾱ_t) · x_t + √(1−ᾱ_s) ∫_{λ_t}^{λ_s} e^λ x̂_0(λ) dλ,   s < t.

Expanding x̂_0(λ) in a Taylor series about λ_t, with h = λ_s − λ_t > 0, gives

    x_s = √(1−ᾱ_s)/√(1−ᾱ_t) · x_t + √ᾱ_s Σ_k φ_k(h) x̂_0^{(k)}(λ_t),
    φ_0 = 1 − e^{−h},  φ_1 = h − 1 + e^{−h},  φ_2 = h²/2 − h + 1 − e^{−h}

(φ_k = e^{−h} ∫_0^h e^u u^k/k! du). Order 1 keeps only φ_0: that is DDIM with η = 0, exactly
(as Lu et al. 2022b point out). The multistep solvers estimate the derivatives from the x̂_0 of the
previous one or two steps, so each step costs one model evaluation:

- 2M (Alg. 2): x_s = … + √ᾱ_s φ_0 (x̂_0 + (x̂_0 − x̂_0^{prev}) / (2 r)), r = h_prev / h;
- 3M: φ_0, φ_1 and φ_2, with x̂_0' and x̂_0'' at λ_t from divided differences over the last
  three points in λ (unequal steps).

The first steps use lower order (no history yet), and so do the last: the step to x_0 has
λ_0 = ∞ and is always first order (x_0 = x̂_0 at the last timestep); with ``order=3`` the step
before it is second order (the "lower order final" of DPM-Solver's multistep code for few steps).

Default grid: ``spacing="auto"``, order 2 (2M): "trailing" (:mod:`.timesteps`: time-uniform
from T down to ≈ T/S, then the jump to x_0; diffusers' DPMSolverMultistepScheduler default, Lin
et al. 2024) below 10 steps and "logsnr" (uniform in λ, Lu et al. 2022a) from 10 steps on.
UniPC's "auto" differs from 10 steps on: "capped-blend" (:func:`auto_spacing`). Why, from
three benchmarks:

- benchmarks/samplers_oracle.py (exact denoisers of Gaussian mixtures: three tuning targets,
  an 8-mode ring, a 2-D mixture of thin and wide modes and a 16-D full-covariance one, and
  three held out; both schedules; sliced W1 and mode weight + per-mode covariance error; NFE
  5-20) chose "auto" ("logsnr" from 10 steps) over "trailing" (the first default; geometric
  mean of 2M's error ÷ DDIM's 0.48 against 0.61-0.66), Karras' ρ = 7 grid (0.6-0.8) and order
  3 (no better anywhere). It then tried two more grids built by :func:`grid_sigmas`: "angle"
  (uniform in arctan σ, the cosine schedule's own time grid) and "blend" (log σ 0.7 of the way
  from "logsnr" to "angle"), which move evaluations from both ends to the middle. On exact
  denoisers "blend" wins clearly: 0.31 on the tuning targets and 0.38 on the held-out ones
  ("auto" 0.48 and 0.55), and at 10 steps its mode error is 0.16-0.61× DDIM's on every
  held-out target ("auto" up to 1.58×, on the far light mode of the cosine schedule).
- benchmarks/solver_error_trained.py (trained networks: how far x_0 lands from the network's
  own ODE solution) reverses it. "blend" and "angle" take a long first step in λ from t = T,
  where a network's x̂_0 = (x_t − σ_t ε̂)/α_t multiplies the error of ε̂ by σ_T/α_T ≈ 157 and
  the step carries it on; an exact denoiser has no error to carry (a 1 % error in ε̂ is enough
  to reverse the order: tests/test_solvers.py). At 10 steps 2M's RMS on "blend" is
  1.55, 0.42 and 0.64 for latent MNIST, the digits U-Net on the linear schedule and the
  cosine one, against 0.15, 0.11 and 0.12 on "logsnr" (DDIM: 0.54, 0.20 and 1.12); "angle" is
  worse still. So "blend" and "angle" are options, not defaults.
- "capped-blend" (:func:`grid_sigmas`) is "blend", laid point by point with its steps in λ
  capped while σ > 1 (the first at the "logsnr" grid's step, the next ones at 1.5 times it): it
  leaves t = T as "logsnr" does and spends the rest of its evaluations as "blend" does. At 10-20
  steps, on the exact denoisers, UniPC's error on it is 0.31× DDIM's on the tuning targets and
  0.36× on the held-out ones ("logsnr" 0.35× and 0.43×, "blend" 0.29× and 0.35×; the held-out
  ones were in view when the caps were chosen, so not a clean check), 2M's 0.32× and 0.41×
  ("logsnr" 0.43× and 0.51×). On the trained networks at 10 steps UniPC's RMS on it is 0.111,
  0.072 and 0.070 (on "logsnr" 0.088, 0.084 and 0.088; the latent MNIST run was retrained for
  this, and its "logsnr" RMS moved from 0.077 to 0.088), but 2M's is 0.23, 0.15 and 0.19,
  1.4-1.6× its RMS on "logsnr": without a corrector, 2M's extrapolation
  (x̂_0 − x̂_0^{prev})/(2r), r = h_prev/h, is large where a short step is followed by a long one.

Sample quality decides (FD against the train split in the committed classifier's features, seeds
1-2, the same x_T for every grid: ``difflab eval RUN --sampler unipc --steps S --spacing G -n
900 --seed K``; n = 500 for latent MNIST). At 10 and 20 steps UniPC on "capped-blend" beats
"logsnr" on both digits U-Nets in all 8 cells (FD 11.5-27.0 against 12.7-29.7, lower by 4-21 %),
and on latent MNIST it is 3-4 % worse at 10 steps (66.2 and 72.6 against 63.9 and 70.7) and
level at 20. 2M on "capped-blend" is worse than on "logsnr" in 5 of the 8 digits cells (by up to
4.6 FD, at 10 steps on the cosine schedule). So UniPC takes "capped-blend" from 10 steps on and
DPM-Solver++ keeps "logsnr"; the SDE variant keeps it too: "capped-blend" is better for it on
the exact denoisers (0.51× against 0.62× DDIM's on the tuning targets at 10-20 steps) and in 6
of the 8 digits cells, but worse in 3 of 4 on latent MNIST (by 2.7-6.3 FD; ``--sampler
dpm++sde``, same seeds). At 5 steps no grid wins on every network: the digits U-Net on the
linear schedule scores FD 26-37 on "blend", 60-75 on "capped-blend", 102-111 on "logsnr" and
120-130 on "trailing" (what "auto" is at 5 steps), the cosine one 33-37, 119-133, 165-189 and
99-104, but latent MNIST 174-176 on "blend", 217-225 on "logsnr" and 71-73 on "trailing". So
"trailing" stays below 10 steps, and for 5 or fewer steps on a pixel-space model, try
``spacing="blend"``.
Dropping the λ clip (``lambda_min=None``) was worse or equal everywhere
(results/samplers_oracle_round1.md). (Before the oracle benchmark: on the 8-Gaussian ring alone,
benchmarks/samplers_2d.py and dpm_grids_2d.py, "trailing" beat DDIM at every budget in SWD,
which is why it was the first default.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..parameterization import Model
from ..schedules import Schedule
from ._common import Callback, alpha_bar_table, loop, predict
from .edm import karras_sigmas, timesteps_for_sigmas
from .timesteps import SPACINGS, capped

DPM_SPACINGS = (*SPACINGS, "logsnr", "karras", "angle", "blend", "capped-blend", "auto")
AUTO_FROM = 10  # "auto": "trailing" below this many steps, AUTO_GRID[sampler] from it on
AUTO_GRID = {"dpm++": "logsnr", "dpm++sde": "logsnr", "unipc": "capped-blend"}  # the notes say why
LAMBDA_MIN = -5.1  # diffusers' lambda_min_clipped recommended for the cosine schedule
OWN_GRIDS = ("logsnr", "karras", "angle", "blend", "capped-blend")  # built here, not by .timesteps
BLEND = 0.7  # "blend": log σ = (1 − w) log σ_logsnr + w log σ_angle (samplers_oracle.py's pick)
# "capped-blend": while σ > 1, a step is at most CAP × the "logsnr" grid's step in λ (the first
# at most CAP_FIRST ×). Chosen among CAP 1.5 and 2, with and without the first-step cap, by UniPC's
# RMS on the two digits U-Nets (solver_error_trained.py) and its error on the mixtures (the
# held-out ones were in view too); latent MNIST, trained after the choice, is the held-out check
CAP, CAP_FIRST = 1.5, 1.0


def half_log_snr(ab: float) -> float:
    """λ = log(√ᾱ / √(1−ᾱ)), half the log-SNR — Lu et al. 2022a (+∞ at ᾱ = 1)."""
    return math.inf if ab >= 1.0 else 0.5 * (math.log(ab) - math.log1p(-ab))


def auto_spacing(steps: int | Sequence[int] | None, sampler: str) -> str:
    """The grid "auto" stands for in ``sampler`` ("dpm++", "dpm++sde" or "unipc"): "trailing"
    for fewer than 10 steps, else ``AUTO_GRID[sampler]`` ("logsnr", or "capped-blend" for
    UniPC)."""
    return "trailing" if isinstance(steps, int) and steps < AUTO_FROM else AUTO_GRID[sampler]


def grid_sigmas(spacing: str, n: int, sigma_max: float, sigma_min: float,
                blend: float = BLEND) -> Tensor:
    """n ≥ 2 noise levels σ = e^{−λ} = √((1−ᾱ)/ᾱ), float64 (n,), from σ_max down to σ_min, at
    u = 0, 1/(n−1), …, 1 of one of four grids:

    - ``"logsnr"``: uniform in λ = −log σ (Lu et al. 2022a);
    - ``"angle"``: uniform in φ = arctan σ, the angle of (√ᾱ, √(1−ᾱ)); the time-uniform grid
      of the cosine schedule (ᾱ_t ∝ cos² of a linear function of t, Nichol & Dhariwal 2021),
      whatever the model's schedule. Against "logsnr" it moves evaluations from both ends to
      the middle (σ near 1): at low noise φ ≈ σ is uniform in σ, and at high noise
      φ ≈ π/2 − 1/σ is uniform in 1/σ, so the first step from σ_max is long in λ;
    - ``"blend"``: log σ(u) = (1 − w) log σ_logsnr(u) + w log σ_angle(u), w = ``blend``;
    - ``"capped-blend"``: "blend", with its long steps at high noise cut short. Point by point
      from σ_max: the next point is the second of the "blend" grid laid afresh from the current
      σ to σ_min over the points left; while σ > 1 a step may be at most ``CAP`` times the
      "logsnr" grid's step Δλ = log(σ_max/σ_min)/(n − 1) (the first at most ``CAP_FIRST``
      times). Why: from σ, a first-order step to σ' carries an error δ of ε̂ into x as
      ≈ (σ/σ' − 1) δ while both are ≫ 1 (x̂_0 = (x_t − σ_t ε̂)/α_t multiplies δ by σ), so a
      trained network's error grows with e^{Δλ}; see the module notes.
    """
    if spacing == "capped-blend":
        return _capped_blend(n, sigma_max, sigma_min, blend)
    u = torch.linspace(0.0, 1.0, n, dtype=torch.float64)  # (n,)
    log_lam = math.log(sigma_max) + u * (math.log(sigma_min) - math.log(sigma_max))
    phi_hi, phi_lo = math.atan(sigma_max), math.atan(sigma_min)
    log_ang = (phi_hi + u * (phi_lo - phi_hi)).tan().log()
    w = {"logsnr": 0.0, "angle": 1.0, "blend": blend}[spacing]
    return ((1 - w) * log_lam + w * log_ang).exp()


def _capped_blend(n: int, sigma_max: float, sigma_min: float, blend: float) -> Tensor:
    """The "capped-blend" grid of :func:`grid_sigmas`: float64 (n,), σ_max → σ_min."""
    lam, lam_end = -math.log(sigma_max), -math.log(sigma_min)
    delta = (lam_end - lam) / (n - 1)  # the "logsnr" grid's step in λ
    lams = [lam]
    for k in range(n - 2):  # the last point is σ_min itself
        nxt = -math.log(grid_sigmas("blend", n - k, math.exp(-lam), sigma_min, blend)[1].item())
        if lam < 0.0:  # σ > 1
            nxt = min(nxt, lam + (CAP_FIRST if k == 0 else CAP) * delta)
        lam = nxt
        lams.append(lam)
    lams.append(lam_end)
    return torch.tensor(lams, dtype=torch.float64).neg().exp()


def dpm_timesteps(schedule: Schedule, steps: int | Sequence[int] | None,
                  spacing: str = "trailing", lambda_min: float | None = LAMBDA_MIN,
                  blend: float = BLEND, sampler: str = "dpm++") -> Tensor:
    """The visited timesteps, int64 (S,), decreasing, restricted to t ≤ t_max, the largest t
    with λ_t ≥ lambda_min (T when None).

    A spacing of :mod:`.timesteps` ("trailing", "linspace", "leading") on 1..t_max, or
    ``"logsnr"``: S + 1 points uniform in λ from λ_{t_max} to λ_1 (Lu et al. 2022a), of
    which the first S are visited, each snapped to the nearest timestep
    (:func:`edm.timesteps_for_sigmas`, as λ = −log σ); like "trailing", the last update then
    jumps to x_0 instead of spending an evaluation at t = 1. ``"karras"``: the same with S + 1
    points of Karras et al.'s ρ = 7 grid in σ = e^{−λ} (eq. 5) from σ_{t_max} to σ_1 (the grid
    of diffusers' ``use_karras_sigmas``). None → every t up to t_max; an explicit list → those
    timesteps, unclipped. S ≥ t_max (but ≤ T) visits every t ≤ t_max. ``"angle"``,
    ``"blend"`` (weight ``blend`` on "angle") and ``"capped-blend"``: the same with S + 1 points
    of those grids of :func:`grid_sigmas`. ``"auto"``: ``sampler``'s default (:func:`auto_spacing`:
    "trailing" for S < 10, from 10 on "logsnr", or "capped-blend" for UniPC; why: the module
    notes).
    """
    ab = schedule.alpha_bars
    lam = 0.5 * (ab.log() - (-ab).log1p())  # (T,), decreasing in t
    t_max = schedule.T if lambda_min is None else max(int((lam >= lambda_min).sum()), 1)
    if spacing not in DPM_SPACINGS and isinstance(steps, int):
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(DPM_SPACINGS)}")
    spacing = auto_spacing(steps, sampler) if spacing == "auto" else spacing
    own = spacing if spacing in OWN_GRIDS else "logsnr"
    grid = capped(schedule.T, t_max, steps, spacing, own=own)
    if grid is not None:
        return grid
    sig_max, sig_min = math.exp(-lam[t_max - 1].item()), math.exp(-lam[0].item())
    if spacing == "karras":
        sig = karras_sigmas(steps + 1, sig_min, sig_max)
    else:
        sig = grid_sigmas(spacing, steps + 1, sig_max, sig_min, blend)
    return timesteps_for_sigmas(schedule, sig[:steps], t_max)


def _update(x: Tensor, x0s: list[Tensor], lams: list[float], lam_s: float, ab_s: float,
            ab_t: float, order: int) -> Tensor:
    """One multistep update t → s; x0s / lams: newest first, x0s[0] at t. x: (B, …)."""
    if ab_s >= 1.0:  # s = 0: λ_s = ∞, x_0 = x̂_0 (first order)
        return x0s[0]
    h = lam_s - lams[0]  # > 0
    a_s = math.sqrt(ab_s)
    ratio = math.sqrt((1 - ab_s) / (1 - ab_t))  # √(1−ᾱ_s)/√(1−ᾱ_t)
    phi0 = -math.expm1(-h)  # 1 − e^{−h}
    if order == 1:  # = DDIM, η = 0
        return ratio * x + a_s * phi0 * x0s[0]
    r0 = (lams[0] - lams[1]) / h
    if order == 2:  # Lu et al. 2022b, Alg. 2
        return ratio * x + a_s * phi0 * (x0s[0] + (x0s[0] - x0s[1]) / (2 * r0))
    # order 3: x̂_0' and x̂_0'' at λ_t from divided differences on λ_t, λ_{t'}, λ_{t''}
    h0, h1 = lams[0] - lams[1], lams[1] - lams[2]
    d0, d1 = (x0s[0] - x0s[1]) / h0, (x0s[1] - x0s[2]) / h1  # first differences
    dd = (d0 - d1) / (0.5 * (h0 + h1))  # ≈ x̂_0''
    deriv = d0 + 0.5 * h0 * dd  # ≈ x̂_0'(λ_t)
    phi1, phi2 = h + math.expm1(-h), h * h / 2 - h - math.expm1(-h)
    return ratio * x + a_s * (phi0 * x0s[0] + phi1 * deriv + phi2 * dd)


@torch.inference_mode()
def dpm_solver_pp(
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
    """Multistep DPM-Solver++ of ``order`` 1, 2 (2M, Lu et al. 2022b Alg. 2) or 3 (3M); one
    model evaluation per step, deterministic (``generator`` is unused). x_T: (B, …).
    ``spacing``: see :func:`dpm_timesteps` and the module notes (default "auto": "trailing"
    below 10 steps, "logsnr" from 10 on).

    ``lambda_min`` clips the noisy end: sampling starts at the largest t with λ_t ≥ lambda_min,
    taking x_T as the sample there (at t = 996 of the cosine schedule √ᾱ_t = 0.006: x_t is
    N(0, I) to within that). −5.1 (σ = e^{5.1} ≈ 164 in EDM's variables) leaves the
    linear schedule whole (λ_T = −5.06) and drops t = 997..1000 of the cosine one, whose
    clipped tail (ᾱ_T ≈ 2.4e-9, λ_T = −9.9) turns ε̂ into x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t with
    an error amplified 2·10⁴ times (schedules.cosine) — DPM-Solver++ converts ε̂ to x̂_0 at every
    step, so it would carry that error into the next steps' extrapolation. None disables it.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    ts = dpm_timesteps(schedule, steps, spacing, lambda_min).tolist()

    def step(x, x0s, lams, ab_t, ab_s, i):
        k = min(order, i + 1, len(ts) - i)  # warm-up at the start, lower order at the end
        return _update(x, x0s, lams, half_log_snr(ab_s), ab_s, ab_t, k)

    return multistep(model, schedule, x_T, ts, order, step, progress=progress,
                     callback=callback, cond=cond, desc=f"dpm++{order}m")


def multistep(model: Model, schedule: Schedule, x_T: Tensor, ts: list[int], history: int,
              step: Callable, *, progress: bool = False, callback: Callback | None = None,
              cond: dict | None = None, desc: str = "multistep") -> Tensor:
    """The loop of the multistep data-prediction solvers: at each visited t (``ts``,
    decreasing; then 0) one model evaluation gives x̂_0, the newest ``history`` of them and
    their λ are kept (newest first), and ``step(x, x0s, lams, ᾱ_t, ᾱ_s, i)`` returns x at the
    next timestep s. x_T: (B, …)."""
    ab = alpha_bar_table(schedule)
    x, x0s, lams = x_T, [], []
    for i, (t, s) in enumerate(loop(list(zip(ts, ts[1:] + [0], strict=True)), progress, desc)):
        x0s.insert(0, predict(model, x, t, ab[t], cond)[1])  # x̂_0 at t, like x
        lams.insert(0, half_log_snr(ab[t]))
        del x0s[history:], lams[history:]
        x = step(x, x0s, lams, ab[t], ab[s], i)
        if callback is not None:
            callback(i, t, x)
    return x
