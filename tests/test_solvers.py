"""DPM-Solver++ and EDM Heun, driven by the exact mixture denoiser: their identities, orders of
convergence, and sample quality per model evaluation against DDIM."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from difflab import metrics, oracle, samplers, schedules
from difflab.samplers import dpm_solver
from difflab.samplers.dpm_solver import BLEND, auto_spacing, dpm_timesteps, grid_sigmas
from difflab.samplers.edm import edm_timesteps, schedule_sigmas, timesteps_for_sigmas

MIX = oracle.ring_mixture(8, radius=2.0, std=0.15, weights=torch.arange(1.0, 9.0))
LINEAR, COSINE = schedules.linear(1000), schedules.cosine(1000)
SCHEDS = pytest.mark.parametrize("sched", [LINEAR, COSINE], ids=["linear", "cosine"])


class Counted:
    """An ε-model that counts its (batched) evaluations."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x_t, t, **cond):
        self.calls += 1
        return self.model(x_t, t, **cond)


def _x_T(n, seed=0, dtype=torch.float32):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _truth(n, seed):
    return MIX.sample(n, torch.Generator().manual_seed(10_000 + seed))


def _mean_swd(x, n):
    """Mean SWD of the n-sample chunks of x, each against its own true sample."""
    chunks = x.split(n)
    return sum(metrics.swd(c, _truth(n, 50 + i)) for i, c in enumerate(chunks)) / len(chunks)


# --- the σ schedule of EDM and the snapping to model timesteps ---

def test_karras_sigmas_endpoints_monotone_and_eq5():
    sig = samplers.karras_sigmas(10, 0.01, 80.0)
    assert sig.shape == (11,) and sig.dtype == torch.float64
    assert sig[0].item() == 80.0 and sig[9].item() == 0.01 and sig[10].item() == 0.0
    assert bool((sig[1:] < sig[:-1]).all())
    root = sig[:-1] ** (1 / 7)  # eq. (5): σ^{1/ρ} is linear in i
    second_diff = root[2:] - 2 * root[1:-1] + root[:-2]
    torch.testing.assert_close(second_diff, torch.zeros_like(second_diff))
    torch.testing.assert_close(samplers.karras_sigmas(1, 0.01, 80.0),
                               torch.tensor([80.0, 0.0], dtype=torch.float64))
    geo = samplers.karras_sigmas(5, 0.01, 100.0, rho=1e6)[:-1]  # ρ → ∞: geometric spacing
    torch.testing.assert_close(geo.log(), torch.linspace(math.log(100), math.log(0.01), 5,
                                                         dtype=torch.float64), rtol=0, atol=1e-4)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="steps"):
            samplers.karras_sigmas(bad, 0.01, 80.0)


@SCHEDS
def test_snapping_to_timesteps(sched):
    sig = schedule_sigmas(sched)  # (T,), increasing
    ts = timesteps_for_sigmas(sched, sig[[899, 499, 99]] * 1.001)  # near σ_900, σ_500, σ_100
    assert ts.tolist() == [900, 500, 100]
    crowded = timesteps_for_sigmas(sched, torch.full((20,), sig[0].item()))  # all want t = 1
    assert crowded.tolist() == list(range(20, 0, -1))
    every = timesteps_for_sigmas(sched, samplers.karras_sigmas(300, sig[0].item(), 80.0)[:-1],
                                 t_max=300)
    assert every.tolist() == list(range(300, 0, -1))
    ts = edm_timesteps(sched, 18)  # capped at σ_max = 80, ends at t = 1
    assert sig[ts[0] - 1] <= 80 < sig[ts[0]] and ts[-1] == 1
    assert bool((ts[1:] < ts[:-1]).all())


def test_lambda_min_clips_only_the_cosine_tail():
    assert dpm_timesteps(LINEAR, 10)[0] == 1000  # λ_T = −5.06 ≥ −5.1
    assert dpm_timesteps(COSINE, 10)[0] == 996  # t = 997..1000 have λ < −5.1
    assert dpm_timesteps(COSINE, 10, lambda_min=None)[0] == 1000
    for spacing in ("trailing", "logsnr", "linspace", "leading", "karras", "angle", "blend"):
        ts = dpm_timesteps(COSINE, 37, spacing)
        assert len(ts) == 37 and bool((ts[1:] < ts[:-1]).all()) and ts[-1] >= 1


def test_grid_sigmas_are_uniform_in_their_own_variable():
    """"logsnr" is uniform in log σ, "angle" in arctan σ, and "blend" is the weighted mean of
    the two in log σ at each u; all run from σ_max down to σ_min."""
    n, hi, lo = 11, 150.0, 0.01
    lam, ang = grid_sigmas("logsnr", n, hi, lo), grid_sigmas("angle", n, hi, lo)
    for g in (lam, ang, grid_sigmas("blend", n, hi, lo)):
        assert g.shape == (n,) and g.dtype == torch.float64 and bool((g[1:] < g[:-1]).all())
        torch.testing.assert_close(g[[0, -1]], torch.tensor([hi, lo], dtype=torch.float64))
    for values in (lam.log(), ang.atan()):
        torch.testing.assert_close(values.diff(), values.diff()[:1].expand(n - 1))
    for w in (0.0, 0.3, 1.0):
        torch.testing.assert_close(grid_sigmas("blend", n, hi, lo, blend=w).log(),
                                   (1 - w) * lam.log() + w * ang.log())
    assert BLEND == 0.7  # the weight benchmarks/samplers_oracle.py chose (docstring figures)


def test_angle_grid_is_the_cosine_schedules_time_grid():
    """On the cosine schedule √ᾱ_t = cos φ_t with φ_t = arctan σ_t nearly linear in t
    (Nichol & Dhariwal 2021, eq. 17), so "angle" lands within 0.5 % of T of "trailing"
    (measured: 4 steps at most); on the linear schedule it does not."""
    for S in (10, 20):
        ang, trail = dpm_timesteps(COSINE, S, "angle"), dpm_timesteps(COSINE, S, "trailing")
        assert (ang - trail).abs().max() <= 5, (ang, trail)
    far = dpm_timesteps(LINEAR, 10, "angle") - dpm_timesteps(LINEAR, 10, "trailing")
    assert far.abs().max() > 100


def test_blend_moves_evaluations_from_the_low_noise_end():
    """Per step index the blend's timesteps lie between logsnr's and angle's, and fewer of
    them than logsnr's fall in the last tenth of the chain (t < T/10), more than angle's."""
    for sched in (LINEAR, COSINE):
        lam, ang = dpm_timesteps(sched, 10, "logsnr"), dpm_timesteps(sched, 10, "angle")
        mid = dpm_timesteps(sched, 10, "blend")
        lo, hi = torch.minimum(lam, ang), torch.maximum(lam, ang)
        assert bool(((lo <= mid) & (mid <= hi)).all()), (lam, mid, ang)
        low = [int((g < 100).sum()) for g in (lam, mid, ang)]
        assert low[0] > low[2] and low[0] >= low[1] >= low[2], low


# --- identities and convergence ---

@SCHEDS
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_dpm_solver_order1_is_ddim_eta0(sched, spacing):
    """The first-order exponential integrator on x̂_0 is DDIM (Lu et al. 2022b, §4.1)."""
    model, x_T = oracle.ExactDenoiser(MIX, sched), _x_T(500, dtype=torch.float64)
    for steps in (7, 50):
        a = samplers.dpm_solver_pp(model, sched, x_T, steps, order=1, spacing=spacing,
                                   lambda_min=None)
        b = samplers.ddim(model, sched, x_T, steps, spacing=spacing)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_convergence_orders_and_accuracy_per_evaluation():
    """Against a reference solution of the same ODE, doubling the steps from 40 to 80 divides
    the error of DPM-Solver++ order k by about 2^k, and EDM Heun's by about 4 (or more). At 49
    evaluations EDM Heun solves its ODE well over twice as accurately as DDIM does its own."""
    model, x_T = oracle.ExactDenoiser(MIX, LINEAR), _x_T(1000, 1, torch.float64)
    ref = samplers.dpm_solver_pp(model, LINEAR, x_T, 500, order=3, spacing="logsnr")

    def err(x, reference):
        return (x - reference).norm(dim=1).mean().item()

    ratio = {k: err(samplers.dpm_solver_pp(model, LINEAR, x_T, 40, order=k, spacing="logsnr"),
                    ref) /
             err(samplers.dpm_solver_pp(model, LINEAR, x_T, 80, order=k, spacing="logsnr"), ref)
             for k in (1, 2, 3)}  # measured 1.8, 3.6, 7.8
    assert 1.5 < ratio[1] < 2.5 and ratio[2] > 3.0 and ratio[3] > 6.0, ratio
    ref_edm = samplers.edm_heun(model, LINEAR, x_T, 400)  # x_T taken at σ = 80 (the cap)
    e = [err(samplers.edm_heun(model, LINEAR, x_T, S), ref_edm) for S in (20, 40, 25)]
    assert e[0] / e[1] > 3.0, e  # measured 5.3
    assert e[2] < 0.5 * err(samplers.ddim(model, LINEAR, x_T, 49), ref)  # measured 0.014, 0.033


def test_dpm_solver_converges_to_ddim_at_many_steps():
    """2M at 200 steps and DDIM at all 1000 solve the same ODE from the same x_T (linear
    schedule: λ_min clips nothing), and land on the same points."""
    model, x_T = oracle.ExactDenoiser(MIX, LINEAR), _x_T(1000, 2)
    a = samplers.dpm_solver_pp(model, LINEAR, x_T, 200)
    b = samplers.ddim(model, LINEAR, x_T, None)
    assert (a - b).norm(dim=1).mean().item() < 0.005  # measured 0.0012; scale of x_0: 2


@pytest.mark.parametrize("name,kw", [("dpm++", {"order": 2}), ("dpm++", {"order": 3}),
                                     ("edm-heun", {}), ("edm-heun", {"s_churn": 10.0})],
                         ids=["2m", "3m", "edm", "edm-churn"])
def test_recovers_the_mixture(name, kw):
    """At 50 steps each recovers the data: SWD near the two-sample floor, mode weights and the
    per-mode spread right."""
    n = 4000
    x = samplers.SAMPLERS[name](oracle.ExactDenoiser(MIX, COSINE), COSINE, _x_T(n, 3), 50,
                                torch.Generator().manual_seed(4), **kw)
    assert torch.isfinite(x).all()
    floor = metrics.swd_floor(_truth, n, repeats=4)
    assert metrics.swd(x, _truth(n, 99)) < 1.5 * floor
    se = (MIX.weights * (1 - MIX.weights) / n).sqrt()
    assert bool(((metrics.mode_weights(x, MIX.means) - MIX.weights).abs() < 4 * se).all())
    k = MIX.posterior(x).argmax(1)
    spread = ((x.double() - MIX.means[k]).pow(2).sum(1).mean() / 2).sqrt().item()
    assert abs(spread - 0.15) < 0.1 * 0.15, spread


# --- quality per model evaluation ---

@SCHEDS
def test_dpm_solver_beats_ddim_at_10_evaluations(sched):
    """Same 10 evaluations, same x_T (4 × 5000 samples): 2M and 3M on the trailing grid both
    well below DDIM. Measured over x_T seeds 5-9, SWD ÷ DDIM's: linear 0.56-0.65 (2M),
    0.56-0.70 (3M); cosine 0.72-0.81 (2M), 0.76-0.85 (3M). ("blend" is checked in the next
    test; the default, "auto", is "logsnr" at 10 steps.)"""
    n, x_T = 5000, _x_T(20_000, 5)
    ddim = _mean_swd(samplers.ddim(oracle.ExactDenoiser(MIX, sched), sched, x_T, 10), n)
    bound = 0.8 if sched is LINEAR else 0.9
    for order in (2, 3):
        model = Counted(oracle.ExactDenoiser(MIX, sched))
        d = _mean_swd(samplers.dpm_solver_pp(model, sched, x_T, 10, order=order,
                                             spacing="trailing"), n)
        assert model.calls == 10
        assert d < bound * ddim, (order, d, ddim)


@SCHEDS
def test_blend_grid_beats_ddim_and_trailing_on_exact_denoisers(sched):
    """On an exact denoiser (benchmarks/samplers_oracle.py's ring8-2d is this ring) "blend" is
    the better grid: at 10 evaluations the SWD of 2M and of UniPC is well below DDIM's and below
    their own on "trailing". Measured over x_T seeds 5-7, ÷ DDIM: linear 0.46-0.48 (trailing
    0.63-0.68), cosine 0.55-0.60 (trailing 0.77-0.84); "logsnr" 0.52-1.13."""
    n, x_T = 5000, _x_T(20_000, 5)
    ddim = _mean_swd(samplers.ddim(oracle.ExactDenoiser(MIX, sched), sched, x_T, 10), n)
    for fn in (samplers.dpm_solver_pp, samplers.unipc):
        model = Counted(oracle.ExactDenoiser(MIX, sched))
        d = _mean_swd(fn(model, sched, x_T, 10, spacing="blend"), n)
        trailing = _mean_swd(fn(model, sched, x_T, 10, spacing="trailing"), n)
        assert model.calls == 20
        assert d < 0.7 * ddim and d < 0.9 * trailing, (fn.__name__, d, trailing, ddim)


class OffBy:
    """The exact denoiser with a small, smooth error in ε̂, as a trained network has."""

    def __init__(self, model, size: float):
        self.model, self.size = model, size

    def __call__(self, x_t, t, **cond):
        return self.model(x_t, t, **cond) + self.size * torch.sin(3 * x_t)


def test_a_long_first_step_carries_the_networks_error_and_capped_blend_does_not():
    """Why "blend" is not a default although it wins on exact denoisers, and why UniPC's is
    "capped-blend": "blend" leaves t = T with a long step in λ, and x̂_0 = (x_t − σ_t ε̂)/α_t
    multiplies an error of ε̂ there by σ_T/α_T ≈ 157; "capped-blend" keeps the high-noise steps
    short. Distance to the model's own ODE solution (DDIM over all T steps), UniPC at 10
    steps, linear schedule, x_T seeds 3-5: exact ε̂, logsnr 0.090-0.103, blend 0.052-0.057,
    capped-blend 0.055-0.063; ε̂ off by 1 % (0.01 sin 3x), logsnr 0.093-0.112, blend
    0.140-0.161, capped-blend 0.057-0.070 (measured; trained networks:
    benchmarks/results/solver_error_trained*.md)."""
    x_T = _x_T(2000, 3)

    def errors(model):
        ref = samplers.ddim(model, LINEAR, x_T, None)
        return {g: (samplers.unipc(model, LINEAR, x_T, 10, spacing=g) - ref).pow(2).mean().sqrt()
                .item() for g in ("logsnr", "blend", "capped-blend")}

    exact = oracle.ExactDenoiser(MIX, LINEAR)
    e = errors(exact)
    assert e["blend"] < 0.7 * e["logsnr"] and e["capped-blend"] < 0.75 * e["logsnr"], e
    off = OffBy(exact, 0.01)
    o = errors(off)
    assert o["blend"] > 1.2 * o["logsnr"], o
    assert o["capped-blend"] < 0.8 * o["logsnr"] and o["capped-blend"] < 0.6 * o["blend"], o


def test_capped_blend_caps_the_high_noise_steps():
    """"capped-blend" (grid_sigmas): n points from σ_max to σ_min, decreasing; while σ > 1 no
    step is longer in λ than CAP × the logsnr grid's (the first than CAP_FIRST ×), where
    "blend" takes longer ones; below σ = 1, where the cap is off, its steps are "blend"-like:
    some longer than the logsnr grid's."""
    hi, lo = 157.4, 0.0100  # the linear schedule's σ_T and σ_1
    for n in (3, 6, 11, 21, 51):
        g = grid_sigmas("capped-blend", n, hi, lo)
        assert g.shape == (n,) and g.dtype == torch.float64 and bool((g[1:] < g[:-1]).all())
        torch.testing.assert_close(g[[0, -1]], torch.tensor([hi, lo], dtype=torch.float64))
        h, delta = -g.log().diff(), math.log(hi / lo) / (n - 1)  # (n−1,) steps in λ
        cap = torch.full_like(h, dpm_solver.CAP * delta)
        cap[0] = dpm_solver.CAP_FIRST * delta
        high = g[:-1] > 1
        assert bool((h[high] <= cap[high] + 1e-9).all()), (n, h, cap)
        if n >= 6:
            blend = -grid_sigmas("blend", n, hi, lo).log().diff()
            assert blend[0] > 1.5 * delta and h[0] <= delta + 1e-9
            assert bool((h[~high] > 1.05 * delta).any())
        if n >= 11:  # the later high-noise steps reach the cap CAP (not CAP_FIRST)
            assert bool((h[1:][high[1:]] > 0.99 * dpm_solver.CAP * delta).any()), (n, h / delta)
    assert (dpm_solver.CAP, dpm_solver.CAP_FIRST) == (1.5, 1.0)  # the caps of the docstring figures


def test_auto_grids_per_sampler():
    """"auto" is "trailing" below 10 steps; from 10 on "logsnr" for DPM-Solver++ (and its SDE
    variant) and "capped-blend" for UniPC, which the samplers then visit."""
    assert [auto_spacing(s, "unipc") for s in (5, 9, 10, 50)] == ["trailing"] * 2 + [
        "capped-blend"] * 2
    assert [auto_spacing(s, f) for f in ("dpm++", "dpm++sde") for s in (9, 10)] == [
        "trailing", "logsnr"] * 2
    x_T = _x_T(200, 1)
    model = oracle.ExactDenoiser(MIX, COSINE)
    for steps, grid in ((10, "capped-blend"), (6, "trailing")):
        assert torch.equal(samplers.unipc(model, COSINE, x_T, steps),
                           samplers.unipc(model, COSINE, x_T, steps, spacing=grid))
    assert torch.equal(samplers.dpm_solver_pp(model, COSINE, x_T, 10),
                       samplers.dpm_solver_pp(model, COSINE, x_T, 10, spacing="logsnr"))

    def sde(**kw):
        return samplers.dpm_solver_pp_sde(model, COSINE, x_T, 10,
                                          torch.Generator().manual_seed(2), **kw)

    assert torch.equal(sde(), sde(spacing="logsnr"))
    assert not torch.equal(sde(), sde(spacing="capped-blend"))


def test_edm_heun_costs_2n_minus_1():
    """N σ steps cost 2N − 1 evaluations. (EDM's ρ = 7 grid needs ≳ 35 of them on this sharp
    target: at ≤ 10 its few steps span σ ratios of 10-30, where the trapezoid's correction
    overshoots (see ode.py), and it scores far worse than DDIM — benchmarks/samplers_2d.py.)"""
    for N in (1, 5, 18):
        model = Counted(oracle.ExactDenoiser(MIX, COSINE))
        samplers.edm_heun(model, COSINE, _x_T(10), N)
        assert model.calls == 2 * N - 1


def test_lambda_min_tames_a_slightly_wrong_model_on_the_cosine_tail():
    """An ε̂ off by 0.01 at t = T of the cosine schedule gives x̂_0 off by 0.01 σ_T ≈ 200; the
    clip at λ_min = −5.1 (σ ≈ 164 instead of 2·10⁴) keeps the samples usable."""
    exact = oracle.ExactDenoiser(MIX, COSINE)
    off = torch.tensor([0.01, -0.01])

    def model(x, t):
        return exact(x, t) + off

    x_T, truth = _x_T(4000, 7), _truth(4000, 8)
    raw = metrics.swd(samplers.dpm_solver_pp(model, COSINE, x_T, 10, lambda_min=None,
                                             spacing="trailing"), truth)
    clipped = metrics.swd(samplers.dpm_solver_pp(model, COSINE, x_T, 10, spacing="trailing"),
                          truth)
    assert clipped < raw / 5, (clipped, raw)  # measured 0.30 vs 4.1 (logsnr grid: 0.11, 0.38)
    edm_raw = metrics.swd(samplers.edm_heun(model, COSINE, x_T, 18, sigma_max=None), truth)
    edm = metrics.swd(samplers.edm_heun(model, COSINE, x_T, 18), truth)
    assert edm < edm_raw / 5, (edm, edm_raw)  # measured 0.07 vs 2.2


# --- interface ---

def test_contract_learned_variance_and_determinism():
    from difflab.parameterization import LearnedVariance

    exact = oracle.ExactDenoiser(MIX, LINEAR)
    tuple_model = LearnedVariance(lambda x, t: torch.cat([exact(x, t), torch.zeros_like(x)], 1))
    x_T = _x_T(200, 9)
    for fn in (samplers.dpm_solver_pp, samplers.edm_heun):
        params = list(inspect.signature(fn).parameters)
        assert params[:5] == ["model", "schedule", "x_T", "steps", "generator"]
        a = fn(exact, LINEAR, x_T, 8, torch.Generator().manual_seed(0))
        b = fn(tuple_model, LINEAR, x_T, 8, torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b)  # (ε̂, v) → ε̂; no noise drawn when deterministic
    churn = [samplers.edm_heun(exact, LINEAR, x_T, 8, torch.Generator().manual_seed(s),
                               s_churn=5.0) for s in (0, 0, 1)]
    assert torch.equal(churn[0], churn[1]) and not torch.allclose(churn[0], churn[2])
    with pytest.raises(ValueError, match="order"):
        samplers.dpm_solver_pp(exact, LINEAR, x_T, 8, order=4)
    with pytest.raises(ValueError, match="spacing"):
        samplers.edm_heun(exact, LINEAR, x_T, 8, spacing="logsnr")
    # more steps than timesteps below the cap / clip: every one of those
    assert edm_timesteps(LINEAR, 950).tolist() == list(range(930, 0, -1))  # σ_930 ≤ 80
    assert dpm_timesteps(COSINE, 1000).tolist() == list(range(996, 0, -1))
