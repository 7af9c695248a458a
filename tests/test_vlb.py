"""The variational bound (Weng eq. 13-16, 18, 23) against closed forms.

For Gaussian data and the exact (linear) denoiser every term of the bound is a quadratic in
(x_0, ε), so its expectation is computed exactly by averaging over sigma points (a point set
whose mean and covariance equal the Gaussian's): the tests below get E[L_vlb] to float precision
from the library's own ``vlb_terms`` and compare it with the closed-form NLL.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from difflab import losses, oracle, schedules, vlb
from difflab.likelihood import gaussian_nll_bpd

MU = torch.tensor([0.1, -0.2, 0.0, 0.2], dtype=torch.float64)
S2 = torch.tensor([0.3, 0.4, 0.5, 0.6], dtype=torch.float64) ** 2  # data scale ≈ 0.5
DIST = oracle.Gaussian(MU, torch.diag(S2))
D = 4


def _linear(T):
    """The linear schedule with Ho et al.'s ᾱ curve at any T (endpoints scaled by 1000/T)."""
    return schedules.linear(T, 0.1 / T, 20.0 / T)


def _sigma_points():
    """(x0, ε), 4D points with exactly the mean and covariance of x0 ~ DIST, ε ~ N(0, I)."""
    n = 2 * D
    z = torch.cat([torch.eye(n), -torch.eye(n)]).double() * math.sqrt(n)  # (2n, n)
    return MU + S2.sqrt() * z[:, :D], z[:, D:]


def _true_reverse_var(sched, t):
    """Var(x_{t−1} | x_t) per dimension for DIST: the exact reverse kernel is Gaussian. (B, D)"""
    ab_prev = sched.alpha_bar_at(t - 1)[:, None]
    a = ab_prev * S2 + 1 - ab_prev  # Var(x_{t−1})
    b = sched.betas[t - 1, None]
    return a * b / (b + (1 - b) * a)


class ExactReverse:
    """Exact ε and the exact reverse variance through eq. (23): p_θ(x_{t−1}|x_t) = q(x_{t−1}|x_t).
    (A candidate for ``oracle``: the Gaussian's reverse kernel is exactly Gaussian.)"""

    def __init__(self, sched):
        self.den, self.sched = oracle.ExactDenoiser(DIST, sched), sched
        bt = sched.beta_tildes.clone()
        bt[0] = bt[1]
        self.lo, self.hi = bt.log(), sched.betas.log()

    def __call__(self, x_t, t):
        lo, hi = self.lo[t - 1, None], self.hi[t - 1, None]
        v = (_true_reverse_var(self.sched, t).log() - lo) / (hi - lo)  # (B, D), in [0, 1]
        return self.den(x_t, t), v.to(x_t.dtype)


def _expected_vlb(model, sched, variance=None):
    """E[L_vlb] in nats/dim, exact for a linear denoiser (sigma points, every t)."""
    x0, eps = _sigma_points()
    P, T = x0.shape[0], sched.T
    t = torch.arange(1, T + 1).repeat_interleave(P)
    terms = vlb.vlb_terms(model, sched, x0.repeat(T, 1), t, eps.repeat(T, 1), levels=None,
                          variance=variance)  # (T·P,)
    return (terms.sum().item() / P + vlb.prior_kl(sched, x0).mean().item()) / D


def _f64(v):
    return torch.tensor(v, dtype=torch.float64)


NLL = (gaussian_nll_bpd(DIST, _sigma_points()[0]) * math.log(2)).mean().item()  # nats/dim, exact


# --- Gaussian pieces ---------------------------------------------------------------------


def test_normal_kl_zero_for_identical_and_matches_monte_carlo():
    m, lv = torch.tensor([0.3, -1.0]), torch.tensor([-0.7, 1.2])
    assert torch.equal(vlb.normal_kl(m, lv, m, lv), torch.zeros(2))
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.2, math.log(2.0)
    x = m1 + math.exp(lv1 / 2) * torch.randn(200_000, generator=torch.Generator().manual_seed(0),
                                              dtype=torch.float64)
    t1, t2 = torch.tensor(m1), torch.tensor(lv1)
    lr = (vlb.gaussian_log_likelihood(x, t1, t2)
          - vlb.gaussian_log_likelihood(x, torch.tensor(m2), torch.tensor(lv2)))
    kl = vlb.normal_kl(m1, lv1, m2, lv2).item()
    assert abs(lr.mean().item() - kl) < 5 * lr.std().item() / lr.numel() ** 0.5
    assert kl > 0


@pytest.mark.parametrize("levels", [256, 17])
def test_discretized_decoder_sums_to_one_over_all_levels(levels):
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)  # (K,)
    mean = torch.tensor([-1.3, -0.2, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64)[:, None, None]
    log_scale = torch.tensor([-9.0, -4.0, -1.0, 0.0, 1.5], dtype=torch.float64)[None, :, None]
    logp = vlb.discretized_gaussian_log_likelihood(grid, mean, log_scale, levels)  # (6, 5, K)
    assert torch.isfinite(logp).all()
    total = logp.exp().sum(-1)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-12, rtol=0)


def test_discretized_decoder_is_stable_in_the_tails():
    """Bins 50σ right of the mean cancel in Φ(b) − Φ(a); the mirrored path and mpmath agree."""
    mpmath = pytest.importorskip("mpmath")
    mean, ls = _f64(0.0), _f64(math.log(0.01))
    x = torch.tensor([0.5, -0.5], dtype=torch.float64)
    lp = vlb.discretized_gaussian_log_likelihood(x, mean, ls, 256)
    assert torch.isfinite(lp).all() and abs(lp[0].item() - lp[1].item()) < 1e-9 * abs(lp[0])
    mpmath.mp.dps = 50
    s = mpmath.exp(mpmath.mpf(math.log(0.01)))
    a, b = (mpmath.mpf(0.5) - mpmath.mpf(1) / 255) / s, (mpmath.mpf(0.5) + mpmath.mpf(1) / 255) / s
    ref = float(mpmath.log(mpmath.ncdf(-a) - mpmath.ncdf(-b)))
    assert abs(lp[0].item() - ref) < 1e-9 * abs(ref)
    edge = vlb.discretized_gaussian_log_likelihood(torch.tensor([1.0, -1.0]).double(),
                                                   torch.tensor([-1.0, 1.0]).double(),
                                                   torch.tensor(-12.0).double(), 256)
    assert torch.isfinite(edge).all() and (edge < -1e6).all()


def test_discretized_decoder_approaches_the_density_for_fine_bins():
    x = torch.linspace(-0.6, 0.6, 7, dtype=torch.float64)
    levels = 2049  # x lies on the grid: 2k/2048 − 1
    lp = vlb.discretized_gaussian_log_likelihood(x, _f64(0.1), _f64(math.log(0.3)), levels)
    dens = vlb.gaussian_log_likelihood(x, _f64(0.1), _f64(2 * math.log(0.3)))
    assert torch.allclose(lp, dens + math.log(2 / (levels - 1)), atol=1e-5)


@pytest.mark.parametrize("sched", [schedules.linear(1000), schedules.cosine(1000)],
                         ids=["linear", "cosine"])
def test_prior_term_vanishes_for_data_in_range(sched):
    x0 = torch.linspace(-1, 1, 33).reshape(11, 3).double()
    lt = vlb.prior_kl(sched, x0) / (3 * math.log(2))  # bits/dim
    assert (lt >= 0).all() and lt.max() < 1e-4


# --- p_θ(x_{t−1} | x_t): eq. (17), (23) ---------------------------------------------------


def test_eq23_endpoints_and_eq17_mean_through_p_mean_variance():
    sched = schedules.cosine(50)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(6, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 3, 17, 49, 50])
    bt = sched.beta_tildes[t - 1].clone()
    bt[0] = sched.beta_tildes[1]  # t = 1: log β̃_2 (clipped)
    for v, want in [(0.0, bt), (1.0, sched.betas[t - 1])]:
        model = lambda x, tt, v=v: (eps, torch.full_like(x, v))  # noqa: E731
        mean, log_var = vlb.p_mean_variance(model, sched, x_t, t)
        assert torch.allclose(log_var, want.log()[:, None].expand(6, 3), atol=1e-12, rtol=0)
        assert torch.allclose(mean, sched.q_posterior_eps(x_t, eps, t), atol=1e-12, rtol=0)
    model = lambda x, tt: (eps, torch.full_like(x, 0.5))  # noqa: E731
    geo = (0.5 * (bt.log() + sched.betas[t - 1].log()))[:, None].expand(6, 3)
    assert torch.allclose(vlb.p_mean_variance(model, sched, x_t, t)[1], geo, atol=1e-12)
    plain = lambda x, tt: eps  # noqa: E731
    for variance, want in [("beta_tilde", bt), ("beta", sched.betas[t - 1])]:
        lv = vlb.p_mean_variance(plain, sched, x_t, t, variance=variance)[1]
        assert torch.allclose(lv.expand(6, 3), want.log()[:, None].expand(6, 3))
    with pytest.raises(ValueError):
        vlb.p_mean_variance(plain, sched, x_t, t, variance="learned")


def test_kl_term_is_eq18_for_fixed_variance():
    """L_{t−1} = (1−α_t)² / (2 α_t (1−ᾱ_t) σ_t²) ‖ε − ε_θ(x_t, t)‖² when Σ_θ = σ_t² I = β̃_t I."""
    sched = schedules.linear(200, 0.02 / 2, 4.0 / 200)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 3, generator=g, dtype=torch.float64) * 0.5
    noise = torch.randn(8, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([2, 3, 10, 50, 100, 150, 199, 200])
    model = lambda x, tt: torch.tanh(x) + 0.1 * tt[:, None] / 200  # noqa: E731
    got = vlb.vlb_terms(model, sched, x0, t, noise, variance="beta_tilde")
    b, ab, bt = sched.betas[t - 1], sched.alpha_bars[t - 1], sched.beta_tildes[t - 1]
    eps_hat = model(sched.q_sample(x0, t, noise), t)
    want = b**2 / (2 * (1 - b) * (1 - ab) * bt) * (noise - eps_hat).pow(2).sum(1)
    assert torch.allclose(got, want, rtol=1e-9, atol=0)


# --- the bound against the closed-form NLL ------------------------------------------------


def test_bound_is_tight_with_the_exact_reverse_kernel():
    """With the true mean and variance (eq. 23), L_vlb = NLL + KL(q(x_T) ‖ N(0, I)) exactly."""
    sched = _linear(300)
    got = _expected_vlb(ExactReverse(sched), sched)
    abT = sched.alpha_bars[-1]
    var = abT * S2 + 1 - abT
    kl_T = (0.5 * (var + abT * MU**2 - 1 - var.log())).mean().item()
    assert abs(got - (NLL + kl_T)) < 1e-9


def test_bound_with_exact_denoiser_upper_bounds_nll_and_tightens_with_T():
    """Fixed Σ = β_t (the right choice for smooth data): E[L_vlb] ≥ NLL, within 1% at T = 1000,
    and the gap shrinks with T. (Σ = β̃_t stays ≈ 80% above: the first steps' KLs don't vanish.)"""
    gaps = []
    for T in (100, 1000, 4000):
        sched = _linear(T)
        gaps.append(_expected_vlb(oracle.ExactDenoiser(DIST, sched), sched, "beta") - NLL)
    assert all(g > 0 for g in gaps) and gaps[0] > gaps[1] > gaps[2]
    assert gaps[1] < 0.01 * NLL and gaps[2] < 0.002 * NLL
    sched = _linear(1000)
    small = _expected_vlb(oracle.ExactDenoiser(DIST, sched), sched, "beta_tilde")
    assert small > NLL + 0.5 * NLL


def test_vlb_bpd_monte_carlo_matches_the_exact_expectation():
    sched = _linear(100)
    model = oracle.ExactDenoiser(DIST, sched)
    g = torch.Generator().manual_seed(0)  # seeds 0-5 put the mean within ±3 se
    x0 = DIST.sample(1000, g).double()
    bpd = vlb.vlb_bpd(model, sched, x0, levels=None, batch_t=30, variance="beta", generator=g)
    nats = bpd * math.log(2)
    exact = _expected_vlb(model, sched, "beta")
    assert abs(nats.mean().item() - exact) < 4 * nats.std().item() / 1000**0.5
    # the columns are in t order: L_0 (the decoder) is first, L_{T−1} last
    terms = vlb.vlb_all_terms(model, sched, x0[:300], None, batch_t=40, variance="beta",
                              generator=g)  # (300, T)
    xs, eps = _sigma_points()
    for t in (1, sched.T):
        tt = torch.full((xs.shape[0],), t)
        want = vlb.vlb_terms(model, sched, xs, tt, eps, None, variance="beta").mean().item()
        col = terms[:, t - 1]
        assert abs(col.mean().item() - want) < 5 * col.std().item() / 300**0.5 + 1e-12


def test_discrete_bound_is_at_least_the_discrete_entropy():
    """Data quantised to K = 17 levels: L_vlb (discretised L_0) ≥ H(quantised data) in bits/dim."""
    sched = _linear(100)
    levels, g = 17, torch.Generator().manual_seed(3)
    edges = torch.linspace(-1, 1, levels).double()[:-1] + 1 / (levels - 1)  # (K−1,) bin edges
    cdf = torch.special.ndtr((edges[None] - MU[:, None]) / S2.sqrt()[:, None])  # (D, K−1)
    p = torch.diff(cdf, prepend=torch.zeros(D, 1), append=torch.ones(D, 1).double())  # (D, K)
    h = -(p * p.log()).sum().item() / (D * math.log(2))
    x0 = DIST.sample(1000, g).double()
    x0 = ((x0.clamp(-1, 1) + 1) * (levels - 1) / 2).round() * 2 / (levels - 1) - 1
    bpd = vlb.vlb_bpd(oracle.ExactDenoiser(DIST, sched), sched, x0, levels, generator=g)
    assert torch.isfinite(bpd).all()
    assert bpd.mean().item() > h - 4 * bpd.std().item() / 1000**0.5


# --- L_hybrid and importance sampling ----------------------------------------------------


class _TwoHeads(nn.Module):
    """ε-head and v-head with separate parameters (a minimal learned-variance model)."""

    def __init__(self):
        super().__init__()
        self.eps_head = nn.Linear(3, 2).double()
        self.v_head = nn.Linear(3, 2).double()

    def forward(self, x_t, t):
        h = torch.cat([x_t, t[:, None].double() / 100], 1)  # (B, 3)
        return self.eps_head(h), torch.sigmoid(self.v_head(h))


def test_l_hybrid_vlb_part_sends_no_gradient_to_mu():
    torch.manual_seed(0)
    sched, net = schedules.cosine(100), _TwoHeads()
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(64, 2, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.randint(1, 101, (64,), generator=g)
    noise = torch.randn(64, 2, generator=g, dtype=torch.float64)
    loss = vlb.l_hybrid(net, sched, x0, t=t, noise=noise, levels=None)
    loss.backward()
    hybrid_eps = [p.grad.clone() for p in net.eps_head.parameters()]
    assert all(p.grad.abs().sum() > 0 for p in net.v_head.parameters())  # the VLB trains Σ
    net.zero_grad()
    simple = losses.l_simple(lambda x, tt: net(x, tt)[0], sched, x0, t=t, noise=noise)
    simple.backward()
    for a, p in zip(hybrid_eps, net.eps_head.parameters(), strict=True):  # a leak would be ~λ
        assert torch.allclose(a, p.grad, rtol=1e-12, atol=0)
    # without the stop-gradient the VLB term would move the ε-head: the check is not vacuous
    net.zero_grad()
    x_t = sched.q_sample(x0, t, noise)
    eps, v = net(x_t, t)
    mean, lv = vlb.p_from_eps(sched, x_t, t, eps, v)
    vlb.terms_from_p(sched, x0, x_t, t, mean, lv, None).mean().backward()
    assert net.eps_head.weight.grad.abs().sum() > 0


def test_importance_sampler_history_and_probabilities():
    T = 5
    s = vlb.ImportanceSampler(T, history=10, uniform_prob=0.0)
    vals = torch.arange(1.0, T + 1).double()
    for t in range(1, T + 1):
        s.update(torch.full((9 if t == 3 else 15,), t), torch.full((9 if t == 3 else 15,), 99.0))
    assert not s.warm and torch.allclose(s.probs(), torch.full((T,), 0.2).double())
    for t in range(1, T + 1):  # the last 10 values per t are these
        s.update(torch.full((10,), t), vals[t - 1].expand(10))
    assert s.warm
    rms = vals  # √E[L_t²] of a constant history
    assert torch.allclose(s.probs(), rms / rms.sum())


def test_importance_weights_make_the_estimate_unbiased():
    T = 20
    s = vlb.ImportanceSampler(T)
    g = torch.Generator().manual_seed(5)
    ts = torch.arange(1, T + 1).repeat_interleave(10)
    s.update(ts, torch.rand(ts.numel(), generator=g).double() * ts.double() ** 2)
    p = s.probs()
    assert s.warm and not torch.allclose(p, torch.full((T,), 1 / T).double())
    L = torch.rand(T, generator=g).double() * 3  # any per-step losses
    w = s.weights(torch.arange(1, T + 1))
    assert abs((p * w * L).sum().item() - L.mean().item()) < 1e-12  # E_p[w L_t] = mean_t L_t
    t, wt = s.sample(50_000, g)
    assert torch.equal(wt, s.weights(t)) and int(t.min()) >= 1 and int(t.max()) <= T
    est = wt * L[t - 1]
    assert abs(est.mean().item() - L.mean().item()) < 5 * est.std().item() / 50_000**0.5


def test_l_hybrid_with_the_importance_sampler_records_history():
    sched, net = schedules.cosine(10), _TwoHeads()
    s = vlb.ImportanceSampler(sched.T, history=2)
    g = torch.Generator().manual_seed(6)
    for _ in range(5):
        x0 = torch.rand(16, 2, generator=g, dtype=torch.float64) * 2 - 1
        loss = vlb.l_hybrid(net, sched, x0, generator=g, sampler=s, levels=17)
        assert torch.isfinite(loss)
    assert s.warm and torch.isfinite(s.probs()).all()
    state = s.state_dict()
    s2 = vlb.ImportanceSampler(sched.T, history=2)
    s2.load_state_dict(state)
    assert torch.equal(s2.probs(), s.probs())
