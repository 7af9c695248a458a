"""Progressive distillation — Weng §"Fewer Sampling Steps & Distillation", Fig. 9-10;
Salimans & Ho 2022, Algorithm 2.

A student that takes N deterministic DDIM steps learns to do in one step what its teacher does
in two. With α_t = √ᾱ_t, σ_t = √(1−ᾱ_t) (the paper's z_t = α_t x + σ_t ε is Weng eq. 3) and
x̂_η the teacher's x̂_0 (Weng eq. 11), two teacher DDIM steps (η = 0, Weng eq. 29)

    z_{t'}  = α_{t'}  x̂_η(z_t)    + σ_{t'}  ε̂_η(z_t),
    z_{t''} = α_{t''} x̂_η(z_{t'}) + σ_{t''} ε̂_η(z_{t'}),

are matched by one student step from z_t to z_{t''} exactly when the student predicts

    x̃ = (z_{t''} − (σ_{t''}/σ_t) z_t) / (α_{t''} − (σ_{t''}/σ_t) α_t)        (Alg. 2)

— solve z_{t''} = α_{t''} x̃ + (σ_{t''}/σ_t)(z_t − α_t x̃), the DDIM step written with x̃, for
x̃. The loss is w(λ_t) ‖x̃ − x̂_θ(z_t)‖² with λ_t = log SNR_t = log(α_t²/σ_t²) and the
paper's §4 weights: "truncated SNR" w = max(SNR_t, 1) (= max(‖x − x̂‖², ‖ε − ε̂‖²)) or
"SNR+1" w = 1 + SNR_t (= ‖v − v̂‖²). Each round halves N; the student becomes the next teacher.

Time grid on difflab's discrete steps. The paper samples t = i/N in continuous time; difflab's
models take integer t ∈ 1..T, so a round of N student steps uses the 2N-step "trailing" grid
τ_k = round(k·T/(2N)), k = 0..2N (``samplers.timesteps(T, 2N, "trailing")`` plus τ_0 = 0):
students step between its even points, the teacher's half-steps land on the odd ones. The even
points of the 2N grid are exactly the N-step trailing grid, so

    samplers.ddim(V.as_eps(student, schedule), schedule, x_T, steps=N, spacing="trailing")

samples the distilled student on the steps it was trained on, and the next round's teacher (the
student) is evaluated only on its own grid. It starts at t = T (the noisiest step, as the paper's
t = 1) and needs 2N ≤ T. No rounding error enters: every t is one of the schedule's own steps.

Parameterisation. The student's output is read as x̂_0, ε̂ or v (``X0``, ``EPS``, ``V``). The
paper (§4) warns against ε: at t = T, x̂ = (z − σ ε̂)/α divides by α_T = √ᾱ_T (6·10⁻³ on the
linear schedule, 5·10⁻⁵ on the cosine one), so a small ε̂ error becomes a large x̂ error — the
first step of a few-step sampler. Measured (1-D Gaussian, exact teacher, fresh 32-wide MLP,
400 steps, N = 4): the student's 4 steps land 0.007 (V), 0.004 (X0) and 0.17 (EPS) RMS from
the teacher's 8, against 0.07 for the teacher's own 4 steps. Use ``V`` or ``X0``.
Algorithm 2 initialises the student as a copy of the teacher: pass ``copy.deepcopy(net)`` as the
student when the teacher network predicts in the same parameterisation, else a fresh network.

Conditioning. ``cond_data`` holds per-example tensors (e.g. {"y": labels (N,)}) indexed with the
batch and passed to both models as keyword arguments, so a class-conditional teacher, or any
callable wrapping one (classifier-free guidance), distils into a conditional student.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..parameterization import EpsFromV, EpsFromX0, Model, x0_from_eps, x0_from_v
from ..samplers.timesteps import timesteps
from ..schedules import Schedule

_F64 = torch.float64


# --- what the student predicts -----------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """How a network's output maps to x̂_0, and how to present the network as an ε-model."""

    name: str
    to_x0: Callable[[Tensor, Tensor, Tensor], Tensor]  # (x_t, output, ᾱ_t) -> x̂_0
    as_eps: Callable[[Model, Schedule], Model]  # (net, schedule) -> ε-model for the samplers


X0 = Prediction("x0", lambda x_t, out, ab: out, EpsFromX0)
EPS = Prediction("eps", x0_from_eps, lambda net, schedule: net)
V = Prediction("v", x0_from_v, EpsFromV)


# --- weights, Salimans & Ho 2022 §4 --------------------------------------------------------
def truncated_snr(ab: Tensor) -> Tensor:
    """w(λ_t) = max(SNR_t, 1), SNR_t = ᾱ_t/(1−ᾱ_t): "truncated SNR" weighting."""
    return (ab / (1 - ab)).clamp(min=1.0)


def snr_plus_one(ab: Tensor) -> Tensor:
    """w(λ_t) = 1 + SNR_t: "SNR+1" weighting, the v-loss ‖v − v̂‖² written on x."""
    return 1.0 + ab / (1 - ab)


# --- the time grid and the target ----------------------------------------------------------
def teacher_grid(T: int, steps_N: int) -> Tensor:
    """τ_{2N} = T > … > τ_1 > τ_0 = 0, int64 (2N+1,): the 2N-step trailing grid and 0.

    Student step i (i = 0..N−1) goes τ[2i] → τ[2i+2]; the teacher's midpoint is τ[2i+1].
    """
    if isinstance(steps_N, bool) or not isinstance(steps_N, int) or not 1 <= 2 * steps_N <= T:
        raise ValueError(f"steps_N must be an integer with 1 <= 2·steps_N <= T (T={T}), "
                         f"got {steps_N!r}")
    grid = torch.cat([timesteps(T, 2 * steps_N, "trailing"), torch.zeros(1, dtype=torch.long)])
    student = torch.cat([timesteps(T, steps_N, "trailing"), torch.zeros(1, dtype=torch.long)])
    assert torch.equal(grid[::2], student)  # the N-step grid is every other 2N-step point
    return grid


@torch.no_grad()
def teacher_target(teacher: Model, schedule: Schedule, z_t: Tensor, t: Tensor, t_mid: Tensor,
                   t_next: Tensor, cond: dict | None = None) -> Tensor:
    """x̃ such that one DDIM step t → t_next from x̃ equals two teacher DDIM (η = 0) steps
    t → t_mid → t_next — Salimans & Ho 2022, Alg. 2; Weng eq. (29) with σ_t = 0.

    z_t: (B, …); t > t_mid > t_next ≥ 0: int64 (B,). The linear algebra is float64; the teacher
    is called on z in z_t's dtype. Returns x̃ (B, …) in z_t's dtype.
    """
    cond = cond or {}
    z = z_t.to(_F64)
    ab = [schedule.alpha_bar_at(u).to(z.device) for u in (t, t_mid, t_next)]  # 3 × (B,) float64
    a = [Schedule.broadcast(v.sqrt(), z) for v in ab]  # α = √ᾱ, (B, 1, …)
    s = [Schedule.broadcast((1 - v).sqrt(), z) for v in ab]  # σ = √(1−ᾱ)

    def ddim_step(x: Tensor, k: int, u: Tensor) -> Tensor:  # teacher DDIM step k → k+1
        eps = teacher(x.to(z_t.dtype), u, **cond).to(_F64)  # ε̂_η(z), (B, …)
        x0 = (x - s[k] * eps) / a[k]  # x̂_η(z), Weng eq. (11)
        return a[k + 1] * x0 + s[k + 1] * eps  # Weng eq. (29), η = 0

    z_next = ddim_step(ddim_step(z, 0, t), 1, t_mid)  # z_{t''}, (B, …)
    r = s[2] / s[0]  # σ_{t''}/σ_t
    return ((z_next - r * z) / (a[2] - r * a[0])).to(z_t.dtype)


def progressive_loss(teacher: Model, student: nn.Module, schedule: Schedule, x0: Tensor,
                     steps_N: int, *, parameterization: Prediction = V,
                     weighting: Callable[[Tensor], Tensor] = truncated_snr,
                     generator: torch.Generator | None = None, cond: dict | None = None,
                     i: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
    """One minibatch of Algorithm 2: E_{i, ε} w(λ_t) ‖x̃ − x̂_θ(z_t)‖² with t = τ[2i],
    i ~ U{0..N−1}. x0: (B, …). ``i`` (B,) and ``eps`` (B, …) are drawn from ``generator``
    unless given (in that order). Returns a scalar (mean over batch and data dimensions)."""
    cond = cond or {}
    grid = teacher_grid(schedule.T, steps_N).to(x0.device)  # (2N+1,)
    if i is None:
        i = torch.randint(0, steps_N, (x0.shape[0],), generator=generator)  # (B,)
    i = i.to(x0.device)
    t, t_mid, t_next = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]  # (B,) each
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    eps = eps.to(x0.device)
    z_t = schedule.q_sample(x0, t, eps)  # Weng eq. (3), (B, …)
    target = teacher_target(teacher, schedule, z_t, t, t_mid, t_next, cond)  # x̃, (B, …)
    ab = schedule.alpha_bar_at(t).to(x0.device)  # (B,) float64
    x0_hat = parameterization.to_x0(z_t, student(z_t, t, **cond), Schedule.broadcast(ab, z_t))
    per_sample = (target - x0_hat).pow(2).flatten(1).mean(1)  # (B,)
    return (weighting(ab).to(x0.dtype) * per_sample).mean()


def distilled_steps(T: int, steps_N: int) -> list[int]:
    """The N timesteps a distilled student samples on (T first): the trailing grid, the same as
    ``samplers.timesteps(T, N, "trailing")``. Use ``ddim(..., steps=N, spacing="trailing")``."""
    return teacher_grid(T, steps_N)[:-1:2].tolist()

