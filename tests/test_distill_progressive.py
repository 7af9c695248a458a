"""Progressive distillation (Salimans & Ho 2022, Alg. 2; Weng Fig. 9-10) against Gaussian data,
where the exact teacher's DDIM step is an affine map of z_t known in closed form."""

from __future__ import annotations

import pytest
import torch

from difflab import oracle, samplers, schedules
from difflab.distill import (
    EPS,
    X0,
    V,
    distilled_steps,
    snr_plus_one,
    teacher_grid,
    teacher_target,
    truncated_snr,
)
from difflab.nn.mlp import MLPDenoiser
from difflab.training.progressive import (
    ProgressiveDistillation,
    progressive_distill,
    progressive_round,
)

LINEAR, COSINE = schedules.linear(1000), schedules.cosine(1000)
MU = torch.tensor([0.5, -0.3], dtype=torch.float64)
SIGMA = torch.tensor([[0.6, 0.2], [0.2, 0.4]], dtype=torch.float64)
GAUSS = oracle.Gaussian(MU, SIGMA)


def _ddim_affine(ab_from: float, ab_to: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One exact-teacher DDIM (η = 0) step for N(μ, Σ) data as z' = A z + b, in closed form:
    x̂(z) = μ + αΣ(α²Σ + σ²I)⁻¹(z − αμ) (Gaussian conditioning), z' = α' x̂ + (σ'/σ)(z − α x̂)."""
    a, s = ab_from**0.5, (1 - ab_from) ** 0.5
    a2, s2 = ab_to**0.5, (1 - ab_to) ** 0.5
    eye = torch.eye(2, dtype=torch.float64)
    K = a * SIGMA @ torch.linalg.inv(a * a * SIGMA + s * s * eye)  # x̂ = K z + c
    c = MU - a * K @ MU
    return (a2 - s2 * a / s) * K + (s2 / s) * eye, (a2 - s2 * a / s) * c


def _states(model, sched, z, steps) -> list[torch.Tensor]:
    """x after each DDIM (η = 0) update over the explicit ``steps`` (the last update goes to 0)."""
    out = []
    samplers.ddim(model, sched, z, steps=steps, callback=lambda k, t, x: out.append(x.clone()))
    return out


@pytest.mark.parametrize("sched", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_one_step_from_the_target_lands_where_two_exact_teacher_steps_land(sched):
    """For every student step of an N = 4 round: the DDIM step t → t'' taken with x̂ = x̃
    equals two teacher DDIM steps t → t' → t'', computed (a) from the closed-form affine maps
    and (b) by ``samplers.ddim`` itself; a student ε-model built from x̃ reproduces it too."""
    teacher = oracle.ExactDenoiser(GAUSS, sched)
    grid = teacher_grid(sched.T, 4)
    ab = [1.0] + sched.alpha_bars.tolist()
    B = 64
    z = torch.randn(B, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.3

    def full(u):
        return torch.full((B,), u, dtype=torch.long)

    for i in range(4):
        t, tm, tn = (int(u) for u in grid[2 * i: 2 * i + 3])
        x_tilde = teacher_target(teacher, sched, z, full(t), full(tm), full(tn))  # (B, 2)
        A1, b1 = _ddim_affine(ab[t], ab[tm])
        A2, b2 = _ddim_affine(ab[tm], ab[tn])
        z_two = (z @ A1.T + b1) @ A2.T + b2  # two teacher steps, closed form
        a, s, a2, s2 = ab[t] ** 0.5, (1 - ab[t]) ** 0.5, ab[tn] ** 0.5, (1 - ab[tn]) ** 0.5
        z_one = a2 * x_tilde + (s2 / s) * (z - a * x_tilde)  # one DDIM step from x̃
        torch.testing.assert_close(z_one, z_two, rtol=1e-9, atol=1e-9)

        seen = _states(teacher, sched, z, [t, tm] + ([tn] if tn else []))
        torch.testing.assert_close(seen[1], z_two, rtol=1e-9, atol=1e-9)

        def student(x, tt, x_tilde=x_tilde, a=a, s=s):  # ε̂ whose x̂_0 is x̃ (Weng eq. 11)
            return (x - a * x_tilde) / s

        one = _states(student, sched, z, [t] + ([tn] if tn else []))
        torch.testing.assert_close(one[0], z_two, rtol=1e-9, atol=1e-9)
        if tn == 0:  # the last step: the target is the teacher's two-step x_0 itself
            torch.testing.assert_close(x_tilde, z_two, rtol=1e-9, atol=1e-9)


def test_grid_is_the_trailing_grid_and_halves():
    for T, N in [(1000, 4), (1000, 64), (1000, 500), (37, 5)]:
        g = teacher_grid(T, N)
        assert g[0] == T and g[-1] == 0 and len(g) == 2 * N + 1
        assert bool((g[:-1] > g[1:]).all())
        assert distilled_steps(T, N) == samplers.timesteps(T, N, "trailing").tolist()
        if N % 2 == 0:  # the next round's grid is every other point: its teacher's own steps
            assert torch.equal(teacher_grid(T, N // 2), g[::2])
    with pytest.raises(ValueError, match="steps_N"):
        teacher_grid(1000, 501)


def test_weights_are_the_papers_losses_in_x():
    """Salimans & Ho 2022 §4: with ε̂ ↔ x̂ through z = αx + σε, max(SNR, 1)‖x − x̂‖² =
    max(‖x − x̂‖², ‖ε − ε̂‖²) and (1 + SNR)‖x − x̂‖² = ‖v − v̂‖²."""
    g = torch.Generator().manual_seed(1)
    ab = torch.tensor([0.999, 0.7, 0.5, 0.2, 1e-3], dtype=torch.float64)[:, None]  # (5, 1)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x, eps, eps_hat = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    z = a * x + s * eps
    x_hat = (z - s * eps_hat) / a
    dx, de = (x - x_hat).pow(2).sum(1), (eps - eps_hat).pow(2).sum(1)
    dv = ((a * eps - s * x) - (a * eps_hat - s * x_hat)).pow(2).sum(1)
    torch.testing.assert_close(truncated_snr(ab[:, 0]) * dx, torch.maximum(dx, de))
    torch.testing.assert_close(snr_plus_one(ab[:, 0]) * dx, dv)


def test_parameterisations_read_back_x0():
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    ab = torch.full((4, 1), 0.3)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    for p, out in [(X0, x0), (EPS, eps), (V, v)]:
        torch.testing.assert_close(p.to_x0(x_t, out, ab), x0, rtol=1e-5, atol=1e-5)


def test_conditioning_reaches_teacher_and_student_row_by_row():
    data = torch.arange(10.0)[:, None]  # (10, 1)
    labels = torch.arange(10) * 7
    drawn = ProgressiveDistillation(None, torch.nn.Linear(1, 1), LINEAR, data, 4, batch=32,
                                    cond_data={"y": labels}).draw(0, torch.Generator())
    assert torch.equal(drawn["y"], drawn["x0"][:, 0].long() * 7)
    got = {"teacher": [], "student": []}

    def teacher(x, t, y):
        got["teacher"].append(y)
        return torch.zeros_like(x)

    class Student(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, t, y):
            got["student"].append(y)
            return x * self.w

    progressive_round(teacher, Student(), LINEAR, data, 4, iters=2, batch=8,
                      generator=torch.Generator().manual_seed(1), cond_data={"y": labels})
    assert len(got["teacher"]) == 4 and len(got["student"]) == 2  # 2 teacher calls per batch
    assert all(y.shape == (8,) and bool((y % 7 == 0).all()) for y in got["teacher"])
    assert torch.equal(got["teacher"][0], got["student"][0])


def test_two_rounds_distil_eight_teacher_steps_into_two():
    """Rounds N = 4 → 2 (v-parameterisation, truncated-SNR weight) from the exact teacher on
    1-D Gaussian data. Measured (seeds 0, 1): after round 1 the 4-step student is 0.006-0.008
    (RMS) from the teacher's 8-step DDIM, which itself is 0.072 from the teacher's 4-step DDIM;
    after round 2 the 2-step student is 0.007-0.008 from the 8-step teacher, against 0.13 for
    the teacher's own 2 steps (whose samples have std 0.025, not 0.158)."""
    sched = LINEAR
    dist = oracle.Gaussian(torch.tensor([0.5]), torch.tensor([[0.09]]))
    teacher = oracle.ExactDenoiser(dist, sched)
    data = dist.sample(20_000, torch.Generator().manual_seed(0))
    x_T = torch.randn(4000, 1, generator=torch.Generator().manual_seed(5))
    ref = samplers.ddim(teacher, sched, x_T, steps=8, spacing="trailing")

    def rms(u):
        return u.pow(2).mean().sqrt().item()

    def baseline(n):
        return rms(samplers.ddim(teacher, sched, x_T, steps=n, spacing="trailing") - ref)

    errors = {}

    def check(r, N, student):
        x = samplers.ddim(V.as_eps(student, sched), sched, x_T, steps=N, spacing="trailing")
        errors[N] = rms(x - ref)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        student = MLPDenoiser(dim=1, hidden=32, depth=1, t_dim=16)
    student, N = progressive_distill(teacher, student, sched, data, 4, rounds=2,
                                     parameterization=V, iters=400, batch=256, lr=5e-3,
                                     generator=torch.Generator().manual_seed(1), callback=check)
    assert N == 2 and sorted(errors) == [2, 4]
    assert errors[4] < 0.25 * baseline(4), (errors, baseline(4))
    assert errors[2] < 0.15 * baseline(2), (errors, baseline(2))
