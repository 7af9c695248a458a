"""Weng eq. (2), the reparameterisation trick z = μ + σ ⊙ ε, ε ∼ N(0, I), as the forward process
uses it: x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (μ = √ᾱ_t x_0, σ = √(1−ᾱ_t) per element;
``Schedule.q_sample``). The draws have the moments of N(μ, diag σ²), and, the sample being a
deterministic function of (x_0, ε), gradients pass through it: ∇_{x_0} E‖x_t‖² = 2ᾱ_t x_0."""

from __future__ import annotations

import math

import pytest
import torch

from difflab import schedules


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_reparameterised_draws_have_the_closed_form_moments(kind):
    sched = getattr(schedules, kind)(1000)
    t = torch.tensor([1, 10, 250, 600, 1000])  # one row per step: σ differs row by row
    x0 = torch.tensor([[0.9, -0.4, 0.2], [1.0, 0.5, -1.0], [-0.3, 0.8, 0.1], [0.6, -0.7, 0.4],
                       [2.0, 1.0, -2.0]], dtype=torch.float64)  # (5, 3)
    n = 40_000
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(n, *x0.shape, generator=g, dtype=torch.float64)  # (n, 5, 3)
    xt = sched.q_sample(x0.expand(n, -1, -1).reshape(-1, 3), t.repeat(n),
                        eps.reshape(-1, 3)).reshape(n, 5, 3)
    ab = sched.alpha_bars[t - 1][:, None]  # (5, 1)
    mean, var = ab.sqrt() * x0, (1 - ab).expand(-1, 3)  # μ and σ² of eq. (2)
    # mean within 5 standard errors; variance within 5 of its (Gaussian) standard error
    assert ((xt.mean(0) - mean).abs() < 5 * (var / n).sqrt()).all()
    assert ((xt.var(0) - var).abs() < 5 * var * math.sqrt(2 / (n - 1))).all()
    # diagonal covariance: coordinates uncorrelated (correlation's standard error 1/√n)
    c = xt - xt.mean(0)
    corr = (c[..., 0] * c[..., 1]).mean(0) / (c[..., 0].std(0) * c[..., 1].std(0))
    assert (corr.abs() < 5 / math.sqrt(n)).all()


def test_gradients_flow_through_the_reparameterised_sample():
    sched = schedules.cosine(100)
    t = torch.tensor([5, 50, 95])
    x0 = torch.tensor([[0.5, -1.0], [1.5, 0.2], [-0.7, 0.9]], dtype=torch.float64,
                      requires_grad=True)
    n = 100_000
    g = torch.Generator().manual_seed(1)
    eps = torch.randn(n, 3, 2, generator=g, dtype=torch.float64)
    xt = sched.q_sample(x0.expand(n, -1, -1).reshape(-1, 2), t.repeat(n), eps.reshape(-1, 2))
    xt.pow(2).sum().div(n).backward()  # a Monte-Carlo estimate of E‖x_t‖², summed over rows
    ab = sched.alpha_bars[t - 1][:, None]
    # d/dx_0 of E[(√ᾱ x_0 + √(1−ᾱ) ε)²] = 2ᾱ x_0; the estimator's own error is 2√(ᾱ(1−ᾱ)) ε̄
    se = 2 * (ab * (1 - ab)).sqrt() / math.sqrt(n)
    assert ((x0.grad - 2 * ab * x0.detach()).abs() < 5 * se).all()
