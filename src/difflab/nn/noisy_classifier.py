"""The noise-aware classifier f_φ(y | x_t, t) of classifier guidance (Weng eq. 24-25).

Dhariwal & Nichol 2021 (ADM), §4.1: "the downsampling trunk of the UNet model with an
attention pool at the 8×8 layer to produce the final output", trained on noisy images x_t at
every t. Here: the encoder and middle block of :class:`difflab.nn.unet.UNet` — the same
:class:`ResBlock` (AdaGN on the time embedding), :class:`SelfAttention` and resampling blocks,
laid out as ADM's encoder — then GN, SiLU, a pool over the positions and a linear head:

    emb = MLP(sinusoid(t))                                  (B, 4·mc)
    h = mid(down(conv(x_t), emb), emb)                      (B, C, H/2^(L−1), W/2^(L−1))
    p = pool(SiLU(GN(h)))                                   (B, C)
    logits = W p                                            (B, num_classes)

The pool is attention pooling with the mean position as the only query (CLIP's AttentionPool2d,
Radford et al. 2021, as ADM's classifier uses it) but without a positional embedding, so the
classifier takes any input size; or a plain mean (``attention_pool=False``). The head starts at
zero: an untrained classifier gives the uniform distribution.

Its call is ``classifier(x_t, t) -> logits``, what :class:`difflab.guidance.ClassifierGuidance`
takes; :func:`difflab.classifier_train.train_noisy_classifier` trains it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 (the usual name)

from .embedding import TimestepEmbedding
from .unet import UNetConfig
from .unet_blocks import Conditioning, Downsample, ResBlock, SelfAttention, Stage, zero_init

# the fields that shape the encoder, with the meaning they have in UNetConfig
ENCODER_FIELDS = (
    "in_channels",
    "model_channels",
    "channel_mult",
    "num_res_blocks",
    "attention_resolutions",
    "mid_attention",
    "num_heads",
    "num_head_channels",
    "dropout",
    "resblock_updown",
    "rescale_skip",
    "groups",
)


@dataclass(frozen=True)
class NoisyClassifierConfig:
    """Shape of a :class:`NoisyClassifier`: the encoder fields of :class:`UNetConfig` (same
    names, meanings and checks) plus the number of classes and the pooling."""

    in_channels: int = 3
    num_classes: int = 10
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int | tuple[int, ...] = 2
    attention_resolutions: tuple[int, ...] = (2,)  # downsampling factors, as in UNetConfig
    mid_attention: bool = True
    num_heads: int = 4
    num_head_channels: int | None = None
    dropout: float = 0.0
    resblock_updown: bool = False
    rescale_skip: bool = False
    groups: int = 32
    attention_pool: bool = True  # False: mean over the positions

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {self.num_classes}")
        enc = self.encoder_config()  # runs UNetConfig's checks and normalises the tuples
        for name in ("channel_mult", "num_res_blocks", "attention_resolutions"):
            object.__setattr__(self, name, getattr(enc, name))

    def encoder_config(self) -> UNetConfig:
        """The :class:`UNetConfig` whose encoder and middle this classifier's trunk copies."""
        return UNetConfig(**{name: getattr(self, name) for name in ENCODER_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class AttentionPool(nn.Module):
    """(B, C, H, W) → (B, C): multi-head attention whose one query is the mean position, over
    the mean and every position (Radford et al. 2021, AttentionPool2d; ADM's classifier head),
    without positional embedding. The input is already normalised."""

    def __init__(self, ch: int, heads: int):
        super().__init__()
        if ch % heads:
            raise ValueError(f"{ch} channels do not split into {heads} attention heads")
        self.heads = heads
        self.qkv = nn.Linear(ch, 3 * ch)

    def forward(self, h: Tensor) -> Tensor:
        B, C = h.shape[:2]
        tokens = h.flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (B, 1+HW, C)
        q, k, v = self.qkv(tokens).unflatten(-1, (3, self.heads, C // self.heads)).permute(
            2, 0, 3, 1, 4
        )  # each (B, heads, 1+HW, C/heads)
        out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # (B, heads, 1, C/heads)
        return out.reshape(B, C)  # (B, C)


class NoisyClassifier(nn.Module):
    """logits = f_φ(x_t, t): x_t (B, C, H, W), t int64 (B,) in 1..T → (B, num_classes).
    H and W must be multiples of 2^(L−1)."""

    def __init__(self, config: NoisyClassifierConfig):
        super().__init__()
        self.config = config
        cfg = config.encoder_config()
        mc, emb_dim = cfg.model_channels, 4 * cfg.model_channels

        def res(i: int, o: int, resample: str | None = None) -> ResBlock:
            return ResBlock(i, o, emb_dim, cfg.groups, cfg.dropout, resample, cfg.rescale_skip)

        def attn(ch: int) -> SelfAttention:
            return SelfAttention(ch, cfg.heads(ch), cfg.groups, cfg.rescale_skip)

        self.time_embed = TimestepEmbedding(mc, emb_dim)  # (B,) → (B, 4·mc), as in the U-Net
        ch = mc * cfg.channel_mult[0]
        self.inp = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        blocks: list[nn.Module] = []
        for level, (mult, n) in enumerate(zip(cfg.channel_mult, cfg.blocks_per_level, strict=True)):
            for _ in range(n):  # ADM's encoder: res blocks [+ attention], then down-sample
                blocks.append(res(ch, mc * mult))
                ch = mc * mult
                blocks += [attn(ch)] if 2**level in cfg.attention_resolutions else []
            if level < cfg.levels - 1:
                blocks.append(res(ch, ch, "down") if cfg.resblock_updown else Downsample(ch))
        blocks += [res(ch, ch), *([attn(ch)] if cfg.mid_attention else []), res(ch, ch)]  # middle
        self.trunk = Stage(blocks)
        self.norm = nn.GroupNorm(cfg.groups, ch)
        self.pool = AttentionPool(ch, cfg.heads(ch)) if config.attention_pool else None
        self.head = zero_init(nn.Linear(ch, config.num_classes))

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        self.check_input(x_t)
        c = Conditioning(emb=self.time_embed(t))  # (B, 4·mc)
        h = self.trunk(self.inp(x_t), c)  # (B, ch, H/2^(L−1), W/2^(L−1))
        h = F.silu(self.norm(h))
        p = self.pool(h) if self.pool is not None else h.mean(dim=(2, 3))  # (B, ch)
        return self.head(p)  # (B, num_classes)

    def check_input(self, x_t: Tensor) -> None:
        cfg = self.config
        f = 2 ** (len(cfg.channel_mult) - 1)
        if x_t.ndim != 4 or x_t.shape[1] != cfg.in_channels or x_t.shape[2] % f or x_t.shape[3] % f:
            raise ValueError(
                f"expected input (B, {cfg.in_channels}, H, W) with H, W multiples of {f}, "
                f"got {tuple(x_t.shape)}"
            )

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
