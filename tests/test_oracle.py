"""The exact denoisers: their score is the gradient of the true log-density of q_t."""

from __future__ import annotations

import torch

from difflab import oracle, schedules


def _autograd_score(dist, x):
    x = x.double().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(dist.log_prob(x).sum(), x)
    return g


def test_mixture_marginal_score_is_grad_log_q_t():
    mix = oracle.GaussianMixture(torch.tensor([[0.0, 1.0], [2.0, -1.0], [-1.5, 0.5]]),
                                 torch.tensor([0.3, 0.5, 0.2]), torch.tensor([0.2, 0.5, 0.3]))
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) * 2
    for ab in (0.999, 0.5, 0.01):
        expected = _autograd_score(mix.at(ab), x)
        got = mix.marginal_score(x, torch.full((64,), ab, dtype=torch.float64))
        torch.testing.assert_close(got, expected)


def test_gaussian_marginal_score_is_grad_log_q_t():
    g = oracle.Gaussian(torch.tensor([0.5, -0.3]), torch.tensor([[0.6, 0.2], [0.2, 0.4]]))
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    ab = torch.linspace(0.01, 0.99, 32, dtype=torch.float64)
    got = g.marginal_score(x, ab)
    for i in (0, 10, 31):
        torch.testing.assert_close(got[i:i + 1], _autograd_score(g.at(float(ab[i])), x[i:i + 1]))


def test_exact_denoiser_is_tweedie_on_monte_carlo():
    """E[ε | x_t] estimated by binning Monte-Carlo pairs (x_t, ε) matches ε*(x_t, t)."""
    sched = schedules.linear(1000)
    mix = oracle.ring_mixture(4, 1.5, 0.3)
    model = oracle.ExactDenoiser(mix, sched)
    gen = torch.Generator().manual_seed(2)
    n, t = 400_000, 300
    x0 = mix.sample(n, gen).double()
    eps = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    tt = torch.full((n,), t)
    x_t = sched.q_sample(x0, tt, eps)
    centre = torch.tensor([[0.8, 0.1]], dtype=torch.float64)
    near = (x_t - centre).norm(dim=1) < 0.05  # a small ball: E[ε | x_t ∈ ball] ≈ ε*(centre)
    mc = eps[near].mean(0)
    se = eps[near].std(0) / near.sum().sqrt()
    exact = model(x_t[near], tt[near]).mean(0)  # averaged over the ball, as the estimate is
    assert bool(((mc - exact).abs() < 5 * se).all()), (mc, exact, se)


def test_mixed_timesteps_in_one_batch():
    sched = schedules.cosine(100)
    model = oracle.ExactDenoiser(oracle.ring_mixture(), sched)
    x = torch.randn(6, 2)
    t = torch.tensor([1, 50, 100, 50, 1, 7])
    one_by_one = torch.cat([model(x[i:i + 1], t[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(model(x, t), one_by_one)


def test_samples_have_the_mixture_moments():
    mix = oracle.ring_mixture(8, 2.0, 0.1)
    x = mix.sample(100_000, torch.Generator().manual_seed(3)).double()
    assert x.mean(0).abs().max() < 0.02
    # E‖x‖² = r² + D s² for a ring of radius r
    assert abs(x.pow(2).sum(1).mean().item() - (4 + 2 * 0.01)) < 0.02
