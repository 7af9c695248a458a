"""Training with the bound alone (loss "vlb"; Weng eq. 16; Nichol & Dhariwal 2021, §3.3): the
importance-sampled estimate of L_vlb is unbiased and lower in variance than the uniform one,
t is drawn as the rule says (uniform until every L_t has its history, then p_t ∝ √E[L_t²]),
and the loss trains μ_θ as well as Σ_θ."""

from __future__ import annotations

import math

import pytest
import torch

from difflab import oracle, schedules, vlb
from difflab.config import TrainConfig
from difflab.runs import checkpoint as ckpt
from difflab.runs.train import train

MU = torch.tensor([0.1, -0.2, 0.0, 0.2], dtype=torch.float64)
DIST = oracle.Gaussian(MU, torch.diag(torch.tensor([0.3, 0.4, 0.5, 0.6]) ** 2))


def test_importance_sampled_l_vlb_is_unbiased_for_the_bound_and_less_noisy():
    sched = schedules.cosine(50)
    model = oracle.ExactDenoiser(DIST, sched)  # fixed Σ = β̃_t
    g = torch.Generator().manual_seed(0)
    sampler = vlb.ImportanceSampler(sched.T)
    while not sampler.warm:  # t uniform while the history fills
        vlb.l_vlb(model, sched, DIST.sample(2000, g).double(), g, sampler=sampler, levels=None)
    p = sampler.probs()
    assert float(p.max() / p.min()) > 3  # the terms differ: the test is not vacuous
    batches, B = 60, 500
    imp = torch.tensor([float(vlb.l_vlb(model, sched, DIST.sample(B, g).double(), g,
                                        sampler=sampler, levels=None)) for _ in range(batches)])
    uni = torch.tensor([float(vlb.l_vlb(model, sched, DIST.sample(B, g).double(), g,
                                        levels=None)) for _ in range(batches)])
    # the bound less L_T, with every t evaluated (no sampling of t), bits/dim
    x0 = DIST.sample(4000, g).double()
    terms = vlb.vlb_all_terms(model, sched, x0, None, generator=g).sum(1) / (4 * math.log(2))
    ref, ref_se = float(terms.mean()), float(terms.std()) / math.sqrt(len(terms))
    for est in (imp, uni):
        se = float(est.std()) / math.sqrt(batches)
        assert abs(float(est.mean()) - ref) < 4 * math.hypot(se, ref_se), (est.mean(), ref)
    assert float(imp.std()) < 0.7 * float(uni.std())  # why Nichol & Dhariwal sample t so


def test_the_importance_sampler_draws_t_as_the_rule_says():
    T, n = 8, 200_000
    s = vlb.ImportanceSampler(T, history=10, uniform_prob=0.001)
    g = torch.Generator().manual_seed(1)
    values = torch.rand(T, 14, generator=g, dtype=torch.float64) * torch.arange(1, T + 1)[:, None]
    for k in range(14):  # t = 5 gets only 9 values: still uniform
        ts = torch.tensor([t for t in range(1, T + 1) if not (t == 5 and k >= 9)])
        s.update(ts, values[ts - 1, k])
    freq = torch.bincount(s.sample(n, g)[0] - 1, minlength=T).double() / n
    assert not s.warm and torch.allclose(freq, torch.full((T,), 1 / T, dtype=torch.float64),
                                         atol=5 * math.sqrt(1 / T / n))
    s.update(torch.tensor([5]), torch.tensor([3.0], dtype=torch.float64))
    hist = values[:, 4:].clone()  # the last 10 of each t (t = 5: values 0..8 and the 3.0)
    hist[4] = torch.cat([values[4, :9], torch.tensor([3.0], dtype=torch.float64)])
    rms = hist.pow(2).mean(1).sqrt()
    want = 0.999 * rms / rms.sum() + 0.001 / T
    t, w = s.sample(n, g)
    freq = torch.bincount(t - 1, minlength=T).double() / n
    assert s.warm and torch.allclose(s.probs(), want)
    assert bool(((freq - want).abs() < 5 * (want * (1 - want) / n).sqrt()).all()), (freq, want)
    torch.testing.assert_close(w, 1 / (T * want[t - 1]))


def test_l_vlb_trains_the_mean_and_the_variance():
    from difflab.nn.mlp import MLPDenoiser
    from difflab.parameterization import LearnedVariance

    torch.manual_seed(0)
    net = LearnedVariance(MLPDenoiser(dim=2, hidden=16, depth=1, t_dim=8, out_dim=4))
    torch.nn.init.normal_(net.net.out.weight, std=0.1)  # the output layer starts at zero
    sched = schedules.cosine(20)
    x0 = torch.rand(32, 2) * 2 - 1
    vlb.l_vlb(net, sched, x0, torch.Generator().manual_seed(2), levels=None).backward()
    g = net.net.out.weight.grad  # rows 0-1: ε̂, rows 2-3: v
    assert g[:2].abs().sum() > 0 and g[2:].abs().sum() > 0


@pytest.mark.parametrize("variance", ["learned", "beta_tilde"])
def test_a_vlb_run_with_importance_sampling_trains_and_resumes_exactly(tmp_path, variance):
    cfg = TrainConfig.from_dict({"hidden": 32, "depth": 1, "t_dim": 16, "batch": 128,
                                 "n_train": 2000, "warmup": 5, "threads": 1, "T": 50,
                                 "loss": "vlb", "t_sampling": "importance",
                                 "variance": variance, "steps": 40, "checkpoint_every": 15})
    whole = train(cfg, tmp_path / "whole", progress=False, evaluate_after=False)
    part = train(cfg, tmp_path / "part", progress=False, max_steps=22)
    train(cfg, part, resume=True, progress=False, evaluate_after=False)
    a, b = ckpt.load_checkpoint(whole), ckpt.load_checkpoint(part)
    assert a.extra.keys() == b.extra.keys() and a.extra  # the sampler's history is saved
    for k in a.extra:
        assert torch.equal(a.extra[k], b.extra[k])
    for k, v in a.modules["model"].items():
        assert torch.equal(v, b.modules["model"][k]), k
