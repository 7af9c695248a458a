"""UniPC — Zhao, Bai, Rao, Zhou & Lu 2023, "UniPC: A Unified Predictor-Corrector Framework for
Fast Sampling of Diffusion Models" (NeurIPS 2023): the multistep predictor UniP-p and the
corrector UniC-p, data prediction (their Alg. 2 / App. B), on the discrete schedule.

Notation of :mod:`.dpm_solver`: λ_t = log(√ᾱ_t/√(1−ᾱ_t)), x̂_0 = x_θ(x_t, t), h = λ_t − λ_s > 0
for an update s → t (here s is the noisier point), α_t = √ᾱ_t, σ_t = √(1−ᾱ_t). With the
earlier points s_m (m = 1..p−1), r_m = (λ_{s_m} − λ_s)/h < 0 and D_m = (x̂_0(s_m) − x̂_0(s))/r_m,

    UniP-p:  x_t = σ_t/σ_s · x_s + α_t (1 − e^{−h}) x̂_0(s) − α_t B(h) Σ_m a_m D_m,
    UniC-p:  x_t^c = σ_t/σ_s · x_s + α_t (1 − e^{−h}) x̂_0(s)
                     − α_t B(h) (Σ_m a^c_m D_m + a^c_p (x̂_0(t) − x̂_0(s))),

where the coefficients solve R_p(h) a = φ_p(h)/B(h) (their Theorem 3.1: R_p's row k holds
r_m^{k−1}, φ_k(h) = h_φ's recursion below, with h → −h for data prediction). B(h) is any
function of order h: "bh1" is B(h) = h (written −h in the data-prediction sign convention,
their choice for unconditional sampling) and "bh2" is e^h − 1 (for guided sampling). Following
the reference implementation (and diffusers' UniPCMultistepScheduler), UniP-2 uses a_1 = 1/2
and UniC-1 a^c_1 = 1/2, the leading terms of the exact coefficients.

UniC reuses the model evaluation at the predicted x_t that the next predictor step needs
anyway, so it costs no extra evaluation and raises the order by one: UniPC-p (predictor of order
p, corrector on) converges with order p + 1. The corrected x_t^c continues the solve, while
x̂_0(t) stays the evaluation at the uncorrected x_t (as in the paper). With ``corrector=False``
and ``order=1`` the update is DDIM with η = 0, exactly.

The first steps lower the order (no history yet); the step to x_0 (λ = ∞) is first order,
x_0 = x̂_0 at the last timestep, as in :mod:`.dpm_solver` (whose time grids and λ clip UniPC
shares), and no corrector follows it. UniP-2 with "bh2" is DPM-Solver++ 2M exactly (tested):
what UniPC adds is the corrector.

Default order, B(h) and grid, from benchmarks/samplers_oracle.py (tuning targets only; the
held-out ones in results/samplers_oracle.md): order 2, "bh2", and the "auto" grid ("trailing"
below 10 steps, "capped-blend" from 10 on: :func:`~difflab.samplers.dpm_solver.auto_spacing`).
With "logsnr" (the UniPC paper's grid) from 10 steps, its geometric-mean error ÷ DDIM's over the
tuning targets, both schedules, both metrics and NFE 5-20 is 0.39 (2M DPM-Solver++ "auto":
0.48): order 3 is worse at 5-10 steps (its extrapolation over the first, unequal λ steps), bh1
is much worse at 5 steps on the logsnr grid (1.3-2.2× DDIM), and on the cosine schedule "logsnr"
at 5 steps spends three evaluations at t ≥ 970. The "blend" grid scores better still on those
exact denoisers but lands far from a trained network's own ODE solution
(benchmarks/results/solver_error_trained*.md: at 10 steps on latent MNIST RMS 1.23 against 0.09
for "logsnr"), so it is an option. "capped-blend" leaves t = T as "logsnr" does and spends the
rest as "blend" does; with UniPC's corrector it keeps most of both (at 10-20 steps: 0.31× DDIM's
error on the tuning targets and 0.36× on the held-out ones, which were in view when its caps
were chosen; "logsnr" 0.35× and 0.43×; on trained networks its RMS at 10 steps is 0.07 against
0.08-0.09 on the digits U-Nets, 0.11 against 0.09 on latent MNIST) and gives lower FD than
"logsnr" on both digits U-Nets (8 of 8 cells), 3-4 % higher on latent MNIST at 10 steps (the
notes of :mod:`.dpm_solver`). On the held-out targets at n = 10,000 and one x_T the mode error
of "auto" is 0.17-0.50× DDIM's at 10 steps and 0.28-0.59× at 20 (1.27-1.78× DDPM-1000's);
against "logsnr" it is better on the far-light-mode and 32-D targets and worse on five-3d at 20
steps (0.28 and 0.30× DDIM's against 0.17 and 0.21×). At that size a true sample's own error is
a large part of DDIM's at 20 steps and the ratios move with the x_T; at n = 100,000 and three
x_T's (benchmarks/samplers_heldout.py, results/samplers_heldout.md; per-seed ranges within
±0.05) "auto" is ≤ 0.4× DDIM at 10 steps in 6 of the 6 held-out cells (3 targets × 2 schedules)
in sliced W1 and 4 of 6 in the mode error, and ≤ 0.3× at 20 steps in 6 and 5 of 6. The misses:
five-3d at 10 steps (0.42 and 0.49×; order 3 on "logsnr" scores 0.21× on the linear schedule
and 0.52× on the cosine in results/samplers_oracle.json, and is worse on the tuning targets at
5-10 steps) and the far-light mode on the cosine schedule at 20 steps (0.33×). On three fresh
targets, defined after the defaults were fixed (``--set fresh``, results/samplers_heldout_fresh.md),
"auto" meets both goals in sliced W1 in 6 of 6 cells, and in the mode error in 4 of 6 at 10
steps and 3 of 6 at 20: on the two targets with thin modes (std 0.03-0.1) its ratio to DDIM
grows from 10 to 20 steps (0.05 → 0.16 and 0.31 → 0.66 on the linear schedule), where
DPM-Solver++ on "logsnr" scores 0.04 and 0.38 at 20. "capped-blend" spends few steps at low
noise, which thin modes need; on the trained networks above it was still the better grid at 20
steps. Against DDPM-1000 (ancestral, every step, the same three x_T's) its error at 20 steps
is 1.20-2.24× in the mode error and 0.93-1.76× in sliced W1 on the held-out cells (≤ 1.5× in 3
and 4 of 6), and 1.65-3.19× and 1.29-1.72× on the fresh ones (0 and 2 of 6). No deterministic
sampler can go below the probability-flow ODE's own limit on the T = 1000 grid (DDIM and UniPC at
999 steps agree), which on the far-light-mode target is 1.5-1.8× DDPM-1000's sliced W1 over four
x_T seeds (results/ode_limit_oracle.md): there only the SDE samplers reach DDPM-1000.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..parameterization import Model
from ..schedules import Schedule
from ._common import Callback, alpha_bar_table, loop, predict
from .dpm_solver import LAMBDA_MIN, dpm_timesteps, half_log_snr

VARIANTS = ("bh1", "bh2")


def unipc_coefficients(h: float, rks: Sequence[float], variant: str) -> tuple[list[float], float,
                                                                               float]:
    """(b, h_phi_1, B(h)): b_k = φ_k(−h) k!/B(h) for k = 1..p (p = len(rks)), the right side of
    R_p a = b; h_phi_1 = e^{−h} − 1; B(h) = −h ("bh1") or e^{−h} − 1 ("bh2") in the
    data-prediction convention hh = −h. ``rks``: r_1..r_{p−1} and 1 (the point t itself)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    B_h = hh if variant == "bh1" else h_phi_1
    b, factorial = [], 1
    for k in range(1, len(rks) + 1):
        b.append(h_phi_k * factorial / B_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return b, h_phi_1, B_h


def _solve(rks: Sequence[float], b: Sequence[float]) -> list[float]:
    """a with Σ_m a_m r_m^{k−1} = b_k, k = 1..len(rks) (R_p of Theorem 3.1)."""
    R = torch.tensor([[r ** k for r in rks] for k in range(len(rks))], dtype=torch.float64)
    return torch.linalg.solve(R, torch.tensor(b, dtype=torch.float64)).tolist()


def _base(x: Tensor, x0: Tensor, ab_s: float, ab_t: float, h_phi_1: float) -> Tensor:
    """σ_t/σ_s x_s + α_t (1 − e^{−h}) x̂_0(s): the first-order (DDIM) part of both updates."""
    return math.sqrt((1 - ab_t) / (1 - ab_s)) * x - math.sqrt(ab_t) * h_phi_1 * x0


def uni_p(x: Tensor, x0s: list[Tensor], lams: list[float], lam_t: float, ab_s: float,
              ab_t: float, order: int, variant: str) -> Tensor:
    """UniP-``order``: x_s → x_t. x0s / lams newest first (x0s[0] at s, the current point)."""
    if ab_t >= 1.0:  # t = 0: λ = ∞, x_0 = x̂_0 (first order)
        return x0s[0]
    h = lam_t - lams[0]
    rks = [(lams[m] - lams[0]) / h for m in range(1, order)] + [1.0]
    b, h_phi_1, B_h = unipc_coefficients(h, rks, variant)
    out = _base(x, x0s[0], ab_s, ab_t, h_phi_1)
    if order == 1:
        return out
    a = [0.5] if order == 2 else _solve(rks[:-1], b[:-1])
    res = sum(a[m - 1] * (x0s[m] - x0s[0]) / rks[m - 1] for m in range(1, order))
    return out - math.sqrt(ab_t) * B_h * res


def uni_c(x: Tensor, x0s: list[Tensor], lams: list[float], x0_t: Tensor, lam_t: float,
              ab_s: float, ab_t: float, order: int, variant: str) -> Tensor:
    """UniC-``order``: the corrected x_t from x_s (x), the history at s (x0s, lams: newest
    first, x0s[0] at s) and x̂_0(t) = ``x0_t`` evaluated at the predicted x_t."""
    h = lam_t - lams[0]
    rks = [(lams[m] - lams[0]) / h for m in range(1, order)] + [1.0]
    b, h_phi_1, B_h = unipc_coefficients(h, rks, variant)
    a = [0.5] if order == 1 else _solve(rks, b)
    res = sum(a[m - 1] * (x0s[m] - x0s[0]) / rks[m - 1] for m in range(1, order))
    res = res + a[-1] * (x0_t - x0s[0])
    return _base(x, x0s[0], ab_s, ab_t, h_phi_1) - math.sqrt(ab_t) * B_h * res


@torch.inference_mode()
def unipc(
    model: Model,
    schedule: Schedule,
    x_T: Tensor,
    steps: int | Sequence[int] | None = 20,
    generator: torch.Generator | None = None,
    *,
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    spacing: str = "auto",
    lambda_min: float | None = LAMBDA_MIN,
    progress: bool = False,
    callback: Callback | None = None,
    cond: dict | None = None,
) -> Tensor:
    """UniPC (Zhao et al. 2023): the multistep predictor UniP-``order`` (1-3) with the corrector
    UniC on every step but the last, data prediction, B(h) by ``variant`` ("bh1": h, "bh2":
    e^h − 1); one model evaluation per step, deterministic (``generator`` is unused).
    x_T: (B, …). ``spacing`` and ``lambda_min``: the grids and λ clip of
    :func:`~difflab.samplers.dpm_solver.dpm_timesteps` (default "auto": "trailing" below 10
    steps, "capped-blend" from 10 on; see the module notes).
    ``corrector=False`` leaves the predictor alone (order 1: DDIM).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    ts = dpm_timesteps(schedule, steps, spacing, lambda_min, sampler="unipc").tolist()
    ab = alpha_bar_table(schedule)
    S = len(ts)
    x, x0s, lams = x_T, [], []
    prev = None  # (x_s, the order of the predictor that gave x) of the last update
    for i, (t, s) in enumerate(loop(list(zip(ts, ts[1:] + [0], strict=True)), progress,
                                    f"unipc-{order}{variant}")):
        x0_t = predict(model, x, t, ab[t], cond)[1]  # x̂_0 at t, at the predicted x
        lam_t = half_log_snr(ab[t])
        if prev is not None and corrector:
            x_s, k_prev, t_prev = prev
            x = uni_c(x_s, x0s, lams, x0_t, lam_t, ab[t_prev], ab[t], k_prev, variant)
        x0s.insert(0, x0_t)
        lams.insert(0, lam_t)
        del x0s[order:], lams[order:]
        k = min(order, i + 1, S - i)  # warm-up at the start, lower order at the end
        prev = (x, k, t)
        x = uni_p(x, x0s, lams, half_log_snr(ab[s]), ab[t], ab[s], k, variant)
        if callback is not None:
            callback(i, t, x)
    return x
