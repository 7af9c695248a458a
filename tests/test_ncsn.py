"""Noise-conditional score networks (difflab.ncsn; Song & Ermon 2019, 2020): the ladder's rules
(techniques 1, 2, 4), the σ-scaled score network (technique 3), denoising score matching's
optimum (the exact score of the perturbed mixture) and sliced score matching's equality with it
up to a constant."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from difflab.ncsn import (
    DEFAULT_LEVELS,
    ScoreModel,
    dsm_loss,
    geometric_ladder,
    ladder_levels,
    ladder_overlap,
    ladder_ratio,
    langevin_step_size,
    langevin_variance_ratio,
    max_pairwise_distance,
    ssm_loss,
)
from difflab.oracle import GaussianMixture, ring_mixture
from difflab.samplers.langevin import annealed_langevin, ladder_subset


# --- technique 1: σ_1 = the largest pairwise distance ---
def test_sigma_max_is_the_largest_pairwise_distance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    brute = max(float((x[j] - x).norm(dim=1).max()) for j in range(len(x)))
    assert max_pairwise_distance(x, chunk=64) == pytest.approx(brute, rel=1e-12)
    # two antipodal points on a sphere of radius 3 among points inside it: exactly 6
    inside = torch.nn.functional.normalize(torch.randn(500, 3, generator=g), dim=1) * 2.9
    pair = torch.tensor([[3.0, 0, 0], [-3.0, 0, 0]])
    assert max_pairwise_distance(torch.cat([inside, pair])) == pytest.approx(6.0)
    # a subset gives a lower bound (and images are flattened)
    imgs = torch.randn(400, 1, 4, 4, generator=g)
    full = max_pairwise_distance(imgs)
    assert max_pairwise_distance(imgs, max_points=100) <= full + 1e-12


# --- technique 2: the ratio γ and L ---
@pytest.mark.parametrize("dim", [64, 1024])
def test_the_overlap_rule_is_the_monte_carlo_overlap_of_the_shells(dim):
    # ‖x‖ of x ∼ N(0, σ² I_D) lies in σ√D ± 3σ/√2 (3 std of its normal approximation); the
    # rule's overlap is P(‖x_i‖ falls inside the shell of level i−1 = γσ), by Monte Carlo
    gamma = ladder_ratio(dim)
    assert ladder_overlap(gamma, dim) == pytest.approx(0.5, abs=1e-9)
    g = torch.Generator().manual_seed(1)
    r = torch.randn(20_000, dim, generator=g, dtype=torch.float64).norm(dim=1)  # σ_i = 1
    half = 3 / math.sqrt(2)
    lo, hi = gamma * (math.sqrt(dim) - half), gamma * (math.sqrt(dim) + half)
    inside = float(((r > lo) & (r < hi)).double().mean())
    assert inside == pytest.approx(0.5, abs=0.03)  # the normal approximation of the chi law


def test_the_ratio_shrinks_with_the_dimension_and_has_no_solution_in_two():
    gammas = [ladder_ratio(d) for d in (16, 64, 256, 3072)]
    assert all(a > b > 1 for a, b in zip(gammas, gammas[1:], strict=False))
    assert ladder_ratio(2) is None and ladder_ratio(4) is None  # overlap > 0.5 for every γ
    assert ladder_levels(4.0, 0.01, 2) == DEFAULT_LEVELS


@pytest.mark.parametrize("sigma_max,sigma_min,dim", [(50.0, 0.01, 3072), (12.0, 0.01, 64)])
def test_levels_make_the_ladder_as_short_as_the_ratio_allows(sigma_max, sigma_min, dim):
    gamma, L = ladder_ratio(dim), ladder_levels(sigma_max, sigma_min, dim)
    ladder = geometric_ladder(sigma_max, sigma_min, L)
    ratios = ladder[:-1] / ladder[1:]
    assert ladder[0] == pytest.approx(sigma_max) and ladder[-1] == pytest.approx(sigma_min)
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))  # geometric
    assert float(ratios[0]) <= gamma  # every neighbour overlaps at least as the rule asks
    assert (sigma_max / sigma_min) ** (1 / (L - 2)) > gamma  # and one level fewer would not


# --- technique 4: the step size ---
@pytest.mark.parametrize("gamma,n_each", [(1.9, 10), (1.36, 5)])
def test_langevin_variance_after_T_steps_is_the_closed_form(gamma, n_each):
    # one data point at 0: q_σ = N(0, σ² I), score −x/σ²; start from N(0, γ²σ² I)
    sigma, n = 0.7, 200_000
    step = langevin_step_size(gamma, n_each)
    g = torch.Generator().manual_seed(2)
    x = gamma * sigma * torch.randn(n, 1, generator=g, dtype=torch.float64)
    out = annealed_langevin(lambda y, k: -y / sigma**2, [sigma], x, n_each=n_each,
                            step_sizes=[step], generator=g, denoise=False)
    ratio = float(out.var()) / sigma**2
    assert ratio == pytest.approx(langevin_variance_ratio(step, gamma, n_each), rel=0.015)
    # and the step size is the one that brings it closest to 1
    best = langevin_variance_ratio(step, gamma, n_each)
    for other in (step * 0.8, step * 1.25):
        assert langevin_variance_ratio(other, gamma, n_each) > best


def test_ladder_subset_spaces_levels_evenly_and_keeps_both_ends():
    assert ladder_subset(10, 10) == list(range(1, 11))
    assert ladder_subset(10, 50) == list(range(1, 11))
    assert ladder_subset(10, 4) == [1, 4, 7, 10]
    assert ladder_subset(10, 1) == [1]
    with pytest.raises(ValueError):
        ladder_subset(10, [3, 2])


# --- technique 3 and the losses ---
class Fixed(nn.Module):
    """net(x, i) = σ_i · f(x, i) for a given score f: a ScoreModel of it is f itself."""

    def __init__(self, fn, sigmas):
        super().__init__()
        self.fn, self.sigmas = fn, sigmas

    def forward(self, x, i):
        return self.sigmas[i - 1].to(x.dtype)[:, None] * self.fn(x, i)


class Plain(nn.Module):
    """A network of x alone (an unconditional net(x̃), technique 3's)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x, i):
        return self.module(x)


def test_the_score_model_divides_by_sigma():
    sigmas = geometric_ladder(2.0, 0.1, 4)
    model = ScoreModel(Plain(nn.Linear(3, 3)), sigmas).double()
    x, i = torch.randn(5, 3, dtype=torch.float64), torch.tensor([1, 2, 3, 4, 4])
    torch.testing.assert_close(model(x, i), model.net.module(x) / sigmas[i - 1][:, None])


def _perturbed_score(mix: GaussianMixture, sigmas):
    """The exact ∇ log q_σ(x̃) of the mixture convolved with N(0, σ² I), per level."""

    def fn(x, i):
        out = torch.empty_like(x, dtype=torch.float64)
        for level in i.unique().tolist():
            rows = i == level
            noisy = GaussianMixture(mix.means, (mix.stds**2 + sigmas[level - 1] ** 2).sqrt(),
                                    mix.weights)
            out[rows] = noisy.marginal_score(x[rows], torch.ones(int(rows.sum()),
                                                                  dtype=torch.float64))
        return out

    return fn


def test_the_dsm_optimum_is_the_exact_score_of_the_perturbed_mixture():
    # J(s) = J(s*) + ½ E‖σ(s − s*)‖²: along any direction h the slope at s* is 0, while at a
    # wrong score (the unperturbed data's, the next level's) it is −E‖σ h‖² < 0
    mix, sigmas = ring_mixture(8, radius=2.0, std=0.2), geometric_ladder(3.0, 0.05, 6)
    g = torch.Generator().manual_seed(3)
    n = 100_000
    x = mix.sample(n, g).double()
    i = torch.randint(1, 7, (n,), generator=g)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    exact = _perturbed_score(mix, sigmas)
    clean = lambda y, k: mix.marginal_score(y, torch.ones(len(y), dtype=torch.float64))  # noqa
    shifted = lambda y, k: exact(y, (k + 1).clamp(max=6))  # noqa: E731 — the next level's

    def slope(base, h, eps=1e-3):  # dJ/dδ at δ = 0 of s = base + δ h, and its standard error
        def per_sample(d):
            fn = lambda y, k: base(y, k) + d * h(y, k)  # noqa: E731
            return dsm_loss(ScoreModel(Fixed(fn, sigmas), sigmas), sigmas, x, i, z)
        diff = (per_sample(eps) - per_sample(-eps)) / (2 * eps)  # (n,) exact for a quadratic
        return float(diff.mean()), float(diff.std()) / math.sqrt(n)

    for h in (lambda y, k: torch.sin(y).flip(1), lambda y, k: y * k[:, None] / 6):
        s, se = slope(exact, h)
        assert abs(s) < 4 * se, (s, se)
    for wrong in (clean, shifted):
        h = lambda y, k, w=wrong: exact(y, k) - w(y, k)  # noqa: E731 — towards the optimum
        s, se = slope(wrong, h)
        assert s < -10 * se, (s, se)


@pytest.mark.parametrize("variance_reduction", [True, False])
def test_ssm_equals_dsm_up_to_the_constant_minus_D_over_2_on_gaussian_data(variance_reduction):
    # E[vᵀ∇s v + ½(vᵀs)²] = E[tr ∇s + ½‖s‖²] = ½E‖s − ∇log q_σ‖² − ½E‖∇log q_σ‖², and DSM is
    # the same explicit loss plus ½E‖∇log q(x̃|x)‖² − ½E‖∇log q_σ‖²: with λ = σ², SSM − DSM =
    # −σ² · D/(2σ²) = −D/2 for every score model
    D, n = 3, 200_000
    g = torch.Generator().manual_seed(4)
    A = torch.randn(D, D, generator=g, dtype=torch.float64)
    mean = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
    x = mean + torch.randn(n, D, generator=g, dtype=torch.float64) @ (0.5 * A).T  # Gaussian
    sigmas = geometric_ladder(1.0, 0.3, 2)
    i = torch.randint(1, 3, (n,), generator=g)
    z, v = (torch.randn(n, D, generator=g, dtype=torch.float64) for _ in range(2))
    for seed in range(3):  # three different linear score models (untrained nets would do too)
        torch.manual_seed(seed)
        model = ScoreModel(Plain(nn.Linear(D, D).double()), sigmas)
        with torch.no_grad():
            model.net.module.weight.mul_(seed + 1)
        diff = (ssm_loss(model, sigmas, x, i, z, v, variance_reduction)
                - dsm_loss(model, sigmas, x, i, z)).detach()  # (n,)
        se = float(diff.std()) / math.sqrt(n)
        assert float(diff.mean()) == pytest.approx(-D / 2, abs=4 * se), (diff.mean(), se)


def test_ssm_trains_the_network_through_the_jacobian_term():
    sigmas = geometric_ladder(1.0, 0.1, 3)
    model = ScoreModel(Plain(nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))), sigmas)
    x, i = torch.randn(16, 2), torch.randint(1, 4, (16,))
    loss = ssm_loss(model, sigmas, x, i, torch.randn(16, 2), torch.randn(16, 2)).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_ssm_runs_through_a_u_net_with_attention():
    # the Jacobian term needs a double backward, which the fused attention kernels lack
    from difflab.nn.registry import MODELS

    torch.manual_seed(0)
    net = MODELS["unet"](in_channels=1, model_channels=8, channel_mult=(1,), num_res_blocks=1,
                         attention_resolutions=(1,), num_heads=2, groups=8)
    sigmas = geometric_ladder(1.0, 0.1, 3)
    x, i = torch.randn(4, 1, 4, 4), torch.tensor([1, 2, 3, 1])
    loss = ssm_loss(ScoreModel(net, sigmas), sigmas, x, i, torch.randn(4, 1, 4, 4),
                    torch.randn(4, 1, 4, 4)).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None) > 0
