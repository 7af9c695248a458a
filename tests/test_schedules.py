"""Schedules and the forward process against the post's closed forms (eq 1, 3, 7-12, 22)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import difflab
from difflab import schedules


def test_contract_names_and_shapes():
    s = difflab.schedules.linear(T=1000)
    assert s.T == 1000
    for table in (s.betas, s.alphas, s.alpha_bars, s.beta_tildes):
        assert table.shape == (1000,) and table.dtype == torch.float64
    x0 = torch.randn(4, 3)
    t = torch.tensor([1, 10, 500, 1000])
    assert s.q_sample(x0, t, torch.randn(4, 3)).shape == (4, 3)
    mean, var = s.q_posterior(x0, torch.randn(4, 3), t)
    assert mean.shape == (4, 3) and (mean + var).shape == (4, 3)


def test_linear_endpoints():
    s = schedules.linear(1000)
    assert s.betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert s.betas[-1].item() == pytest.approx(0.02, abs=1e-15)


def test_cosine_matches_eq22():
    T, s_off = 1000, 0.008
    s = schedules.cosine(T)
    f = [math.cos((t / T + s_off) / (1 + s_off) * math.pi / 2) ** 2 for t in range(T + 1)]
    for t in (1, 2, 10, 250, 500, 900, 990):
        assert s.alpha_bars[t - 1].item() == pytest.approx(f[t] / f[0], rel=1e-12)
        beta = min(1 - f[t] / f[t - 1], 0.999)
        assert s.betas[t - 1].item() == pytest.approx(beta, rel=1e-12)
    assert s.betas.max().item() <= 0.999
    assert s.betas[-1].item() == 0.999  # the clip of eq (22) binds at t = T


@settings(max_examples=30, deadline=None)
@given(T=st.integers(2, 2000), kind=st.sampled_from(["linear", "cosine"]))
def test_alpha_bar_strictly_decreasing(T, kind):
    ab = getattr(schedules, kind)(T).alpha_bars
    assert bool((ab[1:] < ab[:-1]).all()) and 0 < ab[-1] < ab[0] < 1


def test_bad_schedules_raise():
    with pytest.raises(ValueError):
        schedules.linear(0)
    with pytest.raises(ValueError):
        schedules.from_betas([0.1, 1.0])
    with pytest.raises(ValueError):
        schedules.linear(10).q_sample(torch.zeros(1, 2), torch.tensor([11]), torch.zeros(1, 2))


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_eq3_equals_iterating_eq1(kind):
    """x_t from t steps of eq (1) has the mean √ᾱ_t x_0 and variance 1 − ᾱ_t of eq (3)."""
    s = schedules.linear(1000) if kind == "linear" else schedules.cosine(1000)
    g = torch.Generator().manual_seed(0)
    n, t_end = 40_000, 300
    x0 = torch.tensor([1.5, -0.7], dtype=torch.float64)
    x = x0.expand(n, 2).clone()
    for t in range(1, t_end + 1):  # eq (1): x_t = √(1−β_t) x_{t−1} + √β_t z
        beta = s.betas[t - 1]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(n, 2, generator=g, dtype=x.dtype)
    ab = s.alpha_bars[t_end - 1]
    mean_err = (x.mean(0) - ab.sqrt() * x0).abs()
    assert bool((mean_err < 5 * ((1 - ab) / n).sqrt()).all())
    var_se = (1 - ab) * math.sqrt(2 / (n - 1))  # standard error of a Gaussian sample variance
    assert bool(((x.var(0) - (1 - ab)).abs() < 5 * var_se).all())
    # and the closed form itself samples the same law
    xc = s.q_sample(x0.expand(n, 2), torch.full((n,), t_end), torch.randn(n, 2, generator=g,
                                                                        dtype=x.dtype))
    assert bool(((xc.mean(0) - x.mean(0)).abs() < 5 * (2 * (1 - ab) / n).sqrt()).all())


def _log_normal(x, mean, var):
    return -0.5 * (x - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("t", [2, 10, 500, 999, 1000])
def test_q_posterior_is_bayes_rule_eq9(kind, t):
    """log N(x_{t−1}; μ̃, β̃) = log q(x_t|x_{t−1}) + log q(x_{t−1}|x_0) − log q(x_t|x_0)."""
    s = getattr(schedules, kind)(1000)
    x0 = torch.tensor([0.8]).double()
    x_t = torch.tensor([-0.3]).double()
    grid = torch.linspace(-3, 3, 101, dtype=torch.float64)  # values of x_{t−1}
    a, ab, ab_prev = s.alphas[t - 1], s.alpha_bars[t - 1], s.alpha_bar_at(torch.tensor(t - 1))
    bayes = (_log_normal(x_t, a.sqrt() * grid, 1 - a)  # eq (8.3)
             + _log_normal(grid, ab_prev.sqrt() * x0, 1 - ab_prev)  # eq (8.2)
             - _log_normal(x_t, ab.sqrt() * x0, 1 - ab))  # eq (8.1)
    mean, var = s.q_posterior(x0[None], x_t[None], torch.tensor([t]))
    assert var.item() == pytest.approx(s.beta_tildes[t - 1].item(), rel=1e-12)
    ours = _log_normal(grid, mean.flatten(), var.flatten())
    torch.testing.assert_close(ours, bayes, rtol=1e-8, atol=1e-8)


def test_q_posterior_eps_form_eq12():
    s = schedules.cosine(1000)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g)
    t = torch.randint(2, 1001, (64,), generator=g)
    x_t = s.q_sample(x0, t, eps)
    mean, _ = s.q_posterior(x0, x_t, t)
    torch.testing.assert_close(s.q_posterior_eps(x_t, eps, t), mean, rtol=1e-4, atol=1e-4)


def test_beta_tilde_first_step_is_zero_and_below_beta():
    s = schedules.linear(1000)
    assert s.beta_tildes[0].item() == 0.0
    assert bool((s.beta_tildes[1:] < s.betas[1:]).all())
