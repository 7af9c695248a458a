"""The registry of network kinds and build_model: every U-Net option reaches UNetConfig, the
default networks are bit-identical to building them by hand, and nn/ stays below config."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import difflab
from difflab.build.model import MODEL_KWARGS, build_model, unet_kwargs
from difflab.config import TrainConfig, load_config, model_kind
from difflab.errors import ConfigError
from difflab.nn import registry
from difflab.nn.mlp import MLPDenoiser
from difflab.nn.registry import AUTO, MODEL_DATA, MODELS, register_model
from difflab.nn.unet import UNet, UNetConfig
from difflab.nn.unet_blocks import ResBlock

# a small digits U-Net: 16 and 32 channels, one block a level
TINY_UNET = {"dataset": "digits", "model_channels": 16, "num_res_blocks": 1, "attention": "2"}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_registry_lists_mlp_and_unet():
    assert {"mlp", "unet"} <= set(MODELS)
    assert set(MODEL_KWARGS) == set(MODELS)  # every kind can be built from a config
    assert (MODEL_DATA["mlp"], MODEL_DATA["unet"]) == ("points", "images")
    assert AUTO == {"points": "mlp", "images": "unet"}
    assert model_kind(TrainConfig()) == "mlp"
    assert model_kind(load_config("digits")) == "unet"


def test_register_model_adds_one_entry():
    @register_model("tiny-test", data="points")
    def tiny(*, dim: int = 2) -> torch.nn.Module:
        return torch.nn.Linear(dim, dim)

    try:
        assert MODELS["tiny-test"](dim=3).in_features == 3
        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny-test", data="points")(tiny)
        with pytest.raises(ValueError, match="data"):
            register_model("other", data="voxels")
    finally:
        del MODELS["tiny-test"], MODEL_DATA["tiny-test"]


def test_model_kind_must_fit_the_data():
    assert isinstance(build_model(TrainConfig(model="mlp", steps=1)), MLPDenoiser)
    with pytest.raises(ConfigError, match="'model'.*auto or unet"):
        TrainConfig(dataset="digits", model="mlp")
    with pytest.raises(ConfigError, match="'model'.*auto or mlp"):
        TrainConfig(model="unet")
    with pytest.raises(ConfigError, match="'model'"):
        TrainConfig(model="dit")


# --- bit-identical defaults ---------------------------------------------------------------------
def test_default_mlp_is_built_as_by_hand():
    cfg = TrainConfig(seed=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        by_hand = MLPDenoiser(dim=2, hidden=64, depth=3, t_dim=64, out_dim=2)
    assert same_weights(build_model(cfg), by_hand)


@pytest.mark.parametrize("preset", ["digits", "digits-cond"])
def test_default_unet_is_built_as_by_hand(preset):
    """The digits U-Net exactly as build_model made it before the config reached its options."""
    cfg = load_config(preset)
    before = torch.get_rng_state()
    net = build_model(cfg)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left alone
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        by_hand = UNet(UNetConfig(
            in_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=2,
            attention_resolutions=(), dropout=0.0, groups=math.gcd(32, 32, 64),
            learn_sigma=False, num_classes=0, context_dim=0))
    assert net.config == by_hand.config
    assert same_weights(net, by_hand)


# --- every U-Net option -------------------------------------------------------------------------
@pytest.mark.parametrize("key,value,field,want", [
    ("mid_attention", False, "mid_attention", False),
    ("num_heads", 2, "num_heads", 2),
    ("num_head_channels", 8, "num_head_channels", 8),
    ("resblock_updown", True, "resblock_updown", True),
    ("rescale_skip", True, "rescale_skip", True),
    ("efficient", True, "efficient", True),
    ("pool_context", False, "pool_context", False),
])
def test_every_unet_option_reaches_unet_config(key, value, field, want):
    cfg = TrainConfig.from_dict({**TINY_UNET, key: value})
    default = UNetConfig(**unet_kwargs(TrainConfig.from_dict(TINY_UNET)))
    assert getattr(default, field) != want  # the option changes something
    kwargs = unet_kwargs(cfg)
    assert getattr(UNetConfig(**kwargs), field) == want
    if key == "pool_context":  # it matters only with a text context: check the kwargs only
        return
    net = build_model(cfg)
    assert getattr(net.config, field) == want
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 500])
    assert net(x, t).shape == (2, 1, 8, 8)


def test_unet_options_change_the_network():
    def build(**kw):
        return build_model(TrainConfig.from_dict({**TINY_UNET, **kw}))

    # the encoder's stages: stem skip, level-0 block, the down-sampler, level-1 block
    assert not isinstance(build().down[2][0], ResBlock)
    assert isinstance(build(resblock_updown=True).down[2][0], ResBlock)
    assert build(rescale_skip=True).skip_scale == pytest.approx(math.sqrt(0.5))
    assert len(build(efficient=True).skip_channels) == 2  # one skip per level
    assert build(num_head_channels=8).config.heads(32) == 4
    assert not same_weights(build(), build(mid_attention=False))


def test_head_options_are_checked():
    with pytest.raises(ConfigError, match="'num_heads'"):
        TrainConfig.from_dict({**TINY_UNET, "num_heads": 3})
    with pytest.raises(ConfigError, match="'num_head_channels'"):
        TrainConfig.from_dict({**TINY_UNET, "num_head_channels": 12})
    with pytest.raises(ConfigError, match="'num_head_channels'"):
        TrainConfig(num_head_channels=-1)
    # heads need only divide the attended widths: here the middle's 32 alone
    assert TrainConfig.from_dict({**TINY_UNET, "attention": "", "num_heads": 32}).num_heads == 32


# --- layers -------------------------------------------------------------------------------------
def test_nn_imports_nothing_above_it():
    """nn/ sits below config, build, runs and cli: the registry takes plain keywords."""
    above = ("config", "build", "runs", "cli", "training", "pipelines")
    for path in Path(registry.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                top = (node.module or "").split(".")[0]
                assert node.level == 1 or top not in above, f"{path.name} imports ..{top}"
            if isinstance(node, ast.ImportFrom | ast.Import) and not getattr(node, "level", 0):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [
                    a.name for a in node.names]
                for name in names:
                    parts = (name or "").split(".")
                    assert not (parts[0] == "difflab" and len(parts) > 1 and parts[1] in above), (
                        f"{path.name} imports {name}")
    assert difflab.nn.registry is registry
