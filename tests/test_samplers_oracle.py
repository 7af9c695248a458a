"""oracle.FullCovMixture, the exact targets of benchmarks/samplers_oracle.py: its density, score
and samples against independent closed forms."""

from __future__ import annotations

import torch

from difflab import oracle, schedules

G = torch.Generator().manual_seed(0)
K, D = 3, 4
MEANS = 2 * torch.randn(K, D, generator=G, dtype=torch.float64)
A = torch.randn(K, D, D, generator=G, dtype=torch.float64)
COVS = 0.2 * (A @ A.transpose(1, 2)) + 0.01 * torch.eye(D, dtype=torch.float64)
W = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
MIX = oracle.FullCovMixture(MEANS, COVS, W)


def _log_prob_reference(x, ab=1.0):
    comps = [torch.distributions.MultivariateNormal(
        ab**0.5 * MEANS[k], covariance_matrix=ab * COVS[k] + (1 - ab) * torch.eye(D,
                                                                              dtype=torch.float64))
        for k in range(K)]
    return torch.stack([W[k].log() + comps[k].log_prob(x) for k in range(K)], 1).logsumexp(1)


def test_log_prob_and_posterior_match_torch_distributions():
    x = torch.randn(50, D, dtype=torch.float64, generator=G)
    torch.testing.assert_close(MIX.log_prob(x), _log_prob_reference(x))
    at = MIX.at(0.3)
    torch.testing.assert_close(at.log_prob(x), _log_prob_reference(x, 0.3))


def test_marginal_score_is_the_gradient_of_the_noised_log_density():
    x = torch.randn(20, D, dtype=torch.float64, generator=G).requires_grad_(True)
    for ab in (0.9, 0.2, 1e-3):
        (grad,) = torch.autograd.grad(_log_prob_reference(x, ab).sum(), x)
        score = MIX.marginal_score(x.detach(), torch.full((20,), ab, dtype=torch.float64))
        torch.testing.assert_close(score, grad, rtol=1e-6, atol=1e-8)


def test_isotropic_case_equals_gaussian_mixture_and_exact_denoiser_runs():
    stds = torch.tensor([0.3, 0.5, 1.0], dtype=torch.float64)
    iso = oracle.GaussianMixture(MEANS, stds, W)
    full = oracle.FullCovMixture(MEANS, stds[:, None, None] ** 2 * torch.eye(D), W)
    x, ab = torch.randn(30, D, dtype=torch.float64, generator=G), torch.rand(30, generator=G)
    torch.testing.assert_close(full.marginal_score(x, ab), iso.marginal_score(x, ab))
    torch.testing.assert_close(full.posterior(x), iso.posterior(x))
    eps = oracle.ExactDenoiser(full, schedules.cosine(100))(x.float(), torch.full((30,), 50))
    assert eps.shape == (30, D) and eps.dtype == torch.float32


def test_samples_have_the_weights_means_and_covariances():
    n = 60_000
    x, k = MIX.sample(n, torch.Generator().manual_seed(1), return_labels=True)
    w = torch.bincount(k, minlength=K).double() / n
    assert ((w - W).abs() < 4 * (W * (1 - W) / n).sqrt()).all()
    for j in range(K):
        xj = x[k == j].double()
        torch.testing.assert_close(xj.mean(0), MEANS[j], atol=0.05, rtol=0)
        rel = (torch.cov(xj.T) - COVS[j]).norm() / COVS[j].norm()
        assert rel < 0.05, (j, rel)


def test_dpm_karras_grid():
    """dpm_timesteps(…, "karras"): S of S + 1 points of Karras et al.'s ρ = 7 grid in
    σ = e^{−λ} from σ_{t_max} down to σ_1, snapped; strictly decreasing, starts at t_max."""
    from difflab.samplers.dpm_solver import dpm_timesteps
    from difflab.samplers.edm import schedule_sigmas

    for sched in (schedules.linear(1000), schedules.cosine(1000)):
        t_max = int(dpm_timesteps(sched, 10)[0])
        sig = schedule_sigmas(sched)
        for S in (5, 10, 37):
            ts = dpm_timesteps(sched, S, "karras")
            assert len(ts) == S and int(ts[0]) == t_max and bool((ts[1:] < ts[:-1]).all())
        ts = dpm_timesteps(sched, 10, "karras")
        root = sig[ts - 1] ** (1 / 7)  # ≈ linear in i (up to the snapping)
        step = (sig[t_max - 1] ** (1 / 7) - sig[0] ** (1 / 7)) / 10
        assert ((root[:-1] - root[1:]) / step - 1).abs().max() < 0.1
