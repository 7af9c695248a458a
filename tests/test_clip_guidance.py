"""CLIP guidance (GLIDE, Nichol et al. 2022, §2.4; Weng eq. 25 with the CLIP logit) against the
maths, and the noise-aware CLIP network: the gradient in closed form and by finite differences,
w = 0 is the unguided model bit for bit, an exact noisy classifier posing as a CLIP gives the
exact conditional denoiser, and guided samples are more similar to the prompt than unguided
ones from the same noise."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from difflab import guidance, oracle, samplers, schedules
from difflab.nn.clip import CLIPConfig, ImageEncoder
from difflab.nn.noisy_clip import NoisyCLIP, NoisyImageEncoder

SCHED = schedules.linear(1000)
MIX = oracle.GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 0.8]]),
                             torch.tensor([0.8, 0.7, 0.9]), torch.tensor([0.5, 0.3, 0.2]))
UNCOND = oracle.ExactDenoiser(MIX, SCHED)
COND = oracle.ClassConditionalDenoiser(MIX, SCHED)
CLF = oracle.NoisyClassifier(MIX, SCHED)  # log q(y | x_t), (B, 3)
SMALL = CLIPConfig(in_channels=1, image_size=8, width=8, embed_dim=6, text_dim=12,
                   text_width=8, text_heads=2, max_tokens=4)


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.randint(1, SCHED.T + 1, (n,), generator=g)
    return x, t, g


def test_clip_grad_of_a_linear_encoder_is_its_matrix_times_the_caption():
    """f(x, t) = (1 + t/T) A x: ∇_x s f · g = s (1 + t/T) Aᵀ g, per sample, in inference mode."""
    x, t, g = _batch()
    A = torch.randn(5, 2, generator=g, dtype=torch.float64)  # (D, 2)
    text = torch.randn(16, 5, generator=g, dtype=torch.float64)  # (B, D)

    def enc(x_t, tt):
        return (1 + tt[:, None] / SCHED.T) * x_t @ A.T  # (B, D)

    with torch.inference_mode():
        got = guidance.clip_grad(enc, x, t, text, scale=3.0)
    want = 3.0 * (1 + t[:, None] / SCHED.T) * text @ A  # (B, 2)
    assert torch.allclose(got, want, atol=1e-12)
    one = guidance.clip_grad(enc, x, t, text[:1], scale=1.0)  # (1, D) broadcasts
    assert torch.allclose(one, (1 + t[:, None] / SCHED.T) * text[:1] @ A, atol=1e-12)


def _trained_looking_clip(seed=0) -> NoisyCLIP:
    """A NoisyCLIP in float64 whose FiLM layers are not at their zero start."""
    torch.manual_seed(seed)
    clip = NoisyCLIP(SMALL).double().eval()
    with torch.no_grad():
        for lin in clip.image.film:
            lin.weight.normal_(0, 0.2)
            lin.bias.normal_(0, 0.2)
    return clip


def test_clip_grad_of_the_noisy_clip_matches_finite_differences():
    clip = _trained_looking_clip()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 400, 1000])
    text = functional.normalize(torch.randn(3, SMALL.embed_dim, generator=g,
                                            dtype=torch.float64), dim=-1)
    s = clip.logit_scale
    grad = guidance.clip_grad(clip.encode_image, x, t, text, scale=s)  # (3, 1, 8, 8)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)  # a direction per sample
    h = 1e-5
    with torch.no_grad():
        up = s * (clip.encode_image(x + h * v, t) * text).sum(-1)  # (3,)
        down = s * (clip.encode_image(x - h * v, t) * text).sum(-1)
    fd = (up - down) / (2 * h)
    assert torch.allclose((grad * v).flatten(1).sum(1), fd, rtol=1e-6, atol=1e-8)
    assert all(p.grad is None for p in clip.parameters())


def test_w0_is_the_unguided_model_and_the_clip_is_not_called():
    calls = []

    def enc(x_t, t):
        calls.append(1)
        return x_t

    x, t, _ = _batch()
    text = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    m = guidance.CLIPGuidance(UNCOND, enc, SCHED, 0.0, scale=5.0)
    assert torch.equal(m(x, t, clip_text=text), UNCOND(x, t))
    assert not calls
    with pytest.raises(ValueError, match="clip_text"):
        guidance.CLIPGuidance(UNCOND, enc, SCHED, 1.0)(x, t)
    with pytest.raises(ValueError, match="scale"):
        guidance.CLIPGuidance(UNCOND, enc, SCHED, 1.0, scale=0.0)


def test_an_exact_noisy_classifier_as_clip_gives_the_exact_conditional_model():
    """f(x_t, t) = log q(· | x_t) (B, K), g(c) = one-hot(y), s = 1: f · g = log q(y | x_t), so
    w = 1 on the unconditional denoiser is ε*(x_t, t, y) (eq. 24-25), to float64 round-off."""
    x, t, g = _batch(64)
    y = torch.randint(0, 3, (64,), generator=g)
    onehot = functional.one_hot(y, 3).double()  # (B, K)
    m = guidance.CLIPGuidance(UNCOND, CLF, SCHED, 1.0, scale=1.0)
    assert torch.allclose(m(x, t, clip_text=onehot), COND(x, t, y), atol=1e-10)
    # and it is classifier guidance with the same weight
    cg = guidance.ClassifierGuidance(UNCOND, CLF, SCHED, 2.5)
    m2 = guidance.CLIPGuidance(UNCOND, CLF, SCHED, 2.5)
    assert torch.allclose(m2(x, t, clip_text=onehot), cg(x, t, y=y), atol=1e-10)


def test_guided_samples_are_more_similar_to_the_prompt_for_the_same_noise():
    """A 2-D "CLIP": f(x_t, t) = x_t / |x_t|, the caption "right" g = (1, 0). DDIM from the same
    x_T: the mean f · g of the samples rises with w, and every weight moves it up."""
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(400, 2, generator=g, dtype=torch.float64)
    text = torch.tensor([[1.0, 0.0]], dtype=torch.float64)

    def enc(x_t, t):
        return functional.normalize(x_t, dim=-1)

    def mean_sim(w):
        m = guidance.CLIPGuidance(UNCOND, enc, SCHED, w, scale=1.0)
        x0 = samplers.ddim(guidance.Bound(m, clip_text=text), SCHED, x_T, steps=50)
        return float((enc(x0, None) * text).sum(-1).mean())

    sims = [mean_sim(w) for w in (0.0, 0.5, 2.0)]
    assert sims[0] + 0.2 < sims[1] < sims[2] < 1, sims


def test_noisy_encoder_starts_as_the_plain_encoder_and_then_reads_t():
    torch.manual_seed(0)
    noisy = NoisyImageEncoder(SMALL).eval()
    plain = ImageEncoder(SMALL).eval()
    missing = plain.load_state_dict(noisy.state_dict(), strict=False)
    assert not missing.missing_keys  # every plain weight is in the noisy encoder
    x = torch.randn(4, 1, 8, 8)
    t = torch.tensor([1, 10, 500, 1000])
    assert torch.allclose(noisy(x, t), plain(x), atol=1e-6)  # FiLM starts at zero
    clip = _trained_looking_clip()
    xd = x.double()
    a = clip.encode_image(xd, torch.full((4,), 1))
    b = clip.encode_image(xd, torch.full((4,), 900))
    assert (a - b).abs().max() > 1e-3  # the same image at another t embeds elsewhere
    assert torch.equal(clip.encode_image(xd), a)  # t omitted: x as x_1
    assert torch.allclose(a.norm(dim=-1), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="timestep"):
        noisy(x)
