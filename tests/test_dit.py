"""The diffusion transformer of nn/dit.py (Peebles & Xie 2023): adaLN-Zero starts as the identity
with a zero output and learns, the position embedding is its closed form, patches round-trip,
every registered size has the right shape, parameter count and FLOPs (the paper's Table 4), a
short run through the one training loop lowers the loss, and the null conditions are the
unconditional path that classifier-free guidance needs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from difflab.build.model import build_model
from difflab.config import TrainConfig, load_config
from difflab.errors import ConfigError
from difflab.guidance import ClassifierFree
from difflab.nn.dit import DIT_BLOCKS, DIT_SIZES, DiT, DiTConfig, dit_flops, dit_param_count
from difflab.nn.dit_blocks import AdaLNZeroBlock, from_patches, sincos_2d, to_patches
from difflab.parameterization import LearnedVariance
from difflab.runs.train import train
from difflab.training.losslog import read_loss_csv

TINY = dict(depth=2, width=32, heads=2, in_channels=1, input_size=8)
K = 10  # classes


def make(seed: int = 0, **kw) -> DiT:
    torch.manual_seed(seed)
    return DiT(DiTConfig(**{**TINY, **kw}))


def scramble(net: torch.nn.Module, seed: int = 1, scale: float = 0.1) -> torch.nn.Module:
    """Give every all-zero parameter (gates, final layer, text projections) random values, so
    that conditions reach the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return net


def inputs(b: int = 4, c: int = 1, h: int = 8, w: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g), torch.randint(1, 1001, (b,), generator=g)


# --- adaLN-Zero at initialisation ---------------------------------------------------------------
def test_adaln_zero_blocks_are_the_identity_and_the_output_is_zero():
    net = make(num_classes=K, learn_sigma=True)
    x, t = inputs()
    y = torch.tensor([0, 3, K, 9])
    c = net.condition(t, y)
    h = net.patchify(x)
    assert h.abs().sum() > 0
    for block in net.blocks:
        assert isinstance(block, AdaLNZeroBlock)
        assert torch.equal(block(h, c), h)  # exactly: every gate α is 0
    out = net(x, t, y)
    assert out.shape == (4, 2, 8, 8) and torch.equal(out, torch.zeros_like(out))


def test_initialisation_follows_dit():
    net = make(num_classes=K)
    D, C, p = 32, 1, 2
    w = net.x_embedder.weight  # Xavier-uniform as the linear map (D, C·p²)
    bound = math.sqrt(6 / (C * p * p + D))
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert not net.x_embedder.bias.any()
    for emb in (net.y_embedder.weight, net.t_embedder[0].weight, net.t_embedder[2].weight):
        assert abs(emb.std().item() - 0.02) < 0.004  # N(0, 0.02)
    qkv = net.blocks[0].attn.qkv.weight  # Xavier: fan_in D, fan_out 3D
    assert qkv.abs().max() <= math.sqrt(6 / (4 * D)) and not net.blocks[0].attn.qkv.bias.any()
    for block in net.blocks:
        assert not any(p.any() for p in block.adaLN_modulation[-1].parameters())
    assert not any(p.any() for p in net.final_layer.parameters())
    for norm in (net.blocks[0].norm1, net.blocks[0].norm2, net.final_layer.norm_final):
        assert norm.weight is None and norm.eps == 1e-6  # LayerNorm without affine


def test_gradients_reach_the_gates_and_the_final_layer():
    """The zero final layer passes no gradient back on the first step, so only it moves then;
    on the second step the gates (adaLN_modulation[-1]) and the final modulation move too."""
    net = make(num_classes=K)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, t = inputs(8)
    y = torch.arange(8) % (K + 1)
    eps = torch.randn_like(x)

    def step() -> None:
        opt.zero_grad()
        (net(x, t, y) - eps).square().mean().backward()
        opt.step()

    step()
    assert net.final_layer.linear.weight.any()
    assert not net.blocks[0].adaLN_modulation[-1].weight.grad.any()
    step()
    for block in net.blocks:
        gates = block.adaLN_modulation[-1].weight.view(6, 32, 32)[[2, 5]]  # α₁, α₂ rows
        assert gates.any()
    assert net.final_layer.adaLN_modulation[-1].weight.any()
    h = net.patchify(x)
    assert not torch.equal(net.blocks[0](h, net.condition(t, y)), h)


# --- positions and patches ----------------------------------------------------------------------
def test_position_embedding_equals_the_closed_form():
    D, gh, gw = 16, 3, 5
    pe = sincos_2d(D, gh, gw)
    omega = [10000 ** (-i / (D // 4)) for i in range(D // 4)]
    for r in range(gh):
        for col in range(gw):
            want = ([math.sin(col * w) for w in omega] + [math.cos(col * w) for w in omega]
                    + [math.sin(r * w) for w in omega] + [math.cos(r * w) for w in omega])
            assert torch.allclose(pe[r * gw + col], torch.tensor(want), atol=1e-6)
    # DiT's / MAE's numpy recipe (meshgrid puts the column first)
    gw_, gh_ = np.meshgrid(np.arange(4, dtype=np.float64), np.arange(4, dtype=np.float64))

    def one_d(d, pos):
        om = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), om)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    ref = np.concatenate([one_d(D // 2, gw_), one_d(D // 2, gh_)], axis=1)
    assert np.allclose(sincos_2d(D, 4, 4).numpy(), ref, atol=1e-6)
    net = make(input_size=(8, 12))  # the buffer is the closed form of the configured grid
    assert torch.equal(net.pos_embed, sincos_2d(32, 4, 6))
    assert not net.pos_embed.requires_grad and "pos_embed" not in net.state_dict()
    assert torch.equal(net.position_embedding(4, 4), sincos_2d(32, 2, 2))


def test_patchify_then_unpatchify_is_the_identity():
    x = torch.randn(2, 3, 8, 12)
    for p in (1, 2, 4):
        z = to_patches(x, p)
        assert z.shape == (2, (8 // p) * (12 // p), p * p * 3)
        assert torch.equal(from_patches(z, p, 8, 12), x)
        assert torch.equal(to_patches(from_patches(z, p, 8, 12), p), z)
    # the patch embedding is a linear map of each patch, and the final layer's layout inverts it
    net = make(in_channels=3, input_size=(8, 12), patch_size=4)
    W = net.x_embedder.weight.permute(0, 2, 3, 1).reshape(32, -1)  # (D, p·p·C) in (p, q, C)
    tokens = net.x_embedder(x).flatten(2).transpose(1, 2)
    assert torch.allclose(tokens, to_patches(x, 4) @ W.T + net.x_embedder.bias, atol=1e-5)
    assert torch.equal(net.unpatchify(to_patches(x, 4), 8, 12), x)


# --- every size ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", list(DIT_SIZES))
def test_every_size_and_patch_has_the_right_shape_and_parameter_count(size):
    """Built on the meta device (no memory), at 16×16 with 3 channels and learned Σ."""
    for p in (2, 4, 8):
        cfg = DiTConfig.named(size, patch_size=p, in_channels=3, input_size=16, num_classes=K,
                              learn_sigma=True)
        with torch.device("meta"):
            net = DiT(cfg)
            out = net(torch.zeros(2, 3, 16, 16), torch.ones(2, dtype=torch.long))
        assert out.shape == (2, 6, 16, 16)
        assert net.param_count() == dit_param_count(cfg)


def test_paper_sizes_match_table_4():
    """DiT-S/2 … XL/2 on 32×32×4 latents, 1000 classes, learned Σ: 33, 130, 458, 675 M
    parameters and 6.06, 23.01, 80.71, 118.64 Gflops (fvcore's: one per multiply-add)."""
    paper = {"S": (33, 6.06), "B": (130, 23.01), "L": (458, 80.71), "XL": (675, 118.64)}
    for size, (mparams, gflops) in paper.items():
        cfg = DiTConfig.named(size, patch_size=2, num_classes=1000, learn_sigma=True)
        assert round(dit_param_count(cfg) / 1e6) == mparams
        assert abs(dit_flops(cfg) / 2e9 - gflops) < 0.01 * gflops


@pytest.mark.parametrize("block", DIT_BLOCKS)
def test_flops_per_forward_match_the_analytic_count(block):
    for context_dim in (0, 24):
        net = make(block=block, num_classes=K, context_dim=context_dim, input_size=(8, 12))
        x, t = inputs(3, h=8, w=12)
        kw = {"context": torch.randn(3, 5, 24), "context_mask": torch.ones(3, 5, dtype=bool)}
        # the math kernel of attention is matrix products the counter sees (the fused CPU
        # kernel has no FLOP formula registered)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            net(x, t, torch.tensor([1, 2, K]), **(kw if context_dim else {}))
        want = dit_flops(net.config, 8, 12, batch=3, context_tokens=5 if context_dim else 0)
        assert counter.get_total_flops() == want


def test_every_block_design_runs_on_any_size_and_channels():
    x, t = inputs(2, c=3, h=12, w=8)
    for block in DIT_BLOCKS:
        net = scramble(make(block=block, in_channels=3, input_size=4, patch_size=4,
                            num_classes=K))
        out = net(x, t, torch.tensor([0, K]))  # 12×8, not the configured 4×4
        assert out.shape == (2, 3, 12, 8) and torch.isfinite(out).all()
        out.sum().backward()
        assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        make(patch_size=4)(torch.randn(1, 1, 6, 8), torch.ones(1, dtype=torch.long))


# --- conditioning -------------------------------------------------------------------------------
@pytest.mark.parametrize("block", DIT_BLOCKS)
def test_null_label_is_the_unconditional_path_and_cfg_at_w0_is_conditional(block):
    net = scramble(make(block=block, num_classes=K))
    x, t = inputs()
    y = torch.tensor([0, 3, 7, 9])
    with torch.no_grad():
        cond, null = net(x, t, y), net(x, t)
        assert torch.equal(net(x, t, torch.full_like(y, K)), null)
        assert not torch.allclose(cond, null)  # the label reaches the output
        assert torch.equal(ClassifierFree(net, 0.0, {"y": torch.tensor(K)})(x, t, y=y), cond)
        guided = ClassifierFree(net, 2.0, {"y": torch.tensor(K)})(x, t, y=y)
        assert torch.allclose(guided, 3 * cond - 2 * null, atol=1e-5)


def test_text_conditioning_reads_the_caption_and_an_empty_one_is_null():
    net = scramble(make(context_dim=24))
    x, t = inputs()
    g = torch.Generator().manual_seed(2)
    ctx = torch.randn(4, 5, 24, generator=g)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0] * 5, [1] * 5, [0] * 5], dtype=torch.bool)
    with torch.no_grad():
        out, none = net(x, t, context=ctx, context_mask=mask), net(x, t)
    assert torch.equal(out[[1, 3]], none[[1, 3]])  # all-False rows = ∅ exactly
    assert not torch.allclose(out[[0, 2]], none[[0, 2]])
    with pytest.raises(ValueError, match="context"):
        make()(x, t, context=ctx)
    cfg = TrainConfig(dataset="digits", model="dit", dit_size="T", cond="text")
    assert build_model(cfg).config.context_dim == 384  # MiniLM's width, without loading it


# --- config and training ------------------------------------------------------------------------
def test_presets_and_config_checks():
    for preset in ("digits-dit", "mnist-dit"):
        cfg = load_config(preset)
        assert cfg.model == "dit" and cfg.cond == "class" and cfg.eval_guidance > 0
        net = build_model(cfg)
        assert isinstance(net, DiT) and net.config.block == "adaln-zero"
    learned = build_model(TrainConfig(dataset="digits", model="dit", dit_size="T",
                                      variance="learned", loss="hybrid"))
    assert isinstance(learned, LearnedVariance) and learned.net.config.out_channels == 2
    for bad in ({"dit_size": "XXL"}, {"dit_block": "film"}, {"patch_size": 3},
                {"patch_size": 0}):
        with pytest.raises(ConfigError, match=f"'{next(iter(bad))}'"):
            TrainConfig(dataset="digits", model="dit", **bad)
    TrainConfig(dataset="digits", patch_size=3)  # the U-Net ignores the DiT's keys


def test_a_short_run_through_the_training_loop_lowers_the_loss(tmp_path):
    cfg = TrainConfig(dataset="digits", model="dit", dit_size="T", patch_size=4, cond="class",
                      steps=40, batch=32, lr=3e-3, warmup=5, log_every=5, checkpoint_every=40,
                      threads=1)
    run = train(cfg, tmp_path / "run", progress=False, evaluate_after=False)
    losses = [v for _, v in read_loss_csv(run / "loss.csv")]
    assert losses[0] > 0.9 and losses[-1] < 0.75 * losses[0]
