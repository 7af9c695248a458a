"""unCLIP's decoder P(x | c_i, y) (Weng eq. 34; Ramesh et al. 2022, §2, after GLIDE): a
text-conditional U-Net that also reads the CLIP image embedding c_i in two ways:

- projected and added to the time embedding (the paper's "projecting and adding CLIP
  embeddings to the existing timestep embedding");
- projected to ``n_tokens`` extra context tokens appended to the caption's tokens for
  cross-attention ("four extra tokens of context concatenated to the sequence of outputs from
  the GLIDE text encoder").

The model is ``decoder(x_t, t, context=…, context_mask=…, clip_emb=…) -> ε̂`` with ``clip_emb``
(B, D) the unit-norm image embedding, fed as √D · c_i. The null embedding ∅ is the zero vector:
both projections have no bias, so it adds exactly 0 to the time embedding, and its extra tokens
are masked out of attention — a row with ``clip_emb`` = 0 is exactly the U-Net given the caption
alone (``clip_emb`` None is ∅ for every row). Classifier-free guidance drops the embedding and
the caption independently in training (10 % and 50 %; :class:`difflab.build.unclip
.DecoderConditions`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .unet import UNet
from .unet_blocks import Conditioning, zero_init


class UnclipDecoder(nn.Module):
    """A :class:`~difflab.nn.unet.UNet` with cross-attention (``context_dim`` > 0) and the
    CLIP image embedding's two pathways."""

    def __init__(self, unet: UNet, embed_dim: int, n_tokens: int = 4):
        super().__init__()
        cfg = unet.config
        if not cfg.context_dim:
            raise ValueError("an unCLIP decoder needs a U-Net with cross-attention "
                             "(context_dim > 0)")
        self.unet, self.embed_dim, self.n_tokens = unet, embed_dim, n_tokens
        E = 4 * cfg.model_channels  # the U-Net's time-embedding width
        self.emb_proj = zero_init(nn.Linear(embed_dim, E, bias=False))
        self.token_proj = nn.Linear(embed_dim, n_tokens * cfg.context_dim, bias=False)

    def forward(self, x_t: Tensor, t: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None, clip_emb: Tensor | None = None) -> Tensor:
        unet = self.unet
        c = unet.condition(t, None, context, context_mask)
        if clip_emb is None:
            h, skips = unet.encode(x_t, c)
            return unet.decode(h, skips, c)
        B, D = clip_emb.shape[0], unet.config.context_dim
        if clip_emb.shape != (t.shape[0], self.embed_dim):
            raise ValueError(f"expected clip_emb ({t.shape[0]}, {self.embed_dim}), got "
                             f"{tuple(clip_emb.shape)}")
        e = clip_emb * math.sqrt(self.embed_dim)  # (B, D_clip), unit variance per dimension
        real = clip_emb.ne(0).any(dim=1)  # (B,) False for ∅
        extra = self.token_proj(e).view(B, self.n_tokens, D)  # (B, K, D); 0 for ∅
        extra_mask = real[:, None].expand(B, self.n_tokens)  # (B, K)
        if c.context is None:
            tokens, mask = extra, extra_mask
        else:
            own = (c.context_mask if c.context_mask is not None else
                   torch.ones(c.context.shape[:2], dtype=torch.bool, device=x_t.device))
            tokens = torch.cat([c.context, extra], dim=1)  # (B, L + K, D)
            mask = torch.cat([own, extra_mask], dim=1)  # (B, L + K)
        c = Conditioning(emb=c.emb + self.emb_proj(e), context=tokens, context_mask=mask)
        h, skips = unet.encode(x_t, c)
        return unet.decode(h, skips, c)
