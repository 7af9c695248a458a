"""L_simple (eq 19) is minimal at the exact denoiser, and equals its closed-form minimum there."""

from __future__ import annotations

import pytest
import torch

from difflab import losses, oracle, schedules


def test_l_simple_minimum_is_the_closed_form_for_gaussian_data():
    """For x_0 ~ N(0, s²I), E‖ε − E[ε|x_t]‖² per dim is Var(ε|x_t) = ᾱs²/(ᾱs² + 1 − ᾱ)."""
    s2 = 0.5**2
    sched = schedules.cosine(1000)
    dist = oracle.Gaussian(torch.zeros(2), s2 * torch.eye(2))
    exact = oracle.ExactDenoiser(dist, sched)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = dist.sample(n, g).double()
    t = losses.sample_t(sched, n, g)
    noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
    loss = losses.l_simple(exact, sched, x0, t=t, noise=noise).item()
    ab = sched.alpha_bars
    closed = (ab * s2 / (ab * s2 + 1 - ab)).mean().item()  # t uniform on 1..T
    per_sample = (noise - exact(sched.q_sample(x0, t, noise), t)).pow(2).mean(1)
    se = per_sample.std().item() / n**0.5
    assert abs(loss - closed) < 5 * se


def test_l_simple_is_smallest_at_the_exact_denoiser():
    sched = schedules.linear(1000)
    mix = oracle.ring_mixture(8, 2.0, 0.2)
    exact = oracle.ExactDenoiser(mix, sched)
    g = torch.Generator().manual_seed(1)
    n = 50_000
    x0 = mix.sample(n, g)
    t = losses.sample_t(sched, n, g)
    noise = torch.randn(n, 2, generator=g)
    best = losses.l_simple(exact, sched, x0, t=t, noise=noise).item()
    rivals = {
        "scaled": lambda x, tt: 1.05 * exact(x, tt),
        "shifted": lambda x, tt: exact(x, tt) + 0.05,
        "shrunk to the Gaussian fit": oracle.ExactDenoiser(
            oracle.Gaussian(torch.zeros(2), 2.04 * torch.eye(2)), sched),
    }
    for name, model in rivals.items():
        other = losses.l_simple(model, sched, x0, t=t, noise=noise).item()
        assert other > best + 1e-4, name


def test_sample_t_is_uniform_on_1_to_T():
    sched = schedules.linear(10)
    t = losses.sample_t(sched, 100_000, torch.Generator().manual_seed(0))
    assert int(t.min()) == 1 and int(t.max()) == 10
    freq = torch.bincount(t, minlength=11)[1:].double() / t.numel()
    assert bool(((freq - 0.1).abs() < 5 * (0.09 / t.numel()) ** 0.5).all())


def test_l_simple_v_and_x0_targets_at_the_exact_predictor_are_their_closed_forms():
    """For x_0 ~ N(0, s²I) the posterior variance of x_0 given x_t is s²(1−ᾱ)/(ᾱs² + 1 − ᾱ) per
    dim; the exact v-network's L_simple is that divided by 1 − ᾱ (v's weight 1 + SNR on x_0,
    Salimans & Ho 2022), the exact x_0-network's is that itself."""
    from difflab.parameterization import x0_from_eps

    s2 = 0.5**2
    sched = schedules.cosine(1000)
    exact = oracle.ExactDenoiser(oracle.Gaussian(torch.zeros(2), s2 * torch.eye(2)), sched)

    def ab_of(x, t):
        return sched.broadcast(sched.alpha_bar_at(t), x).to(x.dtype)

    def v_net(x, t):  # v = (ε − √(1−ᾱ) x_t)/√ᾱ of the exact ε
        ab = ab_of(x, t)
        return (exact(x, t) - (1 - ab).sqrt() * x) / ab.sqrt()

    def x0_net(x, t):
        return x0_from_eps(x, exact(x, t), ab_of(x, t))

    g = torch.Generator().manual_seed(3)
    n = 200_000
    x0 = (s2**0.5 * torch.randn(n, 2, generator=g)).double()
    t = losses.sample_t(sched, n, g)
    noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
    ab = sched.alpha_bars.double()
    post = s2 * (1 - ab) / (ab * s2 + 1 - ab)  # Var(x_0 | x_t) per dim, (T,)
    for pred, net, closed in (("v", v_net, post / (1 - ab)), ("x0", x0_net, post)):
        loss = losses.l_simple(net, sched, x0, t=t, noise=noise, prediction=pred).item()
        per_t = closed[t - 1]  # the expected per-sample loss at its t
        se = (2 * per_t.pow(2).mean() / (2 * n)).sqrt().item() + per_t.std().item() / n**0.5
        assert abs(loss - closed.mean().item()) < 5 * se, (pred, loss, closed.mean().item())
    with pytest.raises(ValueError, match="prediction must be eps, v or x0"):
        losses.l_simple(v_net, sched, x0[:4], t=t[:4], noise=noise[:4], prediction="score")
