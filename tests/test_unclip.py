"""unCLIP's prior and decoder (Weng eq. 34): the prior's x0-parameterisation, its objective and
classifier-free guidance; the decoder's embedding pathways (zero embedding = the caption-only
network); the independent condition dropout; the pipeline's interpolation endpoints, and its
variations keeping their source's CLIP embedding (with an exact retrieval decoder)."""

from __future__ import annotations

import math

import torch
from torch import nn

from difflab import schedules
from difflab.build.conditioning import TrainConditions
from difflab.build.unclip import DecoderConditions
from difflab.guidance import ClassifierFree
from difflab.nn.unclip_decoder import UnclipDecoder
from difflab.nn.unclip_prior import DiffusionPrior, PriorConfig
from difflab.nn.unet import UNet, UNetConfig
from difflab.parameterization import EpsFromX0, x0_from_eps
from difflab.pipelines.unclip import Captions, Unclip
from difflab.training.diffusion import LRSchedule
from difflab.training.unclip import PriorObjective

D = 8


def small_prior() -> DiffusionPrior:
    torch.manual_seed(0)
    return DiffusionPrior(PriorConfig(embed_dim=D, text_dim=12, width=16, depth=2, heads=4))


def caption_batch(B: int = 3, L: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, L, 12, generator=g)
    mask = torch.arange(L)[None] < torch.tensor([2, 5, 3][:B])[:, None]  # (B, L)
    tokens = tokens * mask[..., None]
    text = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1)
    return tokens, mask, text


def test_prior_objective_is_minimal_at_the_exact_x0_predictor():
    """z_0 ~ N(0, I): E[z_0 | z_t] = √ᾱ_t z_t, and the x0 loss there is E_t[1 − ᾱ_t]; scaling
    the exact predictor by k ≠ 1 costs more (Monte Carlo)."""
    s = schedules.cosine(100)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(20000, D, generator=g)
    obj = PriorObjective(nn.Linear(1, 1), s, z0, batch=20000, lr=LRSchedule(1e-3, 10),
                         ema_decay=0.9)
    batch = obj.draw(0, g)
    ab = s.alpha_bars.float()

    def exact(k):
        return lambda x_t, t: k * ab[t - 1].sqrt()[:, None] * x_t

    losses = {k: float(obj.loss(exact(k), batch)) for k in (0.8, 1.0, 1.2)}
    closed = float((1 - ab[batch["t"] - 1]).mean())
    assert abs(losses[1.0] - closed) < 0.02
    assert losses[1.0] < losses[0.8] and losses[1.0] < losses[1.2]


def test_prior_eps_wrapper_and_guidance_act_on_the_predicted_x0():
    """EpsFromX0 turns ẑ_0 into ε̂ whose x0 (eq. 11) is ẑ_0 again, and CFG on ε̂ is CFG on ẑ_0:
    x̂_0 = (1 + w) f(y) − w f(∅), with ∅ = zero tokens, an all-False mask, a zero c_t."""
    prior, s = small_prior(), schedules.cosine(100)
    tokens, mask, text = caption_batch()
    z_t, t = torch.randn(3, D), torch.tensor([5, 50, 99])
    with torch.no_grad():
        f_y = prior(z_t, t, tokens, mask, text)
        f_0 = prior(z_t, t, torch.zeros_like(tokens), torch.zeros_like(mask), torch.zeros(3, D))
        f_none = prior(z_t, t)  # every condition omitted: ∅ too
        ab = s.alpha_bars.float()[t - 1][:, None]
        eps = EpsFromX0(prior, s)(z_t, t, context=tokens, context_mask=mask, text_emb=text)
        w = 2.0
        null = {"context": torch.zeros(1, 5, 12), "context_mask": torch.zeros(1, 5, dtype=bool),
                "text_emb": torch.zeros(1, D)}
        guided = ClassifierFree(EpsFromX0(prior, s), w, null)(z_t, t, context=tokens,
                                                              context_mask=mask, text_emb=text)
    assert torch.allclose(x0_from_eps(z_t, eps, ab), f_y, atol=1e-4)
    assert torch.allclose(f_0, f_none, atol=1e-5)
    assert not torch.allclose(f_y, f_0, atol=1e-3)
    assert torch.allclose(x0_from_eps(z_t, guided, ab), (1 + w) * f_y - w * f_0, atol=1e-3)


def test_prior_ignores_padding_and_is_causal_in_its_inputs():
    prior = small_prior()
    tokens, mask, text = caption_batch()
    z_t, t = torch.randn(3, D), torch.tensor([1, 2, 3])
    with torch.no_grad():
        out = prior(z_t, t, tokens, mask, text)
        noisy = tokens + torch.randn_like(tokens) * (~mask)[..., None]  # padding changed
        assert torch.allclose(prior(z_t, t, noisy, mask, text), out, atol=1e-5)
        assert not torch.allclose(prior(z_t + 1, t, tokens, mask, text), out, atol=1e-3)


def test_prior_scaling_gives_unit_variance_per_dimension():
    prior = small_prior()
    g = torch.Generator().manual_seed(3)
    c = torch.nn.functional.normalize(torch.randn(5000, D, generator=g) * torch.arange(1, D + 1)
                                      + 2.0, dim=1)  # unit norm, anisotropic, off-centre
    prior.set_scale(c)
    z = prior.scale(c)
    assert torch.allclose(z.mean(0), torch.zeros(D), atol=1e-4)
    assert torch.allclose(z.std(0), torch.ones(D), atol=1e-4)
    assert torch.allclose(prior.unscale(z), c, atol=1e-5)


class ExactGaussianPrior(nn.Module):
    """The exact x0-predictor for z_0 ~ N(m, s²) per dimension (unscaled space = scaled)."""

    def __init__(self, schedule, m: float, s: float):
        super().__init__()
        self.ab, self.m, self.s = schedule.alpha_bars.float(), m, s
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x_t, t, context=None, context_mask=None, text_emb=None):
        ab = self.ab[t - 1][:, None]
        gain = ab.sqrt() * self.s**2 / (ab * self.s**2 + 1 - ab)
        return self.m + gain * (x_t - ab.sqrt() * self.m)

    def unscale(self, z):
        return z

    def text_input(self, c):
        return c


def test_prior_sampling_with_the_exact_x0_predictor_recovers_the_distribution():
    s = schedules.cosine(200)
    prior = ExactGaussianPrior(s, 0.5, 0.3)
    u = Unclip(None, prior, s, prior, s, (1, 1, 1), prior_steps=50, prior_guidance=0.0)
    n = 4000
    y = Captions(torch.zeros(n, 2, 3), torch.ones(n, 2, dtype=torch.bool), torch.ones(n, 1))
    z = u.sample_prior(y, torch.Generator().manual_seed(0))  # (n, 1)
    assert abs(float(z.mean()) - 0.5) < 0.02 and abs(float(z.std()) - 0.3) < 0.02


def test_best_of_two_keeps_the_draw_closest_to_the_text():
    s = schedules.cosine(50)
    prior = ExactGaussianPrior(s, 0.0, 1.0)
    u = Unclip(None, prior, s, prior, s, (1, 1, 1), prior_steps=10, prior_guidance=0.0)
    n = 2000
    y = Captions(torch.zeros(n, 1, 3), torch.ones(n, 1, dtype=torch.bool), torch.ones(n, 1))
    one = u.sample_prior(y, torch.Generator().manual_seed(1), best_of=1)
    two = u.sample_prior(y, torch.Generator().manual_seed(1), best_of=2)
    # the "similarity" to c_t = 1 in one dimension is the value itself: the max of two draws
    assert float(two.mean()) > float(one.mean()) + 0.4  # E max of 2 N(0,1) = 1/√π ≈ 0.56


def small_decoder(seed: int = 0) -> UnclipDecoder:
    torch.manual_seed(seed)
    unet = UNet(UNetConfig(in_channels=1, model_channels=8, channel_mult=(1, 2),
                           num_res_blocks=1, attention_resolutions=(2,), context_dim=12,
                           groups=8))
    dec = UnclipDecoder(unet, D, n_tokens=3)
    with torch.no_grad():  # zero-initialised outputs made non-zero, so every pathway counts
        for p in dec.parameters():
            if p.abs().sum() == 0 and p.ndim > 1:
                p.normal_(0, 0.05)
    return dec.eval()


def test_decoder_zero_embedding_is_the_null_pathway():
    dec = small_decoder()
    tokens, mask, _ = caption_batch()
    x_t, t = torch.randn(3, 1, 8, 8), torch.tensor([3, 40, 90])
    emb = torch.nn.functional.normalize(torch.randn(3, D), dim=1)
    with torch.no_grad():
        caption_only = dec.unet(x_t, t, context=tokens, context_mask=mask)
        zero = dec(x_t, t, context=tokens, context_mask=mask, clip_emb=torch.zeros(3, D))
        both = dec(x_t, t, context=tokens, context_mask=mask, clip_emb=emb)
        uncond = dec.unet(x_t, t)
        all_null = dec(x_t, t, context=torch.zeros_like(tokens),
                       context_mask=torch.zeros_like(mask), clip_emb=torch.zeros(3, D))
        emb_only = dec(x_t, t, clip_emb=emb)
        mixed = dec(x_t, t, context=tokens, context_mask=mask,
                    clip_emb=torch.cat([emb[:1], torch.zeros(2, D)]))
    assert torch.allclose(zero, caption_only, atol=1e-5)
    assert torch.allclose(all_null, uncond, atol=1e-5)
    assert not torch.allclose(both, caption_only, atol=1e-3)
    assert not torch.allclose(emb_only, uncond, atol=1e-3)
    # per row: only the first row has an embedding
    assert torch.allclose(mixed[1:], caption_only[1:], atol=1e-5)
    assert torch.allclose(mixed[:1], both[:1], atol=1e-5)


def test_decoder_conditions_drop_embedding_and_caption_independently():
    n = 50
    table = {"context": torch.ones(n, 2, 3), "context_mask": torch.ones(n, 2, dtype=torch.bool)}
    null = {"context": torch.zeros(1, 2, 3), "context_mask": torch.zeros(1, 2, dtype=torch.bool)}
    captions = TrainConditions(table, torch.arange(n)[:, None], null)
    conds = DecoderConditions(captions, torch.ones(n, D), p_image=0.1)
    B = 40000
    out = conds.batch(torch.randint(0, n, (B,)), torch.Generator().manual_seed(0), 0.5)
    no_img = ~out["clip_emb"].ne(0).any(1)
    no_cap = ~out["context_mask"].any(1)
    tol = 4 * math.sqrt(0.25 / B)
    assert abs(float(no_img.double().mean()) - 0.1) < tol
    assert abs(float(no_cap.double().mean()) - 0.5) < tol
    assert abs(float((no_img & no_cap).double().mean()) - 0.05) < tol


class FakeClip(nn.Module):
    """c_i(x) = normalise(mean of x's rows): enough to check the pipeline's plumbing."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, D, generator=torch.Generator().manual_seed(5)))

    def encode_image(self, x):
        return torch.nn.functional.normalize(x.flatten(1) @ self.w, dim=1)


def test_interpolation_endpoints_reproduce_the_two_decodings():
    # linear(100) (ᾱ_T ≈ 0.37) and a small x_T: the random network's x̂_0 stays inside [-1, 1]
    dec, s = small_decoder(), schedules.linear(100)
    u = Unclip(FakeClip(), None, None, dec, s, (1, 8, 8), decoder_steps=5,
               decoder_guidance=1.5)
    g = torch.Generator().manual_seed(0)
    x_a, x_b = torch.rand(1, 1, 8, 8, generator=g), torch.rand(1, 1, 8, 8, generator=g)
    x_T = 0.2 * torch.randn(1, 1, 8, 8, generator=g)
    path = u.interpolate(x_a, x_b, 4, x_T=x_T)
    a = u.decode(u.image_embeddings(x_a), x_T=x_T)
    b = u.decode(u.image_embeddings(x_b), x_T=x_T)
    assert path.shape == (4, 1, 8, 8)
    assert torch.allclose(path[0], a[0], atol=1e-4) and torch.allclose(path[-1], b[0], atol=1e-4)
    assert float((path.abs() < 1).double().mean()) > 0.8  # mostly unclamped: comparisons count
    assert not torch.allclose(a, b, atol=1e-3)
    assert not torch.allclose(path[1], a[0], atol=1e-3)  # the middle is neither end
    # variations: one embedding, fresh noise each → different images
    v = u.variations(x_a, 3, torch.Generator().manual_seed(1))
    assert v.shape == (3, 1, 8, 8) and not torch.allclose(v[0], v[1], atol=1e-3)


class RetrievalDecoder(nn.Module):
    """The exact ε-model of P(x | c) = Σ_j π_j(c) N(x_j, s² I) with π_j(c) ∝ exp(cos(c, c_j)/τ)
    over reference images x_j with embeddings c_j (∅ = 0: uniform π): a decoder that is right
    by construction, so that only the pipeline's handling of the embedding is under test."""

    def __init__(self, images, clip, schedule, s: float = 0.05, tau: float = 0.05):
        super().__init__()
        self.mu = nn.Parameter(images.flatten(1).double(), requires_grad=False)  # (J, P)
        with torch.no_grad():
            self.c = torch.nn.functional.normalize(clip.encode_image(images), dim=1).double()
        self.schedule, self.s, self.tau = schedule, s, tau

    def forward(self, x_t, t, clip_emb=None, context=None, context_mask=None):
        B, mu = x_t.shape[0], self.mu
        x = x_t.flatten(1).double()  # (B, P)
        ab = self.schedule.alpha_bar_at(t).double().view(B, 1, 1)  # (B, 1, 1)
        logit = torch.zeros(B, mu.shape[0], dtype=torch.float64)
        if clip_emb is not None:
            logit = clip_emb.double() @ self.c.T / self.tau  # (B, J); ∅ rows → 0 → uniform
        var = ab * self.s**2 + 1 - ab  # Var(x_t | j) per pixel
        diff = x[:, None] - ab.sqrt() * mu[None]  # (B, J, P)
        w = (logit.log_softmax(1) - diff.pow(2).sum(-1) / (2 * var[:, :, 0])).softmax(1)
        x0 = (w[..., None] * (mu[None] + ab.sqrt() * self.s**2 / var * diff)).sum(1)  # E[x_0|x_t]
        eps = (x - ab[:, 0].sqrt() * x0) / (1 - ab[:, 0]).sqrt()
        return eps.view_as(x_t).to(x_t.dtype)


def test_variations_keep_the_clip_embedding_of_their_source():
    """Ramesh et al. 2022, §3.1: the variations of an image decode ITS c_i, so their own c_i stay
    close to it (closer than random pairs of images), while the fresh noise makes them differ."""
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(60, 1, 8, 8, generator=g) * 2 - 1  # the decoder's images x_j
    src = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1  # held-out sources
    clip, s = FakeClip(), schedules.linear(1000)
    u = Unclip(clip, None, None, RetrievalDecoder(ref, clip, s), s, (1, 8, 8),
               decoder_steps=50, decoder_guidance=0.0)
    v = u.variations(src, 8, torch.Generator().manual_seed(1))  # (48, 1, 8, 8)
    c_src = u.image_embeddings(src).repeat_interleave(8, 0)  # (48, D)
    keep = float((u.image_embeddings(v) * c_src).sum(1).mean())
    c_ref = u.image_embeddings(ref)
    pairs = torch.randperm(60, generator=g)
    random_pairs = float((c_ref * c_ref[pairs]).sum(1).mean())
    assert keep > random_pairs + 0.4, (keep, random_pairs)
    d = (v.view(6, 8, -1)[:, :, None] - v.view(6, 8, -1)[:, None]).norm(dim=-1)  # (6, 8, 8)
    assert float(d.sum() / (6 * 8 * 7)) > 1.0, float(d.sum() / (6 * 8 * 7))  # they differ
    # the same pipeline given ∅ for c_i loses it: the test can fail
    null = u.decode(torch.zeros(48, D), None, torch.Generator().manual_seed(1))
    lost = float((u.image_embeddings(null) * c_src).sum(1).mean())
    assert lost < random_pairs + 0.2, (lost, random_pairs)
