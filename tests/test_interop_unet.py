"""difflab's U-Net and schedules as diffusers' UNet2DModel and scheduler configs
(difflab.interop.unet_map, schedule_map): the same function for every layout that maps, a
one-line refusal naming the reason for every one that does not."""

from __future__ import annotations

import pytest
import torch

from difflab import schedules
from difflab.build.model import build_model
from difflab.config import load_config
from difflab.errors import InteropError
from difflab.interop.schedule_map import (
    prediction_from_config,
    schedule_from_config,
    scheduler_kwargs,
)
from difflab.interop.unet_map import check_unet, unet2d_config, unet2d_state_dict, unet_problems
from difflab.nn.unet import UNet, UNetConfig
from interop_helpers import randomise

SMALL = dict(in_channels=1, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
             attention_resolutions=(), groups=8)
LAYOUTS = {  # every option that maps, each in some layout
    "ddpm-mid-attention-4-heads": {},
    "attention-at-two-levels-head-width": dict(in_channels=3, channel_mult=(1, 2, 2),
                                               num_res_blocks=2, attention_resolutions=(1, 2),
                                               num_head_channels=8),
    "one-head-biggan-updown-wide-stem": dict(channel_mult=(2, 2), attention_resolutions=(1,),
                                             num_heads=1, resblock_updown=True),
    "biggan-without-attention": dict(resblock_updown=True, mid_attention=False),
    "classes-learned-variance-dropout": dict(num_classes=3, learn_sigma=True, dropout=0.3,
                                             attention_resolutions=(2,), num_head_channels=16),
}
T = 50


@pytest.mark.parametrize("layout", LAYOUTS)
def test_exported_unet_is_the_same_function(layout):
    diffusers = pytest.importorskip("diffusers")
    cfg = UNetConfig(**{**SMALL, **LAYOUTS[layout]})
    net = randomise(UNet(cfg), scale=0.2).eval()
    twin = diffusers.UNet2DModel(**unet2d_config(cfg, T, 8)).eval()
    twin.load_state_dict(unet2d_state_dict(net, T), strict=True)  # every weight, nothing else
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, cfg.in_channels, 8, 8, generator=g)
    t = torch.tensor([1, 2, 17, T - 1, T])  # difflab's t; diffusers' timestep is t - 1
    kw = {}
    if cfg.num_classes:
        kw = dict(y=torch.tensor([0, 1, 2, 3, 3]))  # 3 = the null label ∅
    with torch.no_grad():
        ours = net(x, t, **kw)
        theirs = twin(x, t - 1, class_labels=kw.get("y")).sample
    assert ours.shape == theirs.shape and ours.abs().mean() > 0.1  # not a trivial output
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", [k for k, v in LAYOUTS.items()
                                    if v.get("channel_mult", (1,))[0] == 1])
def test_sinusoid_time_embedding_is_the_same_function_to_float_rounding(layout):
    diffusers = pytest.importorskip("diffusers")
    cfg = UNetConfig(**{**SMALL, **LAYOUTS[layout]})
    net = randomise(UNet(cfg), scale=0.2).eval()
    config = unet2d_config(cfg, 1000, 8, time_embedding="sinusoid")
    assert config["time_embedding_type"] == "positional"  # diffusers' own sin/cos of t'
    twin = diffusers.UNet2DModel(**config).eval()
    twin.load_state_dict(unet2d_state_dict(net, 1000, time_embedding="sinusoid"), strict=True)
    x = torch.randn(6, cfg.in_channels, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([1, 2, 300, 777, 999, 1000])
    y = torch.tensor([0, 1, 2, 3, 0, 3]) if cfg.num_classes else None
    with torch.no_grad():
        ours, theirs = net(x, t, y=y), twin(x, t - 1, class_labels=y).sample
    # exact in real numbers (a rotation of the features); float32 rounds t·ω and (t−1)·ω apart
    assert torch.allclose(ours, theirs, atol=3e-5, rtol=0) and ours.abs().mean() > 0.1


def test_sinusoid_time_embedding_needs_a_first_level_of_model_channels():
    cfg = UNetConfig(**{**SMALL, **LAYOUTS["one-head-biggan-updown-wide-stem"]})
    with pytest.raises(InteropError, match="channel_mult"):
        unet2d_config(cfg, 100, 8, time_embedding="sinusoid")
    assert unet2d_config(cfg, 100, 8)["time_embedding_type"] == "learned"  # the table works


@pytest.mark.parametrize("preset", ["digits", "mnist", "digits-cond", "mnist-base16"])
def test_preset_unets_are_exportable(preset):
    assert unet_problems(build_model(load_config(preset)).config) == []


@pytest.mark.parametrize("fields, reason", [
    (dict(efficient=True), "Efficient U-Net"),
    (dict(rescale_skip=True), "rescale_skip"),
    (dict(num_res_blocks=(1, 2)), "different numbers of residual blocks"),
    (dict(context_dim=8), "cross-attention"),
    (dict(low_res_channels=1), "super-resolution"),
    (dict(attention_resolutions=(1,), num_heads=4), "different head widths"),  # 16/4 vs 32/4
])
def test_unmappable_unets_are_refused_in_one_line(fields, reason):
    cfg = UNetConfig(**{**SMALL, **fields})
    with pytest.raises(InteropError, match=reason) as err:
        check_unet(cfg)
    assert "\n" not in str(err.value) and "no exact diffusers UNet2DModel" in str(err.value)
    with pytest.raises(InteropError):
        unet2d_config(cfg, T, 8)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_named_schedules_are_diffusers_own(name):
    diffusers = pytest.importorskip("diffusers")
    schedule = getattr(schedules, name)(1000)
    kwargs = scheduler_kwargs(schedule)
    assert "trained_betas" not in kwargs  # a built-in schedule travels by name
    theirs = diffusers.DDPMScheduler(**kwargs).alphas_cumprod.double()  # diffusers: float32
    assert torch.allclose(theirs, schedule.alpha_bars, rtol=2e-5, atol=1e-9)
    assert torch.equal(schedule_from_config(kwargs).betas, schedule.betas)  # back, exactly


def test_other_schedules_travel_as_trained_betas_exactly():
    schedule = schedules.from_betas(torch.linspace(1e-3, 0.05, 40) ** 1.5)
    kwargs = scheduler_kwargs(schedule, prediction="v", variance="learned")
    assert len(kwargs["trained_betas"]) == 40 and kwargs["prediction_type"] == "v_prediction"
    assert kwargs["variance_type"] == "learned_range"
    assert torch.equal(schedule_from_config(kwargs).betas, schedule.betas)
    assert prediction_from_config(kwargs) == "v"


def test_scaled_linear_is_read_as_diffusers_computes_it():
    diffusers = pytest.importorskip("diffusers")
    config = dict(num_train_timesteps=100, beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012)
    theirs = diffusers.DDPMScheduler(**config).betas.double()
    assert torch.allclose(schedule_from_config(config).betas, theirs, rtol=1e-6)


@pytest.mark.parametrize("config, reason", [
    (dict(rescale_betas_zero_snr=True), "zero terminal SNR"),
    (dict(beta_schedule="exp"), "not one difflab can read"),
    (dict(num_train_timesteps=3, trained_betas=[0.1, 0.2]), "2 values"),
    (dict(num_train_timesteps=2, trained_betas=[0.1, 1.0]), "not a schedule"),
])
def test_unreadable_scheduler_configs_are_refused(config, reason):
    with pytest.raises(InteropError, match=reason):
        schedule_from_config(config)


def test_unknown_prediction_type_is_refused():
    with pytest.raises(InteropError, match="prediction_type 'flow'"):
        prediction_from_config({"prediction_type": "flow"})
