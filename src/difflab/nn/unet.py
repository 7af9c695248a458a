"""The U-Net noise predictor ε_θ(x_t, t) of DDPM, with the ADM and Imagen changes (Weng, "Model
Architecture").

The U-Net (Ronneberger et al. 2015) is a stack of stages that halve the resolution, a middle, and
a stack that doubles it back, each decoder stage starting from its encoder twin's output
concatenated on the channels (the skip connections). The diffusion version:

- Ho et al. 2020, Appendix B: wide residual blocks, GroupNorm, the sinusoidal time embedding fed
  to every residual block, self-attention at 16×16, dropout, 2 blocks per resolution.
- Nichol & Dhariwal 2021 (improved DDPM): a second output, the vector v that mixes β_t and β̃_t in
  the learned variance Σ_θ (Weng eq. 23) — ``learn_sigma``.
- Dhariwal & Nichol 2021 (ADM), §3: attention at several resolutions with several heads (or a
  fixed number of channels a head), BigGAN residual blocks for up/down-sampling
  (``resblock_updown``), residual connections rescaled by 1/√2 (``rescale_skip``), and the
  adaptive group norm (AdaGN) that injects the embedding as a scale and shift.
- Saharia et al. 2022 (Imagen), Appendix F, "Efficient U-Net" (``efficient``): more residual
  blocks at low resolution (give ``num_res_blocks`` per level, e.g. (1, 2, 4)), one skip per
  level, and down-sampling *before* the convolutions of an encoder level and up-sampling *after*
  those of a decoder level, so the convolutions run at the lower resolution. Imagen also scales
  the skips by 1/√2, which it found necessary with many blocks: set ``rescale_skip`` with it.

Layout, for ``efficient=False`` (ADM), with L = len(channel_mult) levels::

    stem conv → [stage per res block (ResBlock [+ attention]); Downsample]×L → middle
    → [stage per res block + 1 (ResBlock [+ attention]); Upsample]×L → GN, SiLU, conv (zero)

The output layer starts at zero, so an untrained model predicts ε̂ = 0 (ADM); so do the last conv
of every residual block and the output projection of every attention block.

Hooks for later conditioning: :meth:`UNet.condition` builds the :class:`Conditioning` that every
block reads (a class-label embedding is added to ``emb`` there); :meth:`UNet.encode` and
:meth:`UNet.decode` split the network at the skip connections, and ``skip_channels`` /
``mid_channels`` give their widths, so a ControlNet can run a copy of ``inp``, ``down`` and
``mid`` and add zero-convolved residuals to the skips before :meth:`decode`.

Conditioning, ``forward(x_t, t, y=None, context=None, context_mask=None)``; every omitted
condition is the null condition ∅, so one network gives both ε_θ(x_t, t, y) and
ε_θ(x_t, t, ∅) for classifier-free guidance (Weng eq. 26):

- class labels (``num_classes`` = K > 0): y int64 (B,) in 0..K, where K is the null label ∅; an
  embedding of y is added to the time embedding, as in ADM (Dhariwal & Nichol 2021) and GLIDE.
- text (``context_dim`` = D > 0): tokens τ_θ(y) (B, L, D) with a padding mask (B, L) bool, read
  by a :class:`CrossAttention` after every self-attention layer and in the middle block (Weng
  eq. 33; Rombach et al. 2022). With ``pool_context`` the masked mean of the tokens, projected,
  is also added to the time embedding (Imagen, Saharia et al. 2022, §2.2 / App. F). A row whose
  mask is all False (an empty caption) is ∅: exactly the output of ``context=None``.

Super-resolution (a stage of a cascade; Ho et al. 2021, "Cascaded Diffusion Models"; Weng,
"Scale up Generation Resolution and Quality"): with ``low_res_channels`` = C_z > 0 the network is
p_θ(x | z), z (B, C_z, h, w) the ``low_res`` keyword, which it upsamples bilinearly
(``align_corners=False``) to x_t's H × W and concatenates to x_t on the channels before the stem;
with ``aug_embedding`` the level s of the noise-conditioning augmentation (``aug_level``, int64
(B,) in 0..T, 0 = a clean z; None = 0) is embedded like t (sinusoid + MLP) and added to the time
embedding (Saharia et al. 2022, Imagen, §2.5).

With ``num_classes = 0``, ``context_dim = 0``, ``low_res_channels = 0`` and ``aug_embedding`` off
(the defaults) the network and its state_dict are the unconditional ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .embedding import TimestepEmbedding, check_aug_level, check_labels, with_low_res
from .unet_blocks import (
    SQRT_HALF,
    Conditioning,
    CrossAttention,
    Downsample,
    ResBlock,
    SelfAttention,
    Stage,
    Upsample,
    zero_init,
)


@dataclass(frozen=True)
class UNetConfig:
    """Shape of a :class:`UNet`. Level ℓ (0-based) runs at 1/2^ℓ of the input resolution with
    ``model_channels · channel_mult[ℓ]`` channels."""

    in_channels: int = 3
    out_channels: int | None = None  # None → in_channels (ε has the shape of x_t)
    model_channels: int = 64  # base width; the time embedding has 4× this
    channel_mult: tuple[int, ...] = (1, 2, 2)  # one entry per resolution level
    num_res_blocks: int | tuple[int, ...] = 2  # per level; a tuple gives each level its own
    # Downsampling FACTORS at which to put self-attention (1 = input resolution, 2 = half, …),
    # not pixel sizes, so one config works at any input size: (2,) on 32×32 input attends at 16×16.
    attention_resolutions: tuple[int, ...] = (2,)
    mid_attention: bool = True  # self-attention in the middle block (DDPM, ADM)
    num_heads: int = 4
    num_head_channels: int | None = None  # if set, heads = channels // this (ADM uses 64)
    dropout: float = 0.0
    num_classes: int = 0  # K > 0: class-conditional on y in 0..K−1, with K the null label ∅
    context_dim: int = 0  # D > 0: cross-attention to context tokens (B, L, D) (Weng eq. 33)
    pool_context: bool = True  # with context_dim: masked mean of the tokens added to emb
    resblock_updown: bool = False  # BigGAN residual blocks for down/up-sampling (ADM)
    rescale_skip: bool = False  # residual sums and concatenated skips × 1/√2 (NCSN++, Imagen)
    learn_sigma: bool = False  # output [ε, v_raw] on channels: 2 × out_channels (eq 23)
    efficient: bool = False  # Imagen's Efficient U-Net layout (see the module docstring)
    groups: int = 32  # GroupNorm groups; must divide every level's channel count
    low_res_channels: int = 0  # C_z > 0: super-resolution, z upsampled and concatenated to x_t
    aug_embedding: bool = False  # embed the augmentation level s of z (Imagen), added to emb

    def __post_init__(self) -> None:
        # JSON gives lists: store tuples so that configs compare and hash
        for name in ("channel_mult", "attention_resolutions"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if not isinstance(self.num_res_blocks, int):
            object.__setattr__(self, "num_res_blocks", tuple(int(v) for v in self.num_res_blocks))
        _validate(self)

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def blocks_per_level(self) -> tuple[int, ...]:
        n = self.num_res_blocks
        return (n,) * self.levels if isinstance(n, int) else n

    def heads(self, ch: int) -> int:
        return ch // self.num_head_channels if self.num_head_channels else self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _validate(cfg: UNetConfig) -> None:
    if cfg.in_channels < 1 or cfg.model_channels < 1 or not cfg.channel_mult:
        raise ValueError("in_channels and model_channels must be >= 1 and channel_mult non-empty")
    if min(cfg.channel_mult) < 1:
        raise ValueError(f"channel_mult entries must be >= 1, got {cfg.channel_mult}")
    if len(cfg.blocks_per_level) != cfg.levels or min(cfg.blocks_per_level) < 1:
        raise ValueError(
            f"num_res_blocks must be an int >= 1 or {cfg.levels} of them (one per level), "
            f"got {cfg.num_res_blocks}"
        )
    factors = [2**level for level in range(cfg.levels)]
    for f in cfg.attention_resolutions:
        if f not in factors:
            raise ValueError(
                f"attention_resolutions are downsampling factors, one of {factors}; got {f}"
            )
    for ch in {cfg.model_channels * m for m in cfg.channel_mult}:
        if ch % cfg.groups:
            raise ValueError(f"groups={cfg.groups} does not divide a level's {ch} channels")
        if cfg.num_head_channels and ch % cfg.num_head_channels:
            raise ValueError(f"num_head_channels={cfg.num_head_channels} does not divide {ch}")
    if cfg.low_res_channels < 0:
        raise ValueError(f"low_res_channels must be >= 0, got {cfg.low_res_channels}")
    if cfg.num_classes < 0 or cfg.context_dim < 0:
        raise ValueError(
            f"num_classes and context_dim must be >= 0 (0 = none), got {cfg.num_classes} "
            f"and {cfg.context_dim}"
        )
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")


class UNet(nn.Module):
    """ε_θ(x_t, t): x_t (B, C, H, W), t int64 (B,) in 1..T → (B, C_out, H, W), where
    C_out = out_channels (default C), doubled with ``learn_sigma`` to [ε̂, v_raw] for
    :class:`difflab.parameterization.LearnedVariance`. H and W must be multiples of 2^(L−1)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        mc, emb_dim, L = cfg.model_channels, 4 * cfg.model_channels, cfg.levels
        out_ch = (cfg.out_channels or cfg.in_channels) * (2 if cfg.learn_sigma else 1)

        def res(i: int, o: int, resample: str | None = None) -> ResBlock:
            return ResBlock(i, o, emb_dim, cfg.groups, cfg.dropout, resample, cfg.rescale_skip)

        def attn(ch: int) -> nn.Module:  # self-attention [, then cross-attention to the context]
            sa = SelfAttention(ch, cfg.heads(ch), cfg.groups, cfg.rescale_skip)
            return Stage([sa, cross(ch)]) if cfg.context_dim else sa

        def cross(ch: int) -> CrossAttention:
            return CrossAttention(ch, cfg.context_dim, cfg.heads(ch), cfg.groups)

        def down(ch: int) -> nn.Module:
            return res(ch, ch, "down") if cfg.resblock_updown else Downsample(ch)

        def up(ch: int) -> nn.Module:
            return res(ch, ch, "up") if cfg.resblock_updown else Upsample(ch)

        self.time_embed = TimestepEmbedding(mc, emb_dim)  # sinusoid(t) → MLP: (B,) → (B, 4·mc)
        if cfg.num_classes:  # one row per class and a last one for the null label ∅
            self.label_embed = nn.Embedding(cfg.num_classes + 1, emb_dim)
        if cfg.context_dim and cfg.pool_context:  # no bias: ∅ (mean 0) adds exactly 0
            self.context_embed = zero_init(nn.Linear(cfg.context_dim, emb_dim, bias=False))
        if cfg.aug_embedding:  # sinusoid(s) → MLP, like t: (B,) → (B, 4·mc)
            self.aug_embed = TimestepEmbedding(mc, emb_dim)
        ch = mc * cfg.channel_mult[0]
        # the stem; a super-resolution network also reads the upsampled z on its channels
        self.inp = nn.Conv2d(cfg.in_channels + cfg.low_res_channels, ch, 3, padding=1)

        # encoder: each stage's output is one skip connection
        down_stages: list[Stage] = []
        skips: list[int] = []
        if not cfg.efficient:
            down_stages.append(Stage())  # the stem's output is the first skip (DDPM, ADM)
            skips.append(ch)
        for level, (mult, n) in enumerate(zip(cfg.channel_mult, cfg.blocks_per_level, strict=True)):
            wants_attn = 2**level in cfg.attention_resolutions
            if cfg.efficient:  # Imagen DBlock: down-sample, n res blocks, attention; one skip
                blocks = [down(ch)] if level > 0 else []
                for _ in range(n):
                    blocks.append(res(ch, mc * mult))
                    ch = mc * mult
                down_stages.append(Stage(blocks + ([attn(ch)] if wants_attn else [])))
                skips.append(ch)
                continue
            for _ in range(n):  # ADM: a skip after every res block and after the down-sampler
                blocks = [res(ch, mc * mult)]
                ch = mc * mult
                down_stages.append(Stage(blocks + ([attn(ch)] if wants_attn else [])))
                skips.append(ch)
            if level < L - 1:
                down_stages.append(Stage([down(ch)]))
                skips.append(ch)
        self.down = nn.ModuleList(down_stages)
        self.skip_channels: tuple[int, ...] = tuple(skips)  # widths of encode()'s skips
        self.mid_channels = ch

        mid_attn = [attn(ch)] if cfg.mid_attention else [cross(ch)] if cfg.context_dim else []
        self.mid = Stage([res(ch, ch), *mid_attn, res(ch, ch)])

        # decoder: each stage starts from [h, skip] concatenated on channels
        up_stages: list[Stage] = []
        for level in reversed(range(L)):
            mult, n = cfg.channel_mult[level], cfg.blocks_per_level[level]
            wants_attn = 2**level in cfg.attention_resolutions
            if cfg.efficient:  # Imagen UBlock: n res blocks, attention, then up-sample
                blocks = [res(ch + skips.pop(), mc * mult)]
                ch = mc * mult
                blocks += [res(ch, ch) for _ in range(n - 1)]
                blocks += [attn(ch)] if wants_attn else []
                blocks += [up(ch)] if level > 0 else []
                up_stages.append(Stage(blocks))
                continue
            for i in range(n + 1):  # ADM: one more res block than the encoder, for its down-sampler
                blocks = [res(ch + skips.pop(), mc * mult)]
                ch = mc * mult
                blocks += [attn(ch)] if wants_attn else []
                blocks += [up(ch)] if level > 0 and i == n else []
                up_stages.append(Stage(blocks))
        assert not skips, "every skip connection is used exactly once"
        self.up = nn.ModuleList(up_stages)
        self.skip_scale = SQRT_HALF if cfg.rescale_skip else 1.0

        self.out = nn.Sequential(
            nn.GroupNorm(cfg.groups, ch),
            nn.SiLU(),
            zero_init(nn.Conv2d(ch, out_ch, 3, padding=1)),
        )

    # --- the forward pass, in three pieces ------------------------------------------------------

    def condition(
        self,
        t: Tensor,
        y: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        aug_level: Tensor | None = None,
    ) -> Conditioning:
        """What the blocks see: the embedding of t, int64 (B,) → (B, 4·model_channels), plus the
        label embedding of y (B,), the pooled context and the embedding of the augmentation
        level s (B,) (``aug_embedding``; None: s = 0); and the context tokens (B, L, D) with
        their mask (B, L) for cross-attention. A condition left None is ∅."""
        emb = self.time_embed(t)  # (B, E)
        cfg = self.config
        s = check_aug_level(aug_level, cfg.aug_embedding, t)  # (B,) or None
        if s is not None:
            emb = emb + self.aug_embed(s)  # (B, E)
        if y is not None and not cfg.num_classes:
            raise ValueError("y given to an unconditional network (num_classes = 0)")
        if cfg.num_classes:
            emb = emb + self.label_embed(check_labels(y, cfg.num_classes, t))  # (B, E)
        if context is None:
            if context_mask is not None:
                raise ValueError("context_mask given without context")
            return Conditioning(emb=emb)
        if not cfg.context_dim:
            raise ValueError("context given to a network without cross-attention (context_dim = 0)")
        self.check_context(context, context_mask, t)
        if cfg.pool_context:
            emb = emb + self.context_embed(masked_mean(context, context_mask))  # (B, E)
        return Conditioning(emb=emb, context=context, context_mask=context_mask)

    def encode(self, x_t: Tensor, c: Conditioning) -> tuple[Tensor, list[Tensor]]:
        """Stem, encoder and middle: the middle's output (B, mid_channels, H/2^(L−1), W/2^(L−1))
        and the skips, ``skips[i]`` of width ``skip_channels[i]``."""
        self.check_input(x_t)
        h = self.inp(x_t)  # (B, mc·mult[0], H, W)
        skips = []
        for stage in self.down:
            h = stage(h, c)  # (B, ch, H/2^ℓ, W/2^ℓ)
            skips.append(h)
        return self.mid(h, c), skips

    def decode(self, h: Tensor, skips: list[Tensor], c: Conditioning) -> Tensor:
        """Decoder and output layer; consumes ``skips`` from the last one back."""
        for stage, skip in zip(self.up, reversed(skips), strict=True):
            if self.skip_scale != 1.0:
                skip = skip * self.skip_scale
            h = stage(torch.cat([h, skip], dim=1), c)  # (B, ch, H/2^ℓ, W/2^ℓ)
        return self.out(h)  # (B, C_out, H, W)

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        low_res: Tensor | None = None,
        aug_level: Tensor | None = None,
    ) -> Tensor:
        c = self.condition(t, y, context, context_mask, aug_level)
        h, skips = self.encode(self.with_low_res(x_t, low_res), c)
        return self.decode(h, skips, c)

    def with_low_res(self, x_t: Tensor, low_res: Tensor | None) -> Tensor:
        """x_t (B, C, H, W), and for a super-resolution network [x_t, up(z)] (B, C + C_z, H, W):
        z = ``low_res`` (B, C_z, h, w) upsampled bilinearly to H × W (Ho et al. 2021, §2)."""
        return with_low_res(x_t, low_res, self.config.low_res_channels)

    # --- helpers --------------------------------------------------------------------------------

    def check_input(self, x_t: Tensor) -> None:
        """Raise a one-line ValueError for an input this network cannot take."""
        cfg = self.config
        channels = cfg.in_channels + cfg.low_res_channels  # with a super-resolution's z
        if x_t.ndim != 4 or x_t.shape[1] != channels:
            raise ValueError(
                f"expected input (B, {channels}, H, W), got {tuple(x_t.shape)}"
            )
        H, W = x_t.shape[-2:]
        f = 2 ** (cfg.levels - 1)
        if H % f or W % f:
            raise ValueError(
                f"input {H}×{W} is not divisible by {f} ({cfg.levels} resolution levels); "
                f"resize or pad to a multiple of {f}"
            )

    def check_context(self, context: Tensor, mask: Tensor | None, t: Tensor) -> None:
        """Raise a one-line ValueError for context tokens or a mask of the wrong shape or type."""
        D = self.config.context_dim
        if context.ndim != 3 or context.shape[0] != t.shape[0] or context.shape[2] != D:
            raise ValueError(
                f"expected context (B={t.shape[0]}, L, {D}), got {tuple(context.shape)}"
            )
        if mask is not None and (mask.dtype != torch.bool or mask.shape != context.shape[:2]):
            raise ValueError(
                f"expected context_mask bool {tuple(context.shape[:2])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def masked_mean(context: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of the tokens (B, L, D) over the True positions of ``mask`` (B, L) → (B, D); exactly
    zero for a row with no True position (the null condition ∅)."""
    if mask is None:
        return context.mean(dim=1)
    w = mask.to(context.dtype)[..., None]  # (B, L, 1)
    return (context * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)  # (B, D)
