"""UniPC (Zhao et al. 2023) driven by exact denoisers: its identities (order 1 without the
corrector is DDIM; UniP-2 with B(h) = e^h − 1 is DPM-Solver++ 2M), its order of convergence
against the closed-form probability-flow ODE of a Gaussian, and recovery of the mixtures."""

from __future__ import annotations

import pytest
import torch

from difflab import metrics, oracle, samplers, schedules
from difflab.parameterization import x0_from_eps
from difflab.samplers.edm import timesteps_for_sigmas
from difflab.samplers.unipc import unipc, unipc_coefficients

MIX = oracle.ring_mixture(8, radius=2.0, std=0.15, weights=torch.arange(1.0, 9.0))
LINEAR, COSINE = schedules.linear(1000), schedules.cosine(1000)
SCHEDS = pytest.mark.parametrize("sched", [LINEAR, COSINE], ids=["linear", "cosine"])


def _x_T(n, seed=0, d=2):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@SCHEDS
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_order1_without_corrector_is_ddim(sched, variant):
    model, x_T = oracle.ExactDenoiser(MIX, sched), _x_T(300)
    for steps in (7, 50):
        a = unipc(model, sched, x_T, steps, order=1, variant=variant, corrector=False,
                  spacing="trailing", lambda_min=None)
        b = samplers.ddim(model, sched, x_T, steps, spacing="trailing")
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@SCHEDS
def test_unip2_bh2_is_dpm_solver_2m(sched):
    """With B(h) = e^h − 1 and a_1 = 1/2, UniP-2 is the 2M update of DPM-Solver++ (Lu et al.
    2022b, Alg. 2); UniPC's gain comes from the corrector."""
    model, x_T = oracle.ExactDenoiser(MIX, sched), _x_T(300, 1)
    a = unipc(model, sched, x_T, 12, order=2, variant="bh2", corrector=False, spacing="trailing")
    b = samplers.dpm_solver_pp(model, sched, x_T, 12, order=2, spacing="trailing")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_coefficients_first_order_terms():
    """b_1 → 1/2 as h → 0 for both B(h) (φ_1(h)/B(h) = 1/2 + O(h)), the a_1 = 1/2 of UniC-1."""
    for variant in ("bh1", "bh2"):
        b, h_phi_1, _ = unipc_coefficients(1e-4, [1.0], variant)
        assert abs(b[0] - 0.5) < 1e-3 and abs(h_phi_1 + 1e-4) < 1e-8


# --- convergence against the exact solution ---------------------------------------------
GAUSS = oracle.Gaussian(torch.tensor([1.0, -0.5, 0.3]),
                        torch.tensor([[0.04, 0.01, 0.0], [0.01, 0.5, 0.2], [0.0, 0.2, 2.0]]))
T_END = 20  # the ODE is solved from T to t = 20, then the (shared) jump x_0 = x̂_0(x_20)


def _grid(n):
    """n timesteps uniform in λ from T to T_END (snapped)."""
    ab = LINEAR.alpha_bars
    lam = 0.5 * (ab.log() - (-ab).log1p())
    grid = torch.linspace(lam[-1].item(), lam[T_END - 1].item(), n, dtype=torch.float64)
    return timesteps_for_sigmas(LINEAR, (-grid).exp(), LINEAR.T).tolist()


def _exact(model, x_T):
    """The probability-flow ODE of N(μ, Σ) in closed form: in x̃ = x/√ᾱ and σ² = (1−ᾱ)/ᾱ each
    eigen-direction of Σ (eigenvalue λ) scales as √(λ + σ²); then x̂_0 at T_END."""
    ab_T, ab_e = LINEAR.alpha_bars[-1], LINEAR.alpha_bars[T_END - 1]
    s_T, s_e = (1 - ab_T) / ab_T, (1 - ab_e) / ab_e
    lam, U = torch.linalg.eigh(GAUSS.cov)
    y = (x_T / ab_T.sqrt() - GAUSS.mean) @ U * ((lam + s_e) / (lam + s_T)).sqrt()
    x_e = (GAUSS.mean + y @ U.T) * ab_e.sqrt()
    return x0_from_eps(x_e, model(x_e, torch.full((x_T.shape[0],), T_END)), ab_e)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_convergence_order_per_doubling(variant):
    """UniPC-p (corrector on) converges with order p + 1: doubling the steps from 20 to 40 to
    80 divides the error by about 2^{p+1}; without the corrector UniP-p has order p. (p = 3:
    the last update before the jump to x_0 is a second-order predictor, which caps the
    measured ratio near 12-13 instead of 16.) Measured (bh1 / bh2): p=1 4.8, 4.4 / 4.1, 4.1;
    p=2 9.4, 8.8 / 8.2, 8.3; p=3 15.5, 13.4 / 15.6, 12.4; UniP-1 alone 2.0."""
    model, x_T = oracle.ExactDenoiser(GAUSS, LINEAR), _x_T(500, 2, 3)
    ref = _exact(model, x_T)

    def ratios(**kw):
        e = [(unipc(model, LINEAR, x_T, _grid(n), variant=variant, **kw) - ref).norm(dim=1)
             .mean().item() for n in (20, 40, 80)]
        return e[0] / e[1], e[1] / e[2]

    lo = {1: 3.5, 2: 7.0, 3: 11.0}
    for p in (1, 2, 3):
        r = ratios(order=p)
        assert min(r) > lo[p], (p, r)
    r1 = ratios(order=1, corrector=False)
    assert all(1.8 < x < 2.2 for x in r1), r1


# --- sample quality -----------------------------------------------------------------------
def _truth(n, seed):
    return MIX.sample(n, torch.Generator().manual_seed(10_000 + seed))


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [2, 3])
def test_recovers_the_mixture(variant, order):
    """At 20 steps (cosine schedule) UniPC recovers the ring: SWD near the two-sample floor,
    mode weights and per-mode spread right."""
    n = 4000
    x = samplers.SAMPLERS["unipc"](oracle.ExactDenoiser(MIX, COSINE), COSINE,
                                   _x_T(n, 3).float(), 20, order=order, variant=variant)
    assert torch.isfinite(x).all()
    floor = metrics.swd_floor(_truth, n, repeats=4)
    assert metrics.swd(x, _truth(n, 99)) < 1.5 * floor
    se = (MIX.weights * (1 - MIX.weights) / n).sqrt()
    assert bool(((metrics.mode_weights(x, MIX.means) - MIX.weights).abs() < 4 * se).all())
    k = MIX.posterior(x).argmax(1)
    spread = ((x.double() - MIX.means[k]).pow(2).sum(1).mean() / 2).sqrt().item()
    assert abs(spread - 0.15) < 0.1 * 0.15, spread


def test_recovers_an_anisotropic_16d_mixture():
    """A full-covariance 16-D mixture (oracle.FullCovMixture) at 20 steps: mode weights and
    per-mode covariances as the truth's."""
    g = torch.Generator().manual_seed(0)
    K, D = 3, 16
    means = 4 * torch.randn(K, D, generator=g, dtype=torch.float64)
    A = torch.randn(K, D, D, generator=g, dtype=torch.float64) / D ** 0.5
    covs = 0.05 * (A @ A.transpose(1, 2) + 0.1 * torch.eye(D, dtype=torch.float64))
    mix = oracle.FullCovMixture(means, covs, torch.tensor([0.6, 0.3, 0.1]))
    n = 6000
    x = unipc(oracle.ExactDenoiser(mix, LINEAR), LINEAR, _x_T(n, 4, D), 20)
    truth = mix.sample(n, torch.Generator().manual_seed(5)).double()

    def stats(y):
        k = mix.posterior(y).argmax(1)
        w = torch.bincount(k, minlength=K).double() / n
        return w, [((torch.cov(y[k == j].T) - covs[j]).norm() / covs[j].norm()).item()
                   for j in range(K)]

    w, rel = stats(x)
    se = (mix.weights * (1 - mix.weights) / n).sqrt()
    assert bool(((w - mix.weights).abs() < 4 * se).all()), w
    rel_truth = stats(truth)[1]  # the sampling noise of a covariance from 600-3600 points
    assert all(r < 1.5 * rt + 0.03 for r, rt in zip(rel, rel_truth, strict=True)), (rel,
                                                                                     rel_truth)


def test_contract_and_errors():
    exact = oracle.ExactDenoiser(MIX, LINEAR)
    assert "unipc" in samplers.SAMPLERS
    seen = []
    x = unipc(exact, LINEAR, _x_T(10), 6, callback=lambda i, t, x: seen.append((i, t)))
    assert x.shape == (10, 2) and [s[0] for s in seen] == list(range(6))
    with pytest.raises(ValueError, match="order"):
        unipc(exact, LINEAR, _x_T(4), 8, order=4)
    with pytest.raises(ValueError, match="variant"):
        unipc(exact, LINEAR, _x_T(4), 8, variant="bh3")
