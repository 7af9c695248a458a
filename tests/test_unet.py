"""The U-Net of nn/unet.py: shapes, zero initialisation, time dependence, attention, the efficient
and BigGAN variants, the input-size error, live gradients, safetensors round trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from difflab.nn.unet import UNet, UNetConfig
from difflab.nn.unet_blocks import ResBlock, SelfAttention, zero_init
from difflab.parameterization import LearnedVariance

SMALL = dict(model_channels=16, groups=8, channel_mult=(1, 2, 2), num_res_blocks=1)


def make(seed: int = 0, **kw) -> UNet:
    torch.manual_seed(seed)
    return UNet(UNetConfig(**{**SMALL, **kw}))


def perturb_zero_init(model: UNet, seed: int = 1, scale: float = 0.1) -> UNet:
    """Give every all-zero parameter (the zero-initialised convs and projections) small random
    values. Perturbing only the output conv is not enough to see t: every residual block starts
    as its skip path (its last conv is zero), so at initialisation no path from t reaches the
    output; the time dependence arrives once those convs move."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return model


def inputs(b: int, c: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, size, size, generator=g), torch.randint(1, 1001, (b,), generator=g)


@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 16, 32])
def test_output_shape(size, channels, learn_sigma):
    model = make(in_channels=channels, learn_sigma=learn_sigma)
    x, t = inputs(2, channels, size)
    out = model(x, t)
    assert out.shape == (2, channels * (2 if learn_sigma else 1), size, size)


def test_out_channels_and_learned_variance_wrapper():
    model = make(in_channels=3, out_channels=1, learn_sigma=True)
    x, t = inputs(2, 3, 8)
    assert model(x, t).shape == (2, 2, 8, 8)
    eps, v = LearnedVariance(model)(x, t)
    assert eps.shape == v.shape == (2, 1, 8, 8)


def test_bad_size_message():
    with pytest.raises(ValueError) as err:
        make()(*inputs(1, 3, 30))
    assert str(err.value) == (
        "input 30×30 is not divisible by 4 (3 resolution levels); resize or pad to a multiple of 4"
    )
    with pytest.raises(ValueError, match=r"input 28×28 is not divisible by 8 \(4 resolution"):
        make(channel_mult=(1, 2, 2, 2))(*inputs(1, 3, 28))
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\)"):
        make()(*inputs(1, 1, 8))


def test_config_errors_name_the_convention():
    with pytest.raises(ValueError, match="downsampling factors"):
        UNetConfig(**SMALL, attention_resolutions=(16,))  # a pixel size, not a factor
    with pytest.raises(ValueError, match="groups=5"):
        UNetConfig(**{**SMALL, "groups": 5})
    with pytest.raises(ValueError, match="num_res_blocks"):
        UNetConfig(**{**SMALL, "num_res_blocks": (1, 2)})


def test_zero_output_at_initialisation():
    model = make(learn_sigma=True, resblock_updown=True)
    x, t = inputs(4, 3, 16)
    assert torch.equal(model(x, t), torch.zeros(4, 6, 16, 16))


def test_output_depends_on_t():
    model = perturb_zero_init(make()).eval()
    x, _ = inputs(1, 3, 16)
    x = x.expand(3, -1, -1, -1)  # one image, three noise levels
    out = model(x, torch.tensor([1, 10, 900]))
    assert (out[0] - out[1]).abs().max() > 1e-4
    assert (out[1] - out[2]).abs().max() > 1e-4


def test_samples_in_a_batch_are_independent():
    """GroupNorm, attention and the embedding must not mix samples (a bad reshape would)."""
    model = perturb_zero_init(make(attention_resolutions=(1, 2))).eval()
    x, t = inputs(3, 3, 8)
    together = model(x, t)
    alone = torch.cat([model(x[i : i + 1], t[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_attention_present_at_the_chosen_factor_and_used():
    cfg = dict(num_res_blocks=2, attention_resolutions=(2,), mid_attention=False)
    model = perturb_zero_init(make(**cfg)).eval()
    attn = [m for m in model.modules() if isinstance(m, SelfAttention)]
    assert len(attn) == 2 + 3  # encoder: one per res block; decoder: one per res block + 1
    plain = make(**{**cfg, "attention_resolutions": ()})
    assert not any(isinstance(m, SelfAttention) for m in plain.modules())
    # a factor, not a pixel size: factor 2 on 16×16 input attends over 8×8 = 64 tokens
    seen = []
    hook = attn[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[-2:]))
    x, t = inputs(2, 3, 16)
    with torch.no_grad():
        with_attn = model(x, t)
        hook.remove()
        for m in attn:
            zero_init(m.proj)  # switch attention off: each block becomes the identity
        without = model(x, t)
    assert seen == [torch.Size([8, 8])]
    assert (with_attn - without).abs().max() > 1e-4


@pytest.mark.parametrize("updown", [False, True])
def test_efficient_variant(updown):
    model = make(efficient=True, num_res_blocks=(1, 2, 3), resblock_updown=updown,
                 rescale_skip=True, learn_sigma=True)
    assert len(model.skip_channels) == 3  # Imagen: one skip per level
    blocks = [sum(isinstance(m, ResBlock) for m in s.modules()) for s in model.down]
    assert blocks == [1, 2 + updown, 3 + updown]  # more blocks at low resolution
    x, t = inputs(2, 3, 16)
    assert perturb_zero_init(model)(x, t).shape == (2, 6, 16, 16)


def test_resblock_updown_variant():
    model = make(resblock_updown=True, rescale_skip=True)
    assert not any(type(m).__name__ in ("Downsample", "Upsample") for m in model.modules())
    x, t = inputs(2, 3, 32)
    assert perturb_zero_init(model)(x, t).shape == (2, 3, 32, 32)


@pytest.mark.parametrize(
    "kw",
    [
        dict(attention_resolutions=(1, 4), learn_sigma=True),
        dict(efficient=True, num_res_blocks=(1, 1, 2), resblock_updown=True, rescale_skip=True,
             num_head_channels=8),
    ],
)
def test_every_parameter_gets_a_gradient(kw):
    model = perturb_zero_init(make(**kw))
    x, t = inputs(2, 3, 16)
    out = model(x, t)
    (out * torch.randn_like(out)).sum().backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead


def test_dropout_only_in_training():
    model = perturb_zero_init(make(dropout=0.5))
    x, t = inputs(2, 3, 8)
    assert not torch.equal(model.train()(x, t), model(x, t))
    assert torch.equal(model.eval()(x, t), model(x, t))


def test_channels_last_gives_the_same_output():
    model = perturb_zero_init(make(attention_resolutions=(2,))).eval()
    x, t = inputs(2, 3, 16)
    ref = model(x, t)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.to(memory_format=torch.channels_last), t), ref,
                               rtol=1e-4, atol=1e-5)


def test_safetensors_round_trip(tmp_path):
    model = perturb_zero_init(make(learn_sigma=True, resblock_updown=True)).eval()
    save_file(model.state_dict(), tmp_path / "unet.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))

    config = UNetConfig(**json.loads((tmp_path / "config.json").read_text()))
    assert config == model.config
    loaded = UNet(config).eval()  # zero-initialised: differs until loaded
    loaded.load_state_dict(load_file(tmp_path / "unet.safetensors"), strict=True)
    x, t = inputs(2, 3, 8)
    assert torch.equal(loaded(x, t), model(x, t))
