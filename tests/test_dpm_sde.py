"""SDE-DPM-Solver++ (Lu et al. 2022b, §5): first order is DDIM with η = 1, second order (2M SDE)
recovers an exact mixture and beats first order at equal evaluations."""

from __future__ import annotations

import pytest
import torch

from difflab import metrics, oracle, samplers, schedules
from difflab.samplers.dpm_solver import dpm_timesteps

MIX = oracle.ring_mixture(8, radius=2.0, std=0.15, weights=torch.arange(1.0, 9.0))
LINEAR, COSINE = schedules.linear(1000), schedules.cosine(1000)


def _x_T(n, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("sched", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_first_order_is_ddim_eta1_on_the_same_grid_and_noise(sched):
    """(σ_s/σ_t)e^{−h} x_t + α_s(1 − e^{−2h}) x̂_0 + σ_s√(1 − e^{−2h}) z is DDIM's η = 1 step
    (Weng eq. 29 with σ² = β̃_{t|s}), drawn with the same z."""
    model, x_T = oracle.ExactDenoiser(MIX, sched), _x_T(500)
    for steps in (7, 30):
        grid = dpm_timesteps(sched, steps, "blend").tolist()
        a = samplers.dpm_solver_pp_sde(model, sched, x_T, grid, torch.Generator().manual_seed(1),
                                       order=1)
        b = samplers.ddim(model, sched, x_T, grid, torch.Generator().manual_seed(1), eta=1.0)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_2m_sde_recovers_the_mixture_and_beats_first_order():
    """At 50 steps the mode weights are right within 4 s.e. and SWD is near the two-sample
    floor; at 10 steps (same x_T, same noise seed) 2M SDE's SWD is below first order's (measured
    0.12-0.13 vs 0.16-0.19; the deterministic 2M: 0.07-0.08)."""
    n = 4000
    truth = MIX.sample(n, torch.Generator().manual_seed(99))
    model = oracle.ExactDenoiser(MIX, COSINE)
    x = samplers.dpm_solver_pp_sde(model, COSINE, _x_T(n, 3).float(), 50,
                                   torch.Generator().manual_seed(4))
    assert torch.isfinite(x).all()
    floor = metrics.swd_floor(lambda m, s: MIX.sample(m, torch.Generator().manual_seed(s)), n,
                              repeats=4)
    assert metrics.swd(x, truth) < 1.5 * floor
    se = (MIX.weights * (1 - MIX.weights) / n).sqrt()
    assert bool(((metrics.mode_weights(x, MIX.means) - MIX.weights).abs() < 4 * se).all())
    err = {k: sum(metrics.swd(samplers.dpm_solver_pp_sde(
        model, COSINE, _x_T(n, s).float(), 10, torch.Generator().manual_seed(s), order=k),
        MIX.sample(n, torch.Generator().manual_seed(50 + s))) for s in range(3)) for k in (1, 2)}
    assert err[2] < 0.8 * err[1], err


def test_contract_determinism_and_order_check():
    model, x_T = oracle.ExactDenoiser(MIX, LINEAR), _x_T(200, 9)
    runs = [samplers.dpm_solver_pp_sde(model, LINEAR, x_T, 8, torch.Generator().manual_seed(s))
            for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])
    calls = []
    samplers.dpm_solver_pp_sde(model, LINEAR, x_T, 8, callback=lambda i, t, x: calls.append(t))
    assert calls == dpm_timesteps(LINEAR, 8, "auto").tolist()  # one evaluation a step
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        samplers.dpm_solver_pp_sde(model, LINEAR, x_T, 8, order=3)
    assert samplers.SAMPLERS["dpm++sde"] is samplers.dpm_solver_pp_sde
