"""The U-Net blocks' faster forms against their definitions: AdaGN as one GroupNorm call, the
nearest-upsample + conv as one transposed convolution, and the in-place element-wise
ops of the sampling path — outputs and gradients, in float32 and by gradcheck in float64."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from difflab.nn.unet import UNet, UNetConfig
from difflab.nn.unet_blocks import (
    Conditioning,
    ResBlock,
    SelfAttention,
    Upsample,
    ada_group_norm,
    upsample_conv,
)


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Random values in every parameter, zero-initialised ones and GroupNorm's affine included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


@pytest.mark.parametrize("channels, groups", [(8, 8), (12, 4), (6, 1)])
def test_ada_group_norm_is_scale_and_shift_of_group_norm(channels, groups):
    torch.manual_seed(0)
    norm = randomise(torch.nn.GroupNorm(groups, channels))
    h = (2 + torch.randn(3, channels, 5, 4)).requires_grad_()
    scale, shift = (torch.randn(3, channels, requires_grad=True) for _ in range(2))
    want = torch.addcmul(shift[:, :, None, None], norm(h), 1 + scale[:, :, None, None])
    got = ada_group_norm(h, norm, scale, shift)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    cot = torch.randn_like(want)
    inputs = [h, scale, shift, norm.weight, norm.bias]
    for a, b in zip(torch.autograd.grad(got, inputs, cot), torch.autograd.grad(want, inputs, cot),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (1, 5, 3, 6), (2, 4, 1, 1)])
@pytest.mark.parametrize("out_ch, bias", [(4, True), (7, False)])
def test_upsample_conv_is_conv_of_nearest_upsampling(shape, out_ch, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(shape[1], out_ch, 3, padding=1, bias=bias)
    x = torch.randn(shape, requires_grad=True)
    want = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # the definition
    got = upsample_conv(x, conv.weight, conv.bias)
    assert got.shape == want.shape == (shape[0], out_ch, 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    cot = torch.randn_like(want)
    inputs = [x, *conv.parameters()]
    for a, b in zip(torch.autograd.grad(got, inputs, cot), torch.autograd.grad(want, inputs, cot),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ResBlock(4, 4, 6, groups=2),
        lambda: ResBlock(4, 6, 6, groups=2, rescale=True),  # 1×1 skip conv, 1/√2
        lambda: ResBlock(4, 4, 6, groups=2, resample="up"),
        lambda: ResBlock(4, 4, 6, groups=2, resample="down", rescale=True),
        lambda: SelfAttention(4, heads=2, groups=2, rescale=True),
        lambda: Upsample(4),
    ],
)
def test_blocks_pass_gradcheck(make):
    """The in-place residual sum and SiLU, AdaGN and the upsampling convolution give exact
    gradients (float64 finite differences), for the input, the embedding and every weight."""
    torch.manual_seed(0)
    block = randomise(make().double())
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in block.named_parameters()]

    def f(x, emb, *params):
        weights = dict(zip(names, params, strict=True))
        return torch.func.functional_call(block, weights, (x, Conditioning(emb=emb)))

    assert torch.autograd.gradcheck(
        f, (x, emb, *[p.detach().requires_grad_() for p in block.parameters()]))


@pytest.mark.parametrize("kw", [dict(attention_resolutions=(1, 2)),
                                dict(resblock_updown=True, rescale_skip=True, learn_sigma=True),
                                dict(efficient=True, num_res_blocks=(1, 2, 2))])
def test_sampling_path_equals_training_path(kw):
    """Under inference_mode the blocks work in place (SiLU, residual sums); the output must be
    that of the autograd path, and the caller's input left alone."""
    torch.manual_seed(0)
    model = randomise(UNet(UNetConfig(model_channels=8, groups=4, channel_mult=(1, 2, 2), **kw)))
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([1, 500, 1000])
    x_copy = x.clone()
    with_grad = model(x, t)
    assert with_grad.requires_grad
    with torch.inference_mode():
        sampled = model(x, t)
    with torch.no_grad():
        no_grad = model(x, t)
    assert torch.equal(x, x_copy)
    torch.testing.assert_close(sampled, with_grad.detach(), rtol=0, atol=0)
    torch.testing.assert_close(no_grad, with_grad.detach(), rtol=0, atol=0)
