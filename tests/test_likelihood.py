"""Bits/dim from the probability-flow ODE against the closed-form NLL of Gaussian data.

Error budget (exact denoiser, every grid step of T = 1000): Heun + trapezoid on the model's grid
≈ 1e-4 bits/dim on average; the prior mismatch log q(x_T)/N(x_T; 0, I) is up to ≈ 2e-3
bits/dim per sample for the linear schedule (ᾱ_T ≈ 4e-5, √ᾱ_T μ ≈ 1e-3) and ≈ 1e-10 for the
cosine one; Hutchinson noise is zero for a diagonal Jacobian with Rademacher probes (zᵀJz = tr J)
and ≈ 0.3 bits/dim per sample otherwise, so there only the mean over samples is compared.
"""

from __future__ import annotations

import math

import pytest
import torch

from difflab import oracle, schedules
from difflab.likelihood import gaussian_nll_bpd, ode_bpd

MU = torch.tensor([0.1, -0.2, 0.0], dtype=torch.float64)
DIAG = oracle.Gaussian(MU, torch.diag(torch.tensor([0.09, 0.16, 0.25], dtype=torch.float64)))
FULL = oracle.Gaussian(MU, torch.tensor([[0.25, 0.1, 0.0], [0.1, 0.2, -0.05],
                                         [0.0, -0.05, 0.15]], dtype=torch.float64))
LINEAR, COSINE = schedules.linear(1000), schedules.cosine(1000)


def _x0(dist, n, seed):
    return dist.sample(n, torch.Generator().manual_seed(seed)).double()


def test_ode_bpd_matches_closed_form_per_sample_and_coarse_grids_err_more():
    """Diagonal covariance: the Jacobian is diagonal, so the Rademacher trace is exact, and what
    is left is the ODE's discretisation on the model's grid (and a negligible prior mismatch)."""
    x0 = _x0(DIAG, 64, 0)
    ref = gaussian_nll_bpd(DIAG, x0)
    model = oracle.ExactDenoiser(DIAG, COSINE)
    diff = ode_bpd(model, COSINE, x0, levels=None) - ref
    assert diff.abs().max() < 5e-4 and abs(diff.mean().item()) < 2e-4
    coarse = (ode_bpd(model, COSINE, x0, steps=100, levels=None) - ref).abs().mean().item()
    assert diff.abs().mean().item() < 2e-4 < coarse < 2e-2


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_ode_bpd_matches_closed_form_within_hutchinson_error(probe):
    """Full covariance: zᵀJz is noisy; the mean over samples matches (250 grid steps: the
    discretisation error, ≈ 7e-4 bits/dim, is far below the Hutchinson noise)."""
    x0 = _x0(FULL, 200, 2)
    got = ode_bpd(oracle.ExactDenoiser(FULL, COSINE), COSINE, x0, steps=250, levels=None,
                  probe=probe, hutchinson_samples=2, generator=torch.Generator().manual_seed(3))
    diff = got - gaussian_nll_bpd(FULL, x0)
    se = diff.std().item() / diff.numel() ** 0.5
    assert 0 < se < (0.03 if probe == "rademacher" else 0.1)
    assert abs(diff.mean().item()) < 4 * se + 1e-3


def test_dequantised_bpd_adds_the_bin_width():
    """Data on the 256-level grid of a density that is flat across a bin, linear schedule:
    E_u[−log₂ p(x0 + u)/D] + log₂(127.5) = −log₂ p(x0)/D + log₂(127.5) up to O(bin²). The
    per-sample difference is first order in u (zero mean), so means are compared. Also runs a
    model that returns (ε, v)."""
    x0 = _x0(DIAG, 64, 5)
    x0 = ((x0 + 1) * 127.5).round() / 127.5 - 1
    den = oracle.ExactDenoiser(DIAG, LINEAR)
    model = lambda x, t: (den(x, t), torch.zeros_like(x))  # noqa: E731
    got = ode_bpd(model, LINEAR, x0, levels=256, generator=torch.Generator().manual_seed(6))
    diff = got - (gaussian_nll_bpd(DIAG, x0) + math.log2(127.5))
    se = diff.std().item() / diff.numel() ** 0.5
    assert diff.abs().max() < 0.03 and abs(diff.mean().item()) < 4 * se + 1e-3


def test_ode_bpd_checks_its_arguments():
    x0 = _x0(DIAG, 2, 7)
    model = oracle.ExactDenoiser(DIAG, COSINE)
    with pytest.raises(ValueError):
        ode_bpd(model, COSINE, x0, probe="sobol")
    with pytest.raises(ValueError):
        ode_bpd(model, COSINE, x0, hutchinson_samples=0)
