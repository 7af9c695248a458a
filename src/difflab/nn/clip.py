"""A small CLIP (Radford et al. 2021): an image encoder and a text encoder projected to one
L2-normalised embedding space, trained with the symmetric InfoNCE of
:func:`difflab.contrastive.info_nce` and a learned temperature. unCLIP (Weng eq. 34; Ramesh et
al. 2022) conditions its prior and decoder on these embeddings.

- Image encoder (:class:`ImageEncoder`): a small CNN — a 3×3 stem, then per level a residual
  block (GroupNorm, SiLU, 3×3 convolutions) and a stride-2 convolution doubling the width (at
  most 4× the base) until the map is 4×4 — flattened and projected to ``embed_dim``.
  Flattening (not average pooling) keeps where things are: the shapes captions say "left of"
  and "above".
- Text encoder (:class:`TextTower`): the frozen all-MiniLM-L6-v2 tokens (B, L, 384) of
  :mod:`difflab.nn.text_encoder` (computed outside, as for every text-conditional run), a
  trainable linear map to ``text_width`` plus learned positions, one pre-LN transformer layer
  over the real tokens, the masked mean, and a projection to ``embed_dim``.
- Both outputs are L2-normalised; ``log_scale`` = log τ⁻¹ starts at log(1/0.07) as in CLIP
  and is clipped at ln 100 where it is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

INIT_TEMPERATURE = 0.07  # CLIP's initial τ (Radford et al. 2021, §2.5)


@dataclass(frozen=True)
class CLIPConfig:
    in_channels: int = 3
    image_size: int = 32
    width: int = 32  # image encoder base width (doubled at each level, at most 4×)
    embed_dim: int = 64  # the shared embedding's dimension
    text_dim: int = 384  # the frozen MiniLM's token width
    text_width: int = 128
    text_heads: int = 4
    max_tokens: int = 64  # learned positions for up to this many caption tokens


class ConvBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))): (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, ch: int):
        super().__init__()
        g = math.gcd(8, ch)
        self.body = nn.Sequential(nn.GroupNorm(g, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  nn.GroupNorm(g, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ImageEncoder(nn.Module):
    """Images (B, C, S, S) in [-1, 1] → unnormalised embeddings (B, embed_dim)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        ch = cfg.width
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch, 3, padding=1)]
        side, mult = cfg.image_size, 1
        while True:
            layers.append(ConvBlock(ch))
            if side <= 4:
                break
            mult = min(mult * 2, 4)
            layers.append(nn.Conv2d(ch, cfg.width * mult, 3, stride=2, padding=1))
            ch, side = cfg.width * mult, (side + 1) // 2
        layers += [nn.GroupNorm(math.gcd(8, ch), ch), nn.SiLU(), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(ch * side * side, cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.body(x))  # (B, embed_dim)


class TextTower(nn.Module):
    """Frozen MiniLM tokens (B, L, 384) with their mask (B, L) → unnormalised (B, embed_dim)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        W = cfg.text_width
        self.inp = nn.Linear(cfg.text_dim, W)
        self.pos = nn.Parameter(torch.randn(cfg.max_tokens, W) * 0.02)
        self.layer = nn.TransformerEncoderLayer(W, cfg.text_heads, 4 * W, dropout=0.0,
                                                activation="gelu", batch_first=True,
                                                norm_first=True)
        self.norm = nn.LayerNorm(W)
        self.proj = nn.Linear(W, cfg.embed_dim)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        L = tokens.shape[1]
        if self.pos.shape[0] < L:
            raise ValueError(f"at most {self.pos.shape[0]} caption tokens, got {L}")
        h = self.inp(tokens) + self.pos[:L]  # (B, L, W)
        real = mask.any(dim=1, keepdim=True)  # (B, 1): a null caption attends to everything
        pad = ~(mask | ~real)  # (B, L) True = ignore
        h = self.layer(h, src_key_padding_mask=pad)
        w = mask.to(h.dtype)[..., None]  # (B, L, 1)
        pooled = (h * w).sum(1) / w.sum(1).clamp(min=1)  # (B, W); 0 for a null caption
        return self.proj(self.norm(pooled))  # (B, embed_dim)


class CLIP(nn.Module):
    """The image and text encoders and the learned log inverse temperature."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        self.image = ImageEncoder(cfg)
        self.text = TextTower(cfg)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / INIT_TEMPERATURE)))

    def encode_image(self, x: Tensor) -> Tensor:
        """c_i(x): (B, C, S, S) → (B, D), unit norm."""
        return functional.normalize(self.image(x), dim=-1)

    def encode_text(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """c_t(y): MiniLM tokens (B, L, 384) and mask (B, L) → (B, D), unit norm."""
        return functional.normalize(self.text(tokens, mask), dim=-1)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        """(c_i (B, D), c_t (B, D), log_scale ()) of B matched image-caption pairs."""
        return self.encode_image(x), self.encode_text(context, context_mask), self.log_scale

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim
