"""ε ↔ x_0 ↔ v ↔ score (eq 11, 21; Salimans & Ho 2022) and the ε-model wrappers."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from difflab import parameterization as P  # noqa: N812
from difflab import schedules

ab_values = st.floats(1e-4, 1 - 1e-4)


@settings(max_examples=50, deadline=None)
@given(ab=ab_values, seed=st.integers(0, 2**16))
def test_round_trips(ab, seed):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(8, 3, generator=g).double(), torch.randn(8, 3, generator=g).double()
    a = torch.tensor(ab, dtype=torch.float64)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps  # eq (3)
    torch.testing.assert_close(P.x0_from_eps(x_t, eps, a), x0)
    torch.testing.assert_close(P.eps_from_x0(x_t, x0, a), eps)
    v = P.v_from_eps_x0(eps, x0, a)
    torch.testing.assert_close(P.eps_from_v(x_t, v, a), eps)
    torch.testing.assert_close(P.x0_from_v(x_t, v, a), x0)
    torch.testing.assert_close(P.eps_from_score(P.score_from_eps(eps, a), a), eps)


def test_score_of_gaussian_eq21():
    """For x_t ~ N(√ᾱ μ, (1−ᾱ)I) given x_0 = μ, ∇ log q = −(x_t − √ᾱ μ)/(1−ᾱ) = −ε/√(1−ᾱ)."""
    a = torch.tensor(0.3, dtype=torch.float64)
    mu, eps = torch.tensor([[1.0, -2.0]]).double(), torch.tensor([[0.4, 0.1]]).double()
    x_t = a.sqrt() * mu + (1 - a).sqrt() * eps
    torch.testing.assert_close(P.score_from_eps(eps, a), -(x_t - a.sqrt() * mu) / (1 - a))


def test_wrappers_present_every_network_as_an_eps_model():
    s = schedules.cosine(100)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    t = torch.randint(1, 101, (16,), generator=g)
    x_t = s.q_sample(x0, t, eps)
    ab = s.broadcast(s.alpha_bar_at(t), x0)
    nets = {
        P.EpsFromX0: lambda x, tt: x0,
        P.EpsFromV: lambda x, tt: P.v_from_eps_x0(eps, x0, ab),
        P.EpsFromScore: lambda x, tt: P.score_from_eps(eps, ab),
    }
    for wrapper, net in nets.items():
        torch.testing.assert_close(wrapper(net, s)(x_t, t), eps, rtol=2e-4, atol=2e-4)
