"""difflab's U-Net (:class:`~difflab.nn.unet.UNet`) as diffusers' ``UNet2DModel``: the config
and the weights, such that the two networks compute the same function.

What makes the mapping exact (each fact read from both sources, checked by
tests/test_interop_unet.py to 1e-5 on random weights and inputs):

- The residual block is diffusers' ``ResnetBlock2D`` with ``resnet_time_scale_shift =
  "scale_shift"``: GN → SiLU → conv, then (1 + scale)·GN(h) + shift with (scale, shift) =
  W·SiLU(emb) chunked in that order, SiLU → dropout → conv, plus a 1×1 shortcut when the widths
  differ (difflab's AdaGN, :class:`~difflab.nn.unet_blocks.ResBlock`). ``resblock_updown``'s
  BigGAN blocks are its ``down=True`` / ``up=True`` (2× average pool, 2× nearest upsample on both
  paths), i.e. ``downsample_type = upsample_type = "resnet"``.
- Self-attention is diffusers' ``Attention`` (GroupNorm, separate q/k/v projections with bias,
  the output projection, a residual sum): difflab's fused ``qkv`` projection is split into
  ``to_q``, ``to_k``, ``to_v``. All attention layers of a ``UNet2DModel`` share one head
  *width* (``attention_head_dim``), or, with None, have one head each.
- The layout is ADM's in both: a skip after the stem, after every encoder block and after every
  down-sampler; decoder levels of ``num_res_blocks + 1`` blocks; the middle block is
  res → attention → res (``add_attention``), its attention with its own GroupNorm
  (``attn_norm_num_groups``, which diffusers drops with scale-shift unless it is given).
- Time: difflab counts steps t = 1..T, diffusers from 0, so diffusers' timestep t' is difflab's
  t = t' + 1 (the scheduler's ``alphas_cumprod[t']`` is difflab's ᾱ_{t'+1}). The export uses
  ``time_embedding_type = "learned"``: a table whose row t' holds difflab's sinusoidal features of
  t' + 1, computed by the same function, so the embedding is the same to the bit (and the table's
  width may exceed difflab's ``model_channels``; extra columns are zero). The price: diffusers
  then takes integer timesteps only (DDPM, DDIM, PNDM, DPM-Solver; not the Euler/Karras
  schedulers, which pass fractional ones). ``time_embedding="sinusoid"`` keeps diffusers'
  sinusoidal features of t' instead (any real timestep) and absorbs the shift into the first
  layer of the time MLP: [sin((t'+1)ω), cos((t'+1)ω)] is a rotation R(ω) of
  [sin(t'ω), cos(t'ω)], so W·f(t'+1) = (W·R)·f(t'). That is exact in real numbers; in float32
  the two sides round t·ω and t'·ω differently (≈ 1e-5 in the output at t ≈ T), and it needs
  ``channel_mult[0] = 1`` (diffusers computes as many features as the first level's width).

No equivalent in ``UNet2DModel`` (refused with the reason): text cross-attention
(``context_dim``), super-resolution inputs (``low_res_channels``, ``aug_embedding``), Imagen's
Efficient U-Net layout (``efficient``), the 1/√2 rescaling of every residual and skip
(``rescale_skip``; diffusers rescales only its middle block), a different number of residual
blocks per level, and attention layers with different head widths.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InteropError
from ..nn.embedding import timestep_embedding
from ..nn.unet import UNet, UNetConfig
from ..nn.unet_blocks import Downsample, ResBlock, SelfAttention, Stage, Upsample

TIME_EMBEDDINGS = ("table", "sinusoid")
RES_NAMES = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2",
             "conv2": "conv2", "skip": "conv_shortcut"}  # difflab ResBlock → ResnetBlock2D


def attention_channels(cfg: UNetConfig) -> list[int]:
    """The width of every self-attention layer: the levels in ``attention_resolutions`` and the
    middle block (``mid_attention``)."""
    widths = [cfg.model_channels * m for level, m in enumerate(cfg.channel_mult)
              if 2**level in cfg.attention_resolutions]
    if cfg.mid_attention:
        widths.append(cfg.model_channels * cfg.channel_mult[-1])
    return widths


def head_width(cfg: UNetConfig) -> int | None:
    """diffusers' ``attention_head_dim``: the one head width of every attention layer, or None
    where every layer has a single head (diffusers' None: one head as wide as the layer)."""
    widths = attention_channels(cfg)
    if all(cfg.heads(ch) == 1 for ch in widths):
        return None
    dims = {ch // cfg.heads(ch) for ch in widths}
    return dims.pop() if len(dims) == 1 else None


def unet_problems(cfg: UNetConfig) -> list[str]:
    """Why this U-Net has no exact ``UNet2DModel`` equivalent ([] when it has one)."""
    problems = []
    if cfg.context_dim:
        problems.append("it reads text through cross-attention (UNet2DModel has none; "
                        "UNet2DConditionModel's blocks differ)")
    if cfg.low_res_channels or cfg.aug_embedding:
        problems.append("it is a super-resolution stage (a low-resolution input and its "
                        "augmentation level)")
    if cfg.efficient:
        problems.append("it has Imagen's Efficient U-Net layout (efficient = true)")
    if cfg.rescale_skip:
        problems.append("it scales every residual and skip by 1/√2 (rescale_skip = true; "
                        "diffusers only rescales its middle block)")
    if len(set(cfg.blocks_per_level)) != 1:
        problems.append(f"its levels have different numbers of residual blocks "
                        f"{cfg.blocks_per_level} (UNet2DModel has one layers_per_block)")
    widths = attention_channels(cfg)
    if not all(cfg.heads(ch) == 1 for ch in widths) and len(
            {ch // cfg.heads(ch) for ch in widths}) > 1:
        problems.append("its attention layers have different head widths "
                        f"({', '.join(f'{ch}/{cfg.heads(ch)}' for ch in widths)}); train with "
                        "num_head_channels set (one width a head) or num_heads = 1")
    return problems


def check_unet(cfg: UNetConfig) -> None:
    """InteropError (one line) naming every reason the U-Net cannot be exported exactly."""
    problems = unet_problems(cfg)
    if problems:
        raise InteropError("this U-Net has no exact diffusers UNet2DModel equivalent: "
                           + "; ".join(problems))


def block_types(cfg: UNetConfig) -> tuple[list[str], list[str]]:
    """diffusers' ``down_block_types`` and ``up_block_types`` (the up ones from the bottom)."""
    down, up = [], []
    for level in range(cfg.levels):
        if 2**level in cfg.attention_resolutions:
            down.append("AttnDownBlock2D")
            up.append("AttnUpBlock2D")
        elif cfg.resblock_updown:
            down.append("ResnetDownsampleBlock2D")
            up.append("ResnetUpsampleBlock2D")
        else:
            down.append("DownBlock2D")
            up.append("UpBlock2D")
    return down, up[::-1]


def check_time_embedding(cfg: UNetConfig, time_embedding: str) -> None:
    if time_embedding not in TIME_EMBEDDINGS:
        raise InteropError(f"time_embedding must be one of {', '.join(TIME_EMBEDDINGS)}, got "
                           f"{time_embedding!r}")
    if time_embedding == "sinusoid" and cfg.channel_mult[0] != 1:
        raise InteropError(f"time_embedding 'sinusoid' needs channel_mult[0] = 1 (diffusers "
                           f"computes {cfg.model_channels * cfg.channel_mult[0]} features, "
                           f"difflab {cfg.model_channels}); export with the 'table' one")


def unet2d_config(cfg: UNetConfig, T: int, sample_size: int | tuple[int, int],
                  time_embedding: str = "table") -> dict[str, Any]:
    """The keywords of diffusers' ``UNet2DModel`` that build this U-Net's twin, for a schedule
    of T steps (the length of the time table) and images of ``sample_size``;
    ``time_embedding``: "table" (exact, integer timesteps) or "sinusoid" (see the module
    docstring)."""
    check_unet(cfg)
    check_time_embedding(cfg, time_embedding)
    table = time_embedding == "table"
    down, up = block_types(cfg)
    mc = cfg.model_channels
    updown = "resnet" if cfg.resblock_updown else "conv"
    return dict(
        sample_size=sample_size, in_channels=cfg.in_channels,
        out_channels=(cfg.out_channels or cfg.in_channels) * (2 if cfg.learn_sigma else 1),
        center_input_sample=False, time_embedding_type="learned" if table else "positional",
        num_train_timesteps=T if table else None,
        time_embedding_dim=4 * mc, flip_sin_to_cos=False, freq_shift=0,
        down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2D",
        block_out_channels=[mc * m for m in cfg.channel_mult],
        layers_per_block=cfg.blocks_per_level[0], mid_block_scale_factor=1.0,
        downsample_padding=1, downsample_type=updown, upsample_type=updown,
        dropout=cfg.dropout, act_fn="silu", attention_head_dim=head_width(cfg),
        norm_num_groups=cfg.groups, attn_norm_num_groups=cfg.groups, norm_eps=1e-5,
        resnet_time_scale_shift="scale_shift", add_attention=cfg.mid_attention,
        class_embed_type=None, num_class_embeds=cfg.num_classes + 1 if cfg.num_classes else None,
    )


def time_table(mc: int, width: int, T: int) -> Tensor:
    """(T, width): row t' = difflab's sinusoidal features of t = t' + 1 (``mc`` of them, as
    :class:`~difflab.nn.embedding.TimestepEmbedding` computes them), zero-padded to ``width``."""
    feats = timestep_embedding(torch.arange(1, T + 1), mc)  # (T, mc)
    return nn.functional.pad(feats, (0, width - mc))


def shift_rotation(mc: int) -> Tensor:
    """R (mc, mc) float64 with f(t + 1) = R f(t) for difflab's features f(t) = [sin(tω),
    cos(tω)] (ω as :func:`~difflab.nn.embedding.timestep_embedding` computes them in float32;
    an odd ``mc``'s zero column stays zero)."""
    f1 = timestep_embedding(torch.ones(1, dtype=torch.long), mc)[0].double()  # [sin ω, cos ω]
    half = mc // 2
    sin, cos = f1[:half], f1[half:2 * half]
    R = torch.zeros(mc, mc, dtype=torch.float64)
    i = torch.arange(half)
    R[i, i], R[i, i + half] = cos, sin  # sin(tω + ω) = sin(tω) cos ω + cos(tω) sin ω
    R[i + half, i], R[i + half, i + half] = -sin, cos  # cos(tω + ω) = cos cos − sin sin
    return R


def unet2d_state_dict(net: UNet, T: int, time_embedding: str = "table") -> dict[str, Tensor]:
    """The weights of :func:`unet2d_config`'s ``UNet2DModel`` for ``net`` (copies, float32)."""
    cfg = net.config
    check_unet(cfg)
    check_time_embedding(cfg, time_embedding)
    out: dict[str, Tensor] = {}

    def put(prefix: str, module: nn.Module, names: dict[str, str] | None = None) -> None:
        for key, value in module.state_dict().items():
            head, _, rest = key.partition(".")
            name = f"{names[head]}.{rest}" if names else key
            out[f"{prefix}.{name}"] = value.detach().clone()

    def block(prefix: str, module: nn.Module) -> None:
        if isinstance(module, ResBlock):
            put(prefix, module, RES_NAMES)
        elif isinstance(module, SelfAttention):
            put(f"{prefix}.group_norm", module.norm)
            for part in ("weight", "bias"):  # the fused [W_Q; W_K; W_V] split in three
                for name, w in zip(("to_q", "to_k", "to_v"),
                                   getattr(module.qkv, part).detach().chunk(3, dim=0),
                                   strict=True):
                    out[f"{prefix}.{name}.{part}"] = w.clone()
            put(f"{prefix}.to_out.0", module.proj)
        elif isinstance(module, (Downsample, Upsample)):
            put(f"{prefix}.conv", module.conv)
        else:  # pragma: no cover - check_unet refuses the layouts that have other blocks
            raise InteropError(f"no diffusers equivalent for {type(module).__name__}")

    mc, width = cfg.model_channels, cfg.model_channels * cfg.channel_mult[0]
    lin1, lin2 = net.time_embed.mlp[0], net.time_embed.mlp[2]
    if time_embedding == "table":
        out["time_proj.weight"] = time_table(mc, width, T)
        out["time_embedding.linear_1.weight"] = nn.functional.pad(lin1.weight.detach(),
                                                                  (0, width - mc))
    else:  # W·f(t' + 1) = (W·R)·f(t'), with diffusers' own f(t') (channel_mult[0] = 1)
        out["time_embedding.linear_1.weight"] = (lin1.weight.detach().double()
                                                 @ shift_rotation(mc)).float()
    out["time_embedding.linear_1.bias"] = lin1.bias.detach().clone()
    put("time_embedding.linear_2", lin2)
    if cfg.num_classes:
        out["class_embedding.weight"] = net.label_embed.weight.detach().clone()
    put("conv_in", net.inp)

    stages = iter(net.down)
    assert len(next(stages)) == 0  # the stem's output: a skip, no blocks
    n = cfg.blocks_per_level[0]
    for level in range(cfg.levels):
        for j in range(n):
            stage = next(stages)
            block(f"down_blocks.{level}.resnets.{j}", stage[0])
            if len(stage) > 1:
                block(f"down_blocks.{level}.attentions.{j}", stage[1])
        if level < cfg.levels - 1:
            block(f"down_blocks.{level}.downsamplers.0", next(stages)[0])

    mid = list(net.mid)
    block("mid_block.resnets.0", mid[0])
    if cfg.mid_attention:
        block("mid_block.attentions.0", mid[1])
    block("mid_block.resnets.1", mid[-1])

    stages = iter(net.up)
    for i in range(cfg.levels):
        for j in range(n + 1):
            stage: Stage = next(stages)
            for module in stage:
                if isinstance(module, SelfAttention):
                    block(f"up_blocks.{i}.attentions.{j}", module)
                elif isinstance(module, Upsample) or getattr(module, "resample", None) == "up":
                    block(f"up_blocks.{i}.upsamplers.0", module)
                else:
                    block(f"up_blocks.{i}.resnets.{j}", module)
    put("conv_norm_out", net.out[0])
    put("conv_out", net.out[2])
    return {k: v.float().contiguous() for k, v in out.items()}
