"""Every sampler, driven by the exact mixture denoiser, recovers the mixture."""

from __future__ import annotations

import math

import pytest
import torch

from difflab import metrics, oracle, samplers, schedules

N = 3000
MIX = oracle.ring_mixture(8, radius=2.0, std=0.15, weights=torch.arange(1.0, 9.0))
LINEAR, COSINE = schedules.linear(1000), schedules.cosine(1000)


def _truth(n: int, seed: int) -> torch.Tensor:
    return MIX.sample(n, torch.Generator().manual_seed(10_000 + seed))


FLOOR = metrics.swd_floor(_truth, N, repeats=4)
# the samplers of ε-models ("consistency" takes consistency models: tests/test_cli_distill.py)
EPS_SAMPLERS = [name for name in samplers.SAMPLERS if name != "consistency"]


def _draw(name, sched, seed=0, n=N, **kw):
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    model = oracle.ExactDenoiser(MIX, sched)
    return samplers.SAMPLERS[name](model, sched, x_T, generator=torch.Generator()
                                   .manual_seed(seed + 1), **kw)


def _check_recovers(x, swd_factor, weight_sigmas=4.0, spread_tol=0.1):
    assert torch.isfinite(x).all()
    d = metrics.swd(x, _truth(N, 99))
    assert d < swd_factor * FLOOR, f"SWD {d:.4f} vs floor {FLOOR:.4f}"
    w = metrics.mode_weights(x, MIX.means)
    se = (MIX.weights * (1 - MIX.weights) / N).sqrt()
    assert bool(((w - MIX.weights).abs() < weight_sigmas * se + 1e-3).all()), (w, MIX.weights)
    k = MIX.posterior(x).argmax(1)
    spread = ((x.double() - MIX.means[k]).pow(2).sum(1).mean() / 2).sqrt().item()
    assert abs(spread - 0.15) < spread_tol * 0.15, f"per-mode std {spread:.4f} vs 0.15"


def test_ddpm_1000_steps():
    _check_recovers(_draw("ddpm", LINEAR, steps=None), swd_factor=1.5)


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_strided_ddpm_100_steps(variance):
    x = _draw("ddpm", COSINE, steps=100, variance=variance)
    # strided ancestral sampling with few steps is known to be slightly over-sharp (β̃) or
    # over-noisy (β): Nichol & Dhariwal 2021 §4; allow 20 % on the per-mode spread
    _check_recovers(x, swd_factor=2.0, spread_tol=0.2)


@pytest.mark.parametrize("sched", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_ddim_50_steps(sched):
    _check_recovers(_draw("ddim", sched, steps=50), swd_factor=1.6)


@pytest.mark.parametrize("sched", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_heun_50_steps(sched):
    _check_recovers(_draw("heun", sched, steps=50), swd_factor=1.5)


def test_langevin():
    # annealed Langevin gets mode weights only approximately (Song & Ermon 2019, §3.3):
    # allow 0.03 absolute on each weight, and check the spread and SWD as for the others
    x = _draw("langevin", COSINE, steps=50, n_each=10)
    w = metrics.mode_weights(x, MIX.means)
    assert bool(((w - MIX.weights).abs() < 0.03).all()), (w, MIX.weights)
    _check_recovers(x, swd_factor=3.0, weight_sigmas=1e9, spread_tol=0.15)


def test_euler_is_ddim_eta0():
    a = _draw("euler", LINEAR, steps=20)
    b = _draw("ddim", LINEAR, steps=20, eta=0.0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_heun_is_second_order_euler_first():
    """Against a reference solution (200 Heun steps) of the same ODE, doubling the steps from
    20 to 40 divides Euler's error by about 2 and Heun's by about 4."""
    ref = _draw("heun", LINEAR, steps=200, n=1000)
    err = {(name, S): (_draw(name, LINEAR, steps=S, n=1000) - ref).norm(dim=1).mean().item()
           for name in ("euler", "heun") for S in (20, 40)}
    assert 1.6 < err["euler", 20] / err["euler", 40] < 2.5
    assert err["heun", 20] / err["heun", 40] > 3.0
    assert err["heun", 40] < 0.5 * err["euler", 40]


@pytest.mark.parametrize("steps", [None, 50, 7])
def test_ddim_eta1_is_ddpm_beta_tilde_on_the_same_steps(steps):
    """Same Gaussian transition, same noise stream → the same numbers (float64 throughout)."""
    model = oracle.ExactDenoiser(MIX, COSINE)
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = samplers.ddim(model, COSINE, x_T, steps, torch.Generator().manual_seed(4), eta=1.0)
    b = samplers.ddpm(model, COSINE, x_T, steps, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_ddim_eta1_matches_ddpm_in_distribution():
    """…and with independent noise the two laws agree: SWD at the two-sample floor."""
    a = _draw("ddim", COSINE, steps=50, eta=1.0, seed=5)
    b = _draw("ddpm", COSINE, steps=50, seed=7)
    assert metrics.swd(a, b) < 1.6 * FLOOR


def test_ddim_eta0_is_deterministic_and_eta_adds_noise():
    a = _draw("ddim", LINEAR, steps=20, seed=0)
    model = oracle.ExactDenoiser(MIX, LINEAR)
    x_T = torch.randn(N, 2, generator=torch.Generator().manual_seed(0))
    b = samplers.ddim(model, LINEAR, x_T, steps=20, generator=torch.Generator().manual_seed(42))
    assert torch.equal(a, b)
    c = samplers.ddim(model, LINEAR, x_T, steps=20, eta=0.5,
                      generator=torch.Generator().manual_seed(42))
    assert not torch.allclose(a, c)


def test_ddim_inversion_round_trip():
    """x_0 → DDIM inversion → DDIM sampling returns x_0 (Gaussian data, exact denoiser)."""
    dist = oracle.Gaussian(torch.tensor([0.5, -0.3]), torch.tensor([[0.6, 0.2], [0.2, 0.4]]))
    model = oracle.ExactDenoiser(dist, COSINE)
    x0 = dist.sample(500, torch.Generator().manual_seed(0))
    errs = []
    for steps in (20, 200):
        z = samplers.ddim_invert(model, COSINE, x0, steps=steps)
        assert abs(z.std().item() - 1.0) < 0.1  # the latent looks like N(0, I)
        back = samplers.ddim(model, COSINE, z, steps=steps)
        errs.append((back - x0).norm(dim=1).mean().item())
    assert errs[1] < 0.02 * x0.norm(dim=1).mean().item()
    assert errs[1] < errs[0]  # the error shrinks with more steps


def test_slerp():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(5, 2, 4, generator=g), torch.randn(5, 2, 4, generator=g)
    torch.testing.assert_close(samplers.slerp(z0, z1, 0.0), z0)
    torch.testing.assert_close(samplers.slerp(z0, z1, 1.0), z1)
    f0, f1 = z0.flatten(1).double(), z1.flatten(1).double()
    u0, u1 = f0 / f0.norm(dim=1, keepdim=True), f1 / f1.norm(dim=1, keepdim=True)

    def ang(a, b):
        return torch.acos((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)))

    for alpha in (0.3, 0.5):  # on the unit sphere: constant speed along the great circle
        m = samplers.slerp(u0, u1, alpha)
        torch.testing.assert_close(m.norm(dim=1), torch.ones(5, dtype=torch.float64))
        torch.testing.assert_close(ang(u0, m), alpha * ang(u0, u1))
        torch.testing.assert_close(ang(m, u1), (1 - alpha) * ang(u0, u1))


def test_callback_and_progress():
    seen = []
    model = oracle.ExactDenoiser(MIX, LINEAR)
    x_T = torch.randn(10, 2)
    for name in EPS_SAMPLERS:
        seen.clear()
        samplers.SAMPLERS[name](model, LINEAR, x_T, steps=5, progress=True,
                                callback=lambda i, t, x: seen.append((i, t, x.shape)))
        assert [s[0] for s in seen] == list(range(len(seen))) and len(seen) >= 1
        assert all(s[2] == (10, 2) for s in seen)
        assert [s[1] for s in seen] == sorted((s[1] for s in seen), reverse=True)


def test_cond_reaches_the_model():
    got = {}

    def model(x, t, label=None):
        got["label"] = label
        return torch.zeros_like(x)

    for name in EPS_SAMPLERS:
        got.clear()
        samplers.SAMPLERS[name](model, LINEAR, torch.randn(3, 2), steps=2, cond={"label": 7})
        assert got["label"] == 7, name


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_bad_steps_and_eta_raise(name):
    model = oracle.ExactDenoiser(MIX, LINEAR)
    for steps in (0, 1001, -3):
        with pytest.raises(ValueError, match="steps"):
            samplers.SAMPLERS[name](model, LINEAR, torch.randn(2, 2), steps=steps)
    with pytest.raises(ValueError, match="eta"):
        samplers.ddim(model, LINEAR, torch.randn(2, 2), steps=5, eta=-0.1)


def test_sampler_contract_signature():
    import inspect

    for name, fn in samplers.SAMPLERS.items():
        params = list(inspect.signature(fn).parameters)
        assert params[:5] == ["model", "schedule", "x_T", "steps", "generator"], name
    assert math.isclose(FLOOR, FLOOR)  # the floor is a finite number


@pytest.mark.parametrize("v", [0.0, 1.0, 0.3])
def test_learned_variance_eq23(v):
    """A model returning (ε̂, v): v = 0 gives σ² = β̃_t, v = 1 gives β_t, between them the
    geometric interpolation of eq (23); measured on one update from x_T = 0 (mean 0)."""
    from difflab.parameterization import LearnedVariance

    sched, t = COSINE, 500
    net = lambda x, tt: torch.cat([torch.zeros_like(x), torch.full_like(x, 2 * v - 1)], 1)  # noqa: E731
    seen = {}
    n = 40_000
    samplers.ddpm(LearnedVariance(net), sched, torch.zeros(n, 2), steps=[t, t - 1],
                  generator=torch.Generator().manual_seed(0),
                  callback=lambda i, tt, x: seen.setdefault(i, x.clone()))
    beta, beta_tilde = sched.betas[t - 1].item(), sched.beta_tildes[t - 1].item()
    expected = math.exp(v * math.log(beta) + (1 - v) * math.log(beta_tilde))
    var = seen[0].var().item()
    assert abs(var / expected - 1) < 5 * math.sqrt(2 / (2 * n))
    with pytest.raises(ValueError, match="learned"):
        samplers.ddpm(lambda x, tt: x, sched, torch.zeros(2, 2), steps=2, variance="learned")
