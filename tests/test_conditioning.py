"""Class and text conditioning of the U-Net and the MLP: the label embedding added to the time
embedding, cross-attention to context tokens (Weng eq. 33), the null condition ∅ (what
classifier-free guidance, eq. 26, needs), the padding mask, and unchanged unconditional weights."""

from __future__ import annotations

import hashlib

import pytest
import torch

from difflab.guidance import ClassifierFree
from difflab.nn.mlp import MLPDenoiser
from difflab.nn.unet import UNet, UNetConfig, masked_mean
from difflab.nn.unet_blocks import Conditioning, CrossAttention, SelfAttention

SMALL = dict(model_channels=16, groups=8, channel_mult=(1, 2, 2), num_res_blocks=1)
K, L, D = 10, 6, 12  # classes; context length and width


def make(seed: int = 0, **kw) -> UNet:
    torch.manual_seed(seed)
    return perturb_zero_init(UNet(UNetConfig(**{**SMALL, **kw})))


def perturb_zero_init(model: torch.nn.Module, seed: int = 1, scale: float = 0.1):
    """Small random values for every all-zero parameter (the zero-initialised output layer,
    residual convs, attention projections): at initialisation no path from t, y or the context
    reaches the output, which would make every dependence test pass vacuously."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return model


def inputs(b: int = 4, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g), torch.randint(1, 1001, (b,), generator=g)


def text(b: int = 4, seed: int = 0, lengths=(3, 6, 1, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    """Context tokens (b, L, D), zero at padding like TextCondition, and the mask (b, L)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(L)[None, :] < torch.tensor(lengths[:b])[:, None]  # (b, L)
    return torch.randn(b, L, D, generator=g) * mask[..., None], mask


def signature(model: torch.nn.Module) -> tuple[int, int, str]:
    """(number of tensors, of numbers, hash of the sorted names and shapes) of a state_dict."""
    sd = model.state_dict()
    names = ";".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(sd.items()))
    return len(sd), sum(v.numel() for v in sd.values()), hashlib.sha256(names.encode()).hexdigest()


# --- unconditional networks are unchanged ----------------------------------------------------


def test_unconditional_state_dicts_unchanged():
    """num_classes = 0 and context_dim = 0 add no parameter: runs saved before conditioning
    existed still load. The signatures were recorded from the code before this change."""
    small = UNet(UNetConfig(**SMALL))
    eff = UNet(UNetConfig(**{**SMALL, "channel_mult": (1, 2)}, efficient=True,
                          resblock_updown=True, attention_resolutions=(1, 2)))
    assert signature(small)[:2] == (166, 300515)
    assert signature(small)[2].startswith("e7b637beaa16ca78")
    assert signature(eff)[:2] == (126, 168259)
    assert signature(eff)[2].startswith("23a419486854b5fc")
    assert signature(MLPDenoiser())[:2] == (18, 132994)
    assert signature(MLPDenoiser())[2].startswith("be64c324be4f3b11")


def test_conditioning_only_adds_parameters():
    """A conditional config holds every tensor of the unconditional one except where the
    cross-attention nests beside a self-attention; the extra parameters are the label table
    (K+1)·E, and per cross-attention layer GN + W_Q + W_K,V + W_O, plus the pooled projection."""
    base = UNet(UNetConfig(**SMALL))
    cls = UNet(UNetConfig(**SMALL, num_classes=K))
    assert set(base.state_dict()) < set(cls.state_dict())
    E = 4 * SMALL["model_channels"]
    assert cls.param_count() - base.param_count() == (K + 1) * E
    txt = UNet(UNetConfig(**SMALL, context_dim=D))
    crosses = [m for m in txt.modules() if isinstance(m, CrossAttention)]
    # one after every self-attention: at factor 2, 1 encoder + 2 decoder stages, and the middle
    assert len(crosses) == sum(isinstance(m, SelfAttention) for m in txt.modules()) == 4
    per_layer = [2 * C + (C * C + C) + (D * 2 * C + 2 * C) + (C * C + C)
                 for C in (m.norm.num_channels for m in crosses)]
    assert txt.param_count() - base.param_count() == sum(per_layer) + D * E


# --- class labels ------------------------------------------------------------------------------


def test_unet_depends_on_label_and_none_is_null():
    model = make(num_classes=K)
    x, t = inputs()
    with torch.no_grad():
        out = model(x, t, y=torch.tensor([0, 1, 2, 3]))
        other = model(x, t, y=torch.tensor([4, 5, 6, 7]))
        null = model(x, t, y=torch.full((4,), K))
        none = model(x, t)
    assert out.shape == x.shape
    assert (out - other).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every row changes
    assert torch.equal(none, null)  # y None is the null label ∅, exactly


def test_mlp_depends_on_label_and_none_is_null():
    torch.manual_seed(0)
    model = perturb_zero_init(MLPDenoiser(dim=2, hidden=32, depth=2, num_classes=K))
    x, t = torch.randn(4, 2), torch.tensor([1, 10, 100, 500])
    with torch.no_grad():
        out = model(x, t, torch.tensor([0, 1, 2, 3]))
        other = model(x, t, torch.tensor([9, 8, 7, 6]))
        assert torch.equal(model(x, t), model(x, t, torch.full((4,), K)))
    assert out.shape == (4, 2)
    assert (out - other).abs().amax(dim=1).min() > 1e-4


@pytest.mark.parametrize("net", ["unet", "mlp"])
def test_label_errors(net):
    if net == "unet":
        model, plain = make(num_classes=K), make()
        x, t = inputs()
    else:
        model, plain = MLPDenoiser(num_classes=K), MLPDenoiser()
        x, t = torch.randn(4, 2), torch.ones(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.10"):
        model(x, t, y=torch.tensor([0, 1, K + 1, 2]))
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.10"):
        model(x, t, y=torch.tensor([0, -1, 1, 2]))
    with pytest.raises(ValueError, match="shape"):
        model(x, t, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="int64"):
        model(x, t, y=torch.zeros(4))
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, t, y=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        MLPDenoiser(num_classes=-1) if net == "mlp" else UNetConfig(num_classes=-1)


# --- text: cross-attention -------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"pool_context": False}, {"rescale_skip": True},
                                {"attention_resolutions": (), "mid_attention": False}])
def test_text_unet_null_caption_is_none_and_depends_on_context(kw):
    """A row with an all-False mask (the empty caption ∅) gives exactly the output of
    context=None, also beside real captions in the same batch; real captions change it."""
    model = make(context_dim=D, **kw)
    if not kw.get("mid_attention", True):  # no attention anywhere: the middle still cross-attends
        assert sum(isinstance(m, CrossAttention) for m in model.modules()) == 1
    x, t = inputs()
    ctx, mask = text()
    null_rows = torch.tensor([False, True, False, True])
    mask = mask & ~null_rows[:, None]
    ctx = ctx * mask[..., None]
    with torch.no_grad():
        none = model(x, t)
        out = model(x, t, context=ctx, context_mask=mask)
        all_null = model(x, t, context=torch.zeros(4, L, D), context_mask=torch.zeros(4, L).bool())
        other = model(x, t, context=text(seed=1)[0] * mask[..., None], context_mask=mask)
    assert out.shape == x.shape
    assert torch.equal(all_null, none)
    assert torch.equal(out[null_rows], none[null_rows])
    assert (out[~null_rows] - none[~null_rows]).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    assert (out[~null_rows] - other[~null_rows]).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_cross_attention_respects_padding_mask():
    """Tokens at masked positions take no part: changing them changes nothing, in the
    attention and in the pooled embedding."""
    model = make(context_dim=D)
    x, t = inputs()
    ctx, mask = text()
    junk = ctx + 5.0 * torch.randn(ctx.shape) * ~mask[..., None]  # change only the padding
    with torch.no_grad():
        a = model(x, t, context=ctx, context_mask=mask)
        b = model(x, t, context=junk, context_mask=mask)
        c = model(x, t, context=junk)  # without the mask the padding is read
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4


def test_cross_attention_block_is_identity_at_init_and_for_null():
    torch.manual_seed(0)
    block = CrossAttention(16, D, heads=2, groups=8)
    x = torch.randn(2, 16, 4, 4)
    ctx, mask = text(2)
    emb = torch.zeros(2, 1)
    assert torch.equal(block(x, Conditioning(emb, ctx, mask)), x)  # W_O starts at zero
    perturb_zero_init(block)
    out = block(x, Conditioning(emb, ctx, torch.stack([mask[0], torch.zeros(L).bool()])))
    assert torch.equal(out[1], x[1]) and not torch.allclose(out[0], x[0])
    assert torch.equal(block(x, Conditioning(emb)), x)


def test_masked_mean():
    ctx, mask = text(4)
    m = masked_mean(ctx, mask)
    for i in range(4):
        assert torch.allclose(m[i], ctx[i, mask[i]].mean(0))
    assert torch.equal(masked_mean(ctx, torch.zeros_like(mask)), torch.zeros(4, D))


def test_context_errors():
    model = make(context_dim=D)
    x, t = inputs()
    ctx, mask = text()
    with pytest.raises(ValueError, match="context"):
        model(x, t, context=torch.zeros(4, L, D + 1))
    with pytest.raises(ValueError, match="context_mask"):
        model(x, t, context=ctx, context_mask=mask.float())
    with pytest.raises(ValueError, match="without context"):
        model(x, t, context_mask=mask)
    with pytest.raises(ValueError, match="context_dim = 0"):
        make()(x, t, context=ctx)


# --- classifier-free guidance, one batched call ----------------------------------------------


def test_classifier_free_batched_class_and_text():
    """ClassifierFree's one call on [x; x] with [cond; ∅] equals (w+1) ε(x, t, c) − w ε(x, t, ∅)
    from two separate calls (Weng eq. 26), for labels and for context tokens with a mask."""
    w = 2.5
    x, t = inputs()
    model = make(num_classes=K)
    y = torch.tensor([3, 1, 4, 1])
    guided = ClassifierFree(model, w, {"y": torch.tensor(K)})
    with torch.no_grad():
        want = (w + 1) * model(x, t, y=y) - w * model(x, t)
        assert torch.allclose(guided(x, t, y=y), want, atol=1e-5)

    model = make(context_dim=D, num_classes=K)
    ctx, mask = text()
    null = {"context": torch.zeros(1, L, D), "context_mask": torch.zeros(1, L, dtype=torch.bool)}
    guided = ClassifierFree(model, w, null)
    with torch.no_grad():  # y is shared by both halves: it is not in null_cond
        want = (w + 1) * model(x, t, y, ctx, mask) - w * model(x, t, y)
        got = guided(x, t, y=y, context=ctx, context_mask=mask)
    assert torch.allclose(got, want, atol=1e-5)
