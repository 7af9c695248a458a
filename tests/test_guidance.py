"""Guidance against the maths: on a Gaussian mixture whose components are the classes, the exact
conditional / unconditional denoisers and the exact noisy classifier make eq. (24)-(26) identities
that hold to float64 round-off; sampling with them moves samples into the chosen class."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from difflab import guidance, oracle, samplers, schedules
from difflab.parameterization import EpsFromX0, x0_from_eps

SCHED = schedules.linear(1000)
# three overlapping classes: about 56 % of q(x | y=2) lies nearest to μ_2, so guidance has room
MIX = oracle.GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 0.8]]),
                             torch.tensor([0.8, 0.7, 0.9]), torch.tensor([0.5, 0.3, 0.2]))
K = 3
COND = oracle.ClassConditionalDenoiser(MIX, SCHED)  # ε*(x_t, t, y); y = K is ∅
UNCOND = oracle.ExactDenoiser(MIX, SCHED)  # ε*(x_t, t)
CLF = oracle.NoisyClassifier(MIX, SCHED)  # log q(y | x_t), (B, K)
NULL = {"y": torch.tensor(K)}


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.randint(1, SCHED.T + 1, (n,), generator=g)
    y = torch.randint(0, K, (n,), generator=g)
    return x, t, y


def _sqrt_1m_ab(t):
    return (1 - SCHED.alpha_bar_at(t)).sqrt()[:, None]  # (B, 1)


# --- the oracle's class-conditional pieces ---------------------------------------------------


def test_oracle_conditional_denoiser_classifier_and_bayes_rule():
    x, t, y = _batch()
    ab = SCHED.alpha_bar_at(t)
    # ε*(x_t, t, y) is the exact denoiser of component y alone; y = ∅ is the whole mixture
    for k in range(K):
        alone = oracle.ExactDenoiser(oracle.GaussianMixture(MIX.means[k:k + 1],
                                                            MIX.stds[k:k + 1], [1.0]), SCHED)
        torch.testing.assert_close(COND(x, t, y=torch.full_like(y, k)), alone(x, t))
    torch.testing.assert_close(COND(x, t, y=torch.full_like(y, K)), UNCOND(x, t))
    torch.testing.assert_close(COND(x, t), UNCOND(x, t))
    mixed = torch.where(torch.arange(64) % 2 == 0, y, K)  # half ∅: one batch serves CFG
    torch.testing.assert_close(COND(x, t, y=mixed)[1::2], UNCOND(x, t)[1::2])
    # log q(y | x_t) = log π_y + log q_t(x_t | y) − log q_t(x_t), each from log_prob of q_t
    for i in (0, 7, 30):
        q_t = MIX.at(ab[i])  # Σ π_k N(√ᾱ μ_k, (ᾱ s_k² + 1 − ᾱ) I)
        log_joint = torch.stack([math.log(MIX.weights[k]) + oracle.GaussianMixture(
            q_t.means[k:k + 1], q_t.stds[k:k + 1], [1.0]).log_prob(x[i:i + 1])[0]
            for k in range(K)])  # log π_k + log q_t(x_t | k), (K,)
        torch.testing.assert_close(CLF(x[i:i + 1], t[i:i + 1])[0],
                                   log_joint - q_t.log_prob(x[i:i + 1])[0])
    with pytest.raises(ValueError):
        COND(x, t, y=torch.full_like(y, K + 1))


def test_exact_classifier_gradient_is_the_implicit_classifier():
    """∇ log q(y | x_t) = ∇ log q(x_t | y) − ∇ log q(x_t) = −(ε(x_t,t,y) − ε(x_t,t))/√(1−ᾱ_t):
    the first line of Weng eq. (26), with autograd through the exact classifier."""
    x, t, y = _batch()
    implicit = -(COND(x, t, y=y) - UNCOND(x, t)) / _sqrt_1m_ab(t)
    torch.testing.assert_close(guidance.classifier_grad(CLF, x, t, y), implicit)


# --- eq. (24)-(26) as identities ---------------------------------------------------------------


@pytest.mark.parametrize("w", [0.5, 3.0])
def test_cfg_eq26_equals_classifier_guidance_eq25_with_the_implicit_classifier(w):
    x, t, y = _batch(seed=1)
    cfg = guidance.ClassifierFree(COND, w, NULL)
    cg = guidance.ClassifierGuidance(COND, CLF, SCHED, w, model_takes_y=True)
    torch.testing.assert_close(cfg(x, t, y=y), cg(x, t, y=y))
    # and the last line of eq. (26), written out
    torch.testing.assert_close(cfg(x, t, y=y), (w + 1) * COND(x, t, y=y) - w * UNCOND(x, t))


def test_classifier_guidance_w1_on_the_unconditional_model_is_the_conditional_model():
    """eq. (24): ∇ log q(x_t) + ∇ log q(y | x_t) = ∇ log q(x_t | y), exactly. And weight w on a
    conditional model is weight w + 1 on the unconditional one (q(x_t|y) q(y|x_t)^w ∝
    q(x_t) q(y|x_t)^{w+1})."""
    x, t, y = _batch(seed=2)
    cg1 = guidance.ClassifierGuidance(UNCOND, CLF, SCHED, w=1.0)
    torch.testing.assert_close(cg1(x, t, y=y), COND(x, t, y=y))
    on_cond = guidance.ClassifierGuidance(COND, CLF, SCHED, 2.5, model_takes_y=True)
    on_uncond = guidance.ClassifierGuidance(UNCOND, CLF, SCHED, 3.5)
    torch.testing.assert_close(on_cond(x, t, y=y), on_uncond(x, t, y=y))


def test_weight_zero_returns_the_conditional_prediction_and_negative_weights_fail():
    x, t, y = _batch(seed=3)
    assert torch.equal(guidance.ClassifierFree(COND, 0.0, NULL)(x, t, y=y), COND(x, t, y=y))
    cg0 = guidance.ClassifierGuidance(COND, CLF, SCHED, 0.0, model_takes_y=True)
    assert torch.equal(cg0(x, t, y=y), COND(x, t, y=y))
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            guidance.ClassifierFree(COND, bad, NULL)
        with pytest.raises(ValueError):
            guidance.ClassifierGuidance(UNCOND, CLF, SCHED, bad)
    with pytest.raises(ValueError):  # no label to guide towards
        guidance.ClassifierFree(COND, 1.0, NULL)(x, t)
    with pytest.raises(ValueError):
        guidance.ClassifierGuidance(UNCOND, CLF, SCHED, 1.0)(x, t)


class _TextModel:
    """A model conditioned on a text embedding and its mask; records each call; returns
    (ε̂, v) with a v that depends on the condition, so the halves can be told apart."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_t, t, context, mask):  # x_t (B, 2), context (B, L, E), mask (B, L)
        self.calls.append((x_t.shape[0], context.clone(), mask.clone()))
        pooled = (context * mask[..., None]).sum(1)[:, :2]  # (B, 2)
        eps = torch.sin(x_t * t[:, None] / 100) + pooled
        return eps, torch.sigmoid(pooled)


def test_cfg_is_one_batched_forward_call_with_text_conditions():
    B, L, E = 5, 4, 3
    g = torch.Generator().manual_seed(4)
    x = torch.randn(B, 2, generator=g)
    t = torch.randint(1, 1001, (B,), generator=g)
    ctx = torch.randn(B, L, E, generator=g)
    mask = torch.rand(B, L, generator=g) > 0.3
    null = {"context": torch.full((1, L, E), 0.5), "mask": torch.ones(1, L, dtype=torch.bool)}
    net = _TextModel()
    eps, v = guidance.ClassifierFree(net, 2.0, null)(x, t, context=ctx, mask=mask)
    assert len(net.calls) == 1
    n, c, m = net.calls[0]
    assert n == 2 * B
    assert torch.equal(c[:B], ctx) and torch.equal(c[B:], null["context"].expand(B, L, E))
    assert torch.equal(m[:B], mask) and bool(m[B:].all())
    eps_c, v_c = _TextModel()(x, t, ctx, mask)
    eps_u, _ = _TextModel()(x, t, null["context"].expand(B, L, E), null["mask"].expand(B, L))
    torch.testing.assert_close(eps, 3 * eps_c - 2 * eps_u)
    torch.testing.assert_close(v, v_c)  # the learned variance comes from the conditional half
    # through a sampler: one model call per step
    net = _TextModel()
    samplers.ddim(guidance.ClassifierFree(net, 2.0, null), SCHED, x, steps=7,
                  cond={"context": ctx, "mask": mask})
    assert [n for n, _, _ in net.calls] == [2 * B] * 7


# --- sampling: guidance moves samples into the chosen component --------------------------------


def _frac_nearest(x, k):
    return (torch.cdist(x.double(), MIX.means).argmin(1) == k).double().mean().item()


def test_guidance_moves_samples_into_the_chosen_class_more_as_w_grows():
    """CFG on the exact conditional model, and classifier guidance on the exact unconditional
    model, sampled with Heun (the probability-flow ODE): the share of samples nearest to μ_y
    grows with w; CFG at w = 0 and classifier guidance at w = 1 both give q(x | y)."""
    n, k = 2000, 2
    gen = torch.Generator().manual_seed(5)
    x_T = torch.randn(n, 2, generator=gen)
    cond = {"y": torch.full((n,), k)}
    share_cond = _frac_nearest(MIX.means[k] + MIX.stds[k] * torch.randn(
        50_000, 2, generator=gen, dtype=torch.float64), k)  # under q(x | y), ≈ 0.56
    share_mix = _frac_nearest(MIX.sample(50_000, gen), k)  # under q(x), ≈ 0.24
    frac = {}
    for name in ("cfg", "classifier"):
        for w in (0.0, 1.0, 4.0):
            model = (guidance.ClassifierFree(COND, w, NULL) if name == "cfg"
                     else guidance.ClassifierGuidance(UNCOND, CLF, SCHED, w))
            x = samplers.heun(model, SCHED, x_T, steps=25, cond=cond)
            frac[name, w] = _frac_nearest(x, k)
            if (name, w) in (("cfg", 0.0), ("classifier", 1.0)):
                # the exact conditional model: samples follow q(x | y) = N(μ_y, s_y² I)
                se = MIX.stds[k] / math.sqrt(n)
                assert (x.double().mean(0) - MIX.means[k]).abs().max() < 4 * se
                assert abs(x.double().std(0).mean() / MIX.stds[k] - 1) < 0.05
                assert abs(frac[name, w] - share_cond) < 0.03
    assert abs(frac["classifier", 0.0] - share_mix) < 0.03  # unguided: the class's own share
    for name in ("cfg", "classifier"):
        f = [frac[name, w] for w in (0.0, 1.0, 4.0)]
        assert f[0] + 0.1 < f[1] < f[2] - 0.05, (name, f)
        assert f[2] > 0.95, (name, f)
    assert abs(frac["cfg", 0.0] - frac["classifier", 1.0]) < 0.005  # the same model (eq. 24)


# --- Algorithm 1: the ancestral mean shift ---------------------------------------------------


@pytest.mark.parametrize("variance", ["beta_tilde", "beta", "learned"])
def test_ancestral_classifier_guidance_is_algorithm_1_in_one_ddpm_step(variance):
    """One ddpm update t → t−1 with the wrapped model is x_{t−1} = μ + s Σ g + √Σ z, where μ is
    eq. (12) from the unguided ε̂ and g = ∇ log f(y | x_t), computed here by hand."""
    s, t0, n = 3.0, 400, 16
    g0 = torch.Generator().manual_seed(6)
    x = torch.randn(n, 2, generator=g0, dtype=torch.float64)
    y = torch.randint(0, K, (n,), generator=g0)
    v = 0.2 + 0.6 * torch.rand(n, 2, generator=g0, dtype=torch.float64)  # fixed learned v

    def model(x_t, t):
        eps = UNCOND(x_t, t)
        return (eps, v) if variance == "learned" else eps

    guided = guidance.AncestralClassifierGuidance(model, CLF, SCHED, s, variance=variance)
    got = []
    samplers.ddpm(guided, SCHED, x, steps=[t0, t0 - 1], variance=variance, cond={"y": y},
                  generator=torch.Generator().manual_seed(7),
                  callback=lambda i, t, xs: got.append(xs.clone()) if i == 0 else None)
    tt = torch.full((n,), t0)
    mu = SCHED.q_posterior_eps(x, UNCOND(x, tt), tt)  # eq. (12), unguided
    beta, beta_tilde = SCHED.betas[t0 - 1], SCHED.beta_tildes[t0 - 1]
    var = {"beta": beta, "beta_tilde": beta_tilde,
           "learned": torch.exp(v * beta.log() + (1 - v) * beta_tilde.log())}[variance]
    grad = guidance.classifier_grad(CLF, x, tt, y)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(got[0], mu + s * var * grad + var.sqrt() * z)
    if variance == "beta":  # then Algorithm 1 is eq. (25) with w = s √α_t
        eq25 = guidance.ClassifierGuidance(UNCOND, CLF, SCHED, s * math.sqrt(1 - beta))
        torch.testing.assert_close(guided(x, tt, y=y), eq25(x, tt, y=y))


class _TinyClassifier(nn.Module):
    """logits = x W^T + E[t]: a learned time embedding, so t is saved for backward."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, K, bias=False)
        self.emb = nn.Embedding(1001, K)

    def forward(self, x_t, t):
        return self.lin(x_t) + self.emb(t)


def test_classifier_gradient_is_exact_and_works_under_inference_mode():
    torch.manual_seed(8)
    clf = _TinyClassifier()
    with torch.inference_mode():  # as inside every sampler: x, t, y are inference tensors
        x, t, y = _batch(16, seed=9)
        x = x.float()
        g = guidance.classifier_grad(clf, x, t, y)
        out = guidance.ClassifierGuidance(lambda x_t, t: torch.zeros_like(x_t), clf, SCHED,
                                          2.0)(x, t, y=y)
    W = clf.lin.weight.detach()  # (K, 2)
    p = clf(x.clone(), t.clone()).detach().softmax(-1)  # (B, K)
    expected = W[y] - p @ W  # ∇ log softmax(x W^T + b)_y
    torch.testing.assert_close(g, expected)
    torch.testing.assert_close(out, -2.0 * _sqrt_1m_ab(t).float() * expected)
    assert all(q.grad is None for q in clf.parameters())


# --- thresholding (Imagen) -------------------------------------------------------------------


def test_static_and_dynamic_thresholding():
    g = torch.Generator().manual_seed(10)
    x0 = torch.randn(6, 3, 8, 8, generator=g)
    x0[0] = x0[0].clamp(-1, 1) * 0.99  # in range
    x0[1] *= 3  # far out of range
    x0[2, 0, 0, 0] = 7.0  # one outlier: above the 99.5th percentile, so s stays near the bulk
    torch.testing.assert_close(guidance.static_threshold(x0), torch.from_numpy(
        np.clip(x0.numpy(), -1, 1)))
    for p in (0.995, 0.9, 1.0):
        d = guidance.dynamic_threshold(x0, p)
        a = x0.numpy().reshape(6, -1)
        s = np.maximum(1.0, np.percentile(np.abs(a), 100 * p, axis=1))[:, None]  # Imagen's rule
        expected = (np.clip(a, -s, s) / s).reshape(x0.shape)
        torch.testing.assert_close(d, torch.from_numpy(expected).float())
        assert torch.equal(d[0], x0[0])  # in-range sample untouched, whatever its batch holds
        assert bool((d.abs() <= 1).all())
        assert torch.allclose(d[1].abs().max(), torch.tensor(1.0))  # the clipped reach ±1
    with pytest.raises(ValueError):
        guidance.dynamic_threshold(x0, 0.0)


def test_thresholded_wrapper_changes_only_out_of_range_predictions():
    sched = schedules.cosine(100)
    g = torch.Generator().manual_seed(11)
    x, t = torch.randn(32, 4, generator=g), torch.randint(1, 101, (32,), generator=g)

    def net(scale):  # an x0-predicting network, presented as an ε-model
        return EpsFromX0(lambda x_t, t: scale * torch.tanh(x_t + t[:, None] / 50), sched)

    inside = net(0.9)
    for thr in (guidance.static_threshold, guidance.dynamic_threshold):
        assert torch.equal(guidance.Thresholded(inside, sched, thr)(x, t), inside(x, t))
    outside = net(3.0)
    ab = sched.alpha_bar_at(t)[:, None].float()
    for thr in (guidance.static_threshold, guidance.dynamic_threshold):
        eps = guidance.Thresholded(outside, sched, thr)(x, t)
        x0 = x0_from_eps(x, outside(x, t), ab)
        torch.testing.assert_close(x0_from_eps(x, eps, ab), thr(x0), atol=1e-4, rtol=1e-4)
    v = torch.rand(32, 4, generator=g)  # a learned variance passes through
    eps, v_out = guidance.Thresholded(lambda x_t, t: (outside(x_t, t), v), sched)(x, t)
    assert v_out is v


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_thresholded_guided_sampling_stays_in_range(sampler):
    """Strong CFG on classes centred outside [−1, 1]: without thresholding samples leave the
    box; with it (static or dynamic) the last x̂_0 — the sample — lies inside."""
    sched = schedules.linear(1000)
    ring = oracle.ring_mixture(4, radius=2.0, std=0.2)
    cond_model = oracle.ClassConditionalDenoiser(ring, sched)
    cfg = guidance.ClassifierFree(cond_model, 4.0, {"y": torch.tensor(4)})
    n = 500
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(12))
    kw = {"steps": 25, "cond": {"y": torch.arange(n) % 4}}
    free = samplers.SAMPLERS[sampler](cfg, sched, x_T, **kw)
    assert (free.abs() > 1).any(1).float().mean() > 0.9
    for thr in (guidance.static_threshold, guidance.dynamic_threshold):
        x = samplers.SAMPLERS[sampler](guidance.Thresholded(cfg, sched, thr), sched, x_T,
                                       generator=torch.Generator().manual_seed(13), **kw)
        assert bool((x.abs() <= 1 + 1e-5).all()), x.abs().max()
