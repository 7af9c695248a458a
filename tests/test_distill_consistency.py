"""Consistency models (Weng eq. 30-32; Song et al. 2023) against Gaussian data, whose exact
consistency function — the probability-flow ODE's map to σ_min — is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from difflab import oracle, samplers, schedules
from difflab.distill import (
    ConsistencyModel,
    consistency_sample,
    ct_ema_decay,
    ct_num_levels,
    euler_step,
    feature_distance,
    heun_step,
    karras_sigmas,
    karras_timesteps,
    l1,
    l2,
    pseudo_huber,
    sigma_table,
)
from difflab.nn.mlp import MLPDenoiser
from difflab.samplers.consistency import default_levels
from difflab.samplers.consistency_levels import golden_section, search_levels
from difflab.training.consistency import consistency_distill, consistency_train
from difflab.training.ema import ema_

LINEAR = schedules.linear(1000)
MU, SD = 0.5, 0.3  # 1-D Gaussian data N(MU, SD²)
GAUSS = oracle.Gaussian(torch.tensor([MU]), torch.tensor([[SD**2]]))
TEACHER = oracle.ExactDenoiser(GAUSS, LINEAR)


def _net(seed: int = 0, dim: int = 1, hidden: int = 32, depth: int = 2) -> MLPDenoiser:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLPDenoiser(dim=dim, hidden=hidden, depth=depth, t_dim=16)


class ExactConsistency:
    """f*(x̃, σ) = μ + (x̃ − μ) √((s² + σ_min²)/(s² + σ²)): the PF-ODE flow of N(μ, s²) data
    (its marginal at σ is N(μ, s² + σ²) and the flow keeps the standardised value)."""

    def __init__(self, sigma_min: float, sigma_max: float):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def __call__(self, x, sigma, **cond):
        return MU + (x - MU) * math.sqrt((SD**2 + self.sigma_min**2) / (SD**2 + sigma**2))


# --- eq. (30): the parameterisation ----------------------------------------------------------
def test_boundary_condition_holds_bit_for_bit_for_any_network():
    class Wild(torch.nn.Module):  # an F_θ with huge, input-dependent output
        def forward(self, x, c_noise):
            return 1e30 * torch.sin(1e3 * x) + c_noise[:, None]

    net = _net(3, dim=4)
    torch.nn.init.normal_(net.out.weight, std=5.0)  # the MLP's zero-initialised output, perturbed
    for F in (net, Wild()):
        f = ConsistencyModel.from_schedule(F, LINEAR)
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)) * 3
        s_min = f.sigma_min
        assert torch.equal(f(x, s_min), x)
        assert torch.equal(f(x, torch.full((64,), s_min, dtype=torch.float64)), x)
        c_skip, c_out, _ = f.scalings(torch.tensor([s_min], dtype=torch.float64))
        assert c_skip.item() == 1.0 and c_out.item() == 0.0
        assert not torch.allclose(f(x, 1.5 * s_min), x)  # and it is not the identity above σ_min
    assert f.sigma_min == float(sigma_table(LINEAR)[1]) and f.sigma_max == float(
        sigma_table(LINEAR)[-1])


def test_v_preconditioning_is_the_v_models_x0_and_keeps_the_boundary():
    """ConsistencyModel.v_from_schedule: F_θ sees (x_t, t) as a v-model of the schedule does,
    f_θ = x̂_0 = √ᾱ x_t − √(1−ᾱ) v̂ (Salimans & Ho 2022) up to the σ_min shift, and
    f_θ(x̃, σ_min) = x̃ exactly."""
    from difflab.distill import schedule_time
    from difflab.distill.progressive import V

    seen = []

    class VNet(torch.nn.Module):  # records its inputs; a smooth, non-trivial "v̂"
        def forward(self, x, t):
            seen.append((x.clone(), t.clone()))
            return torch.tanh(x) * (t[:, None] / 1000.0) + 0.3

    table = sigma_table(LINEAR)  # (T+1,)
    c_noise = schedule_time(LINEAR)
    steps = torch.tensor([1, 2, 37, 500, 999, 1000])
    torch.testing.assert_close(c_noise(table[steps]), steps.double())  # t(σ_t) = t
    mid = c_noise((table[37] * table[38]).sqrt().reshape(1))  # halfway in log σ
    assert 37.4 < float(mid) < 37.6
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(6, 3, generator=g, dtype=torch.float64)
    ab = LINEAR.alpha_bars.double()[steps - 1]  # ᾱ_t, (6,)
    x_tilde = x_t / ab.sqrt()[:, None]
    exact = ConsistencyModel(VNet(), 1e-12, float(table[-1]), 1.0, c_noise=c_noise,
                             v_output=True)  # no σ_min shift to speak of
    out = exact(x_tilde, table[steps])
    x_in, t_in = seen[-1]
    torch.testing.assert_close(x_in, x_t)  # c_in x̃ = √ᾱ x̃ = x_t
    torch.testing.assert_close(t_in, steps.double())
    torch.testing.assert_close(out, V.to_x0(x_t, VNet()(x_t, steps.double()), ab[:, None]))
    f = ConsistencyModel.v_from_schedule(VNet(), LINEAR)
    x = torch.randn(64, 3, generator=g) * 3
    assert torch.equal(f(x, f.sigma_min), x)
    assert (f.sigma_data, f.sigma_min) == (1.0, float(table[1]))


def test_karras_grids():
    s = karras_sigmas(18, 0.002, 80.0)
    assert s[0] == 0.002 and s[-1] == 80.0 and bool((s[1:] > s[:-1]).all())
    root = s ** (1 / 7)  # equally spaced in σ^{1/ρ}: Karras et al. 2022, eq. (5)
    torch.testing.assert_close(root[1:] - root[:-1], (root[1] - root[0]).expand(17))
    ts = karras_timesteps(LINEAR, 18)
    assert ts[0] == 1 and ts[-1] == 1000 and len(ts) == 18 and bool((ts[1:] > ts[:-1]).all())
    table = sigma_table(LINEAR)
    # snapping moves each level by less than half a step of the schedule in log σ
    gap = (table[2:].log() - table[1:-1].log()).max()
    assert ((table[ts].log() - karras_sigmas(18, table[1].item(), table[-1].item()).log())
            .abs().max() <= gap)


def test_consistency_training_schedule_matches_the_papers_formula():
    """Song et al. 2023 App. C: N(k) = ⌈√(k/K ((s1+1)² − s0²) + s0²) − 1⌉ + 1,
    μ(k) = exp(s0 log μ0 / N(k)); values worked by hand for s0 = 2, s1 = 150, K = 1000."""
    K = 1000
    expected = {0: 2, 1: 6, 500: 107, 999: 151, 1000: 151}  # e.g. k=500: ⌈√11402.5 − 1⌉ + 1
    for k, n in expected.items():
        assert ct_num_levels(k, K, 2, 150) == n
        assert ct_ema_decay(k, K, 2, 150, 0.9) == pytest.approx(0.9 ** (2 / n), rel=1e-12)
    assert ct_ema_decay(0, K) == pytest.approx(0.9)  # μ(0) = μ0
    ns = [ct_num_levels(k, K) for k in range(K + 1)]
    mus = [ct_ema_decay(k, K) for k in range(K + 1)]
    assert ns == sorted(ns) and mus == sorted(mus)


# --- distances ---------------------------------------------------------------------------------
def test_pseudo_huber_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 8, 8, generator=g)
    d = 3 * 64
    c = 0.00054 * math.sqrt(d)
    assert torch.equal(pseudo_huber(x, x), torch.zeros(6))
    y = x + 1e-5 * torch.randn(x.shape, generator=g)
    sq = (x - y).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(pseudo_huber(x, y), sq / (2 * c), rtol=1e-2, atol=0)  # ≈ ℓ2²/2c
    y = x + 10 * torch.randn(x.shape, generator=g)
    norm = (x - y).flatten(1).norm(dim=1)
    torch.testing.assert_close(pseudo_huber(x, y), norm - c, rtol=1e-5, atol=1e-4)  # ≈ ℓ2 − c
    torch.testing.assert_close(pseudo_huber(x, y), pseudo_huber(y, x))
    # the gradient has norm ‖δ‖/√(‖δ‖² + c²) < 1, however far apart x and y are (ℓ2²: 2‖δ‖)
    x64 = x.double()
    for scale in (1e-3, 1.0, 1e3):
        y = (x64 + scale * torch.randn(x.shape, generator=g, dtype=torch.float64))
        y.requires_grad_(True)
        pseudo_huber(x64, y).sum().backward()
        n = (y - x64).detach().flatten(1).norm(dim=1)
        torch.testing.assert_close(y.grad.flatten(1).norm(dim=1), n / (n * n + c * c).sqrt())
        assert bool((y.grad.flatten(1).norm(dim=1) < 1).all())
    for dist in (l2, l1, pseudo_huber):
        assert bool((dist(x, x + 0.1) > 0).all())


def test_feature_distance():
    W = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    d = feature_distance(lambda x: x @ W)
    x, y = torch.randn(4, 5), torch.randn(4, 5)
    torch.testing.assert_close(d(x, y), ((x - y) @ W).pow(2).mean(1))
    assert torch.equal(d(x, x), torch.zeros(4))


# --- the teacher's ODE steps -------------------------------------------------------------------
def test_euler_step_is_ddim_and_heun_step_is_the_heun_sampler():
    """In VE coordinates x̃ = x_t/√ᾱ_t: one Euler step is one DDIM (η = 0) step and one Heun
    step is ``samplers.heun``'s step, both between the same two integer steps."""
    mix = oracle.ring_mixture(4, 1.0, 0.2)
    teacher = oracle.ExactDenoiser(mix, LINEAR)
    x_t = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t, s = 400, 300
    ab = LINEAR.alpha_bar_at(torch.tensor([t, s])).tolist()
    tb, sb = torch.full((50,), t), torch.full((50,), s)
    for solver, sampler in ((euler_step, samplers.ddim), (heun_step, samplers.heun)):
        out: list[torch.Tensor] = []
        sampler(teacher, LINEAR, x_t, steps=[t, s], callback=lambda i, tt, x, out=out:
                out.append(x))
        x_tilde = solver(teacher, LINEAR, x_t / math.sqrt(ab[0]), tb, sb, {})
        torch.testing.assert_close(x_tilde * math.sqrt(ab[1]), out[0], rtol=1e-9, atol=1e-9)


def test_heun_ladder_of_the_exact_teacher_approaches_the_data_as_N_grows():
    """The function consistency distillation converges to is the N-level Heun map of its
    teacher, not the exact flow: per unit of x_T's spread, its one-step samples of N(0.5, 0.3²)
    have std 0.322 at N = 18 (the paper's choice), 0.304 at 40 and 0.301 at 120 (118 distinct
    steps) — which sets the tolerance of the training test below."""
    x_T = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    table = sigma_table(LINEAR)
    ratios = []
    for N in (18, 40, 120):
        ts = karras_timesteps(LINEAR, N).flip(0).tolist()  # decreasing
        x = x_T * (1 + table[-1] ** 2).sqrt()
        for a, b in zip(ts[:-1], ts[1:], strict=True):
            x = heun_step(TEACHER, LINEAR, x, torch.full((20_000,), a), torch.full((20_000,), b),
                          {})
        assert abs(x.mean().item() - MU) < 4 * SD / math.sqrt(20_000)
        ratios.append(x.std().item() / x_T.std().item() / SD)
    assert ratios[0] > ratios[1] > ratios[2] and abs(ratios[2] - 1) < 0.01, ratios


# --- sampling, Algorithm 1 ---------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sampling_with_the_exact_consistency_function_recovers_the_data(steps):
    table = sigma_table(LINEAR)
    f = ExactConsistency(float(table[1]), float(table[-1]))
    n = 20_000
    x_T = torch.randn(n, 1, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
    x = consistency_sample(f, LINEAR, x_T, steps, torch.Generator().manual_seed(9))
    # x̃_T = √(1+σ_max²) x_T has mean 0, not μ: a bias of μ·s/σ_max ≈ 0.001 on one step only
    assert abs(x.mean().item() - MU) < 4 * SD / math.sqrt(n) + 0.002
    assert abs(x.std().item() / SD - 1) < 4 / math.sqrt(2 * n) + 0.01


def test_sampler_contract_and_levels():
    f = ExactConsistency(0.01, 157.0)
    seen = []
    x = consistency_sample(f, LINEAR, torch.zeros(3, 1), steps=3,
                           callback=lambda i, s, x: seen.append((i, s)))
    assert x.shape == (3, 1) and [i for i, _ in seen] == [0, 1, 2]
    sig = [s for _, s in seen]
    table = sigma_table(LINEAR)
    assert sig == [157.0] + [float(table[t]) for t in (667, 333)]  # trailing steps 1000, 667, 333
    with pytest.raises(ValueError, match="outside"):
        consistency_sample(f, LINEAR, torch.zeros(3, 1), 2, sigmas=[500.0])
    with pytest.raises(ValueError, match="re-noises 2 times; got 1"):
        consistency_sample(f, LINEAR, torch.zeros(3, 1), 3, sigmas=[5.0])
    with pytest.raises(ValueError, match="must decrease"):
        consistency_sample(f, LINEAR, torch.zeros(3, 1), 3, sigmas=[1.0, 5.0])
    import inspect

    params = list(inspect.signature(consistency_sample).parameters)
    assert params[:5] == ["model", "schedule", "x_T", "steps", "generator"]


def test_golden_section_finds_a_parabolas_minimum_with_one_evaluation_per_iteration():
    calls = []

    def fn(u):
        calls.append(u)
        return (u - 0.7) ** 2

    best, value = golden_section(fn, -3.0, 5.0, iters=20)
    assert len(calls) == 21 and len(set(calls)) == 21  # two probes, then one per iteration
    assert abs(best - 0.7) < 8 * 0.618**20 and value == (best - 0.7) ** 2
    assert golden_section(fn, -3.0, 5.0, iters=0)[0] == 1.0  # no iteration: the middle


class ExactBelow(ExactConsistency):
    """The exact consistency function at σ ≤ σ_c, and the data mean above: a model that learned
    the low levels only. Its 1-step sample has no spread; a 2-step sample re-noised to τ ≤ σ_c
    has std √(τ² − σ_min²) · √((s² + σ_min²)/(s² + τ²)), which grows with τ towards s, and
    none above σ_c: the best level is σ_c itself."""

    is_consistency_model = True

    def __init__(self, sigma_c: float, *args):
        super().__init__(*args)
        self.sigma_c = sigma_c

    def __call__(self, x, sigma, **cond):
        return super().__call__(x, sigma) if sigma <= self.sigma_c else torch.full_like(x, MU)


def test_level_search_finds_the_highest_level_the_model_has_learned():
    table = sigma_table(LINEAR)
    f = ExactBelow(2.0, float(table[1]), float(table[-1]))
    x_T = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def score(x):
        return abs(x.std().item() - SD)

    levels, value, history = search_levels(f, LINEAR, x_T, score, 2, grid=8, iters=12)
    cell = math.log(f.sigma_max / f.sigma_min) / 8  # the grid's spacing in ln σ
    width = 2 * cell * 0.618**12  # the final bracket
    assert 2.0 * math.exp(-2 * width) < levels[0] <= 2.0, levels
    # the default level (σ_500 ≈ 3.4 > σ_c) collapses the sample; the search is scored too
    assert history[-1][0] == default_levels(f, LINEAR, 2) and history[-1][1] > 0.29
    assert value < 0.01 and len(history) == 8 + 12 + 1 + 1
    three, value3, _ = search_levels(f, LINEAR, x_T, score, 3, iters=4)
    assert three[0] <= 2.0 and f.sigma_min <= three[1] < three[0] and value3 < 0.02
    with pytest.raises(ValueError, match="steps in 2"):
        search_levels(f, LINEAR, x_T, score, 1)
    with pytest.raises(ValueError, match="grid >= 1"):
        search_levels(f, LINEAR, x_T, score, 2, grid=0)


# --- training ----------------------------------------------------------------------------------
def test_ema_target_update():
    a, b = _net(0), _net(1)
    old = [p.clone() for p in a.parameters()]
    ema_(a, b, 0.9)
    for p, q, o in zip(a.parameters(), b.parameters(), old, strict=True):
        torch.testing.assert_close(p, 0.9 * o + 0.1 * q)


def test_consistency_distillation_gives_a_one_step_sampler_of_the_data():
    """eq. (31) from the exact teacher (N = 18 Karras levels, Heun, ℓ2, μ = 0.95), small MLP,
    800 steps. Measured over seeds 0, 2, 4 (truth 0.5, 0.3): one-step samples mean 0.493-0.498,
    std 0.316-0.318 — the N = 18 Heun target itself has std 0.322 (see above); two-step
    samples mean 0.507-0.517, std 0.319-0.339. Tolerances: one step, mean ± 0.02 (6 Monte-Carlo
    s.e. at n = 8000) and std within 10 %; two steps, mean ± 0.04 and std within 20 %."""
    data = GAUSS.sample(20_000, torch.Generator().manual_seed(0))
    f = ConsistencyModel.from_schedule(_net(0), LINEAR, sigma_data=0.5)
    log = []
    consistency_distill(f, TEACHER, LINEAR, data, N=18, solver=heun_step, mu=0.95, iters=800,
                        batch=256, lr=3e-3, lr_decay=True,
                        generator=torch.Generator().manual_seed(1), log=log)
    assert all(math.isfinite(v) for v in log) and sum(log[-50:]) < 0.1 * sum(log[:50])
    x_T = torch.randn(8000, 1, generator=torch.Generator().manual_seed(5))
    for steps, tol_mean, tol_std in ((1, 0.02, 0.10), (2, 0.04, 0.20)):
        x = consistency_sample(f, LINEAR, x_T, steps, torch.Generator().manual_seed(6))
        assert abs(x.mean().item() - MU) < tol_mean, (steps, x.mean().item())
        assert abs(x.std().item() / SD - 1) < tol_std, (steps, x.std().item())


def test_consistency_training_runs_its_schedule():
    """eq. (32), no teacher: a short run is finite and leaves θ⁻ an EMA behind θ."""
    data = GAUSS.sample(1000, torch.Generator().manual_seed(0))
    f = ConsistencyModel.from_schedule(_net(0), LINEAR)
    target = ConsistencyModel.from_schedule(_net(0), LINEAR)
    log = []
    consistency_train(f, data, iters=20, batch=64, lr=1e-3, target=target,
                      generator=torch.Generator().manual_seed(1), log=log)
    assert len(log) == 20 and all(math.isfinite(v) for v in log)
    p, q = next(f.net.inp.parameters()), next(target.net.inp.parameters())
    assert not torch.equal(p, q)
    x = consistency_sample(f, LINEAR, torch.randn(10, 1))
    assert torch.isfinite(x).all()


def test_conditioning_reaches_teacher_and_model():
    got = {"teacher": [], "net": []}

    def teacher(x, t, y):
        got["teacher"].append(y)
        return torch.zeros_like(x)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x, c_noise, y):
            got["net"].append(y)
            return x * self.w

    data, labels = torch.randn(20, 1), torch.arange(20) * 3
    f = ConsistencyModel.from_schedule(Net(), LINEAR)
    consistency_distill(f, teacher, LINEAR, data, N=6, iters=2, batch=5,
                        generator=torch.Generator().manual_seed(0), cond_data={"y": labels})
    assert len(got["teacher"]) == 4 and len(got["net"]) == 4  # Heun: 2 teacher calls a step
    assert all(y.shape == (5,) and bool((y % 3 == 0).all()) for y in got["net"])
    assert torch.equal(got["teacher"][0], got["net"][0])


def test_classifier_features_give_a_differentiable_image_distance():
    from difflab.distill import classifier_features

    d = feature_distance(classifier_features("digits", 8))
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))
    y.requires_grad_(True)
    dist = d(x, y)
    assert dist.shape == (4,) and bool((dist > 0).all())
    dist.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert torch.equal(d(x, x), torch.zeros(4))
