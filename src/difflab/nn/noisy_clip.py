"""A noise-aware CLIP for CLIP guidance (GLIDE, Nichol et al. 2022, §2.4; Weng eq. 25 with
f(x_t, t) · g(c) in place of log f_φ(y | x_t)).

The small :class:`~difflab.nn.clip.CLIP` with its image encoder replaced by one that also reads
the timestep: f(x_t, t). The text tower g(c) is CLIP's own. The timestep enters as FiLM on the
input of every residual block of the CNN (Perez et al. 2018; the scale-shift form of the
U-Net's AdaGN):

    emb = MLP(sinusoid(t))                              (B, 4·width)
    (γ_k, β_k) = Linear_k(SiLU(emb))                    (B, C_k) each, zero at initialisation
    h ← h · (1 + γ_k) + β_k  before residual block k    (B, C_k, H_k, W_k)

so that an untrained FiLM leaves the plain CLIP encoder. Trained with CLIP's symmetric InfoNCE
on x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (Weng eq. 3), t ~ U{1..T} of the diffusion run's schedule
(:class:`difflab.training.noisy_clip.NoisyClipObjective`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional

from ..contrastive import MAX_LOGIT_SCALE
from .clip import CLIP, CLIPConfig, ConvBlock, ImageEncoder
from .embedding import TimestepEmbedding, timestep_embedding
from .unet_blocks import zero_init


class NoisyImageEncoder(ImageEncoder):
    """(x_t (B, C, S, S), t int64 (B,)) → unnormalised embeddings (B, embed_dim)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__(cfg)
        emb = 4 * cfg.width
        self.time_embed = TimestepEmbedding(cfg.width, emb)  # (B,) → (B, 4·width)
        widths = [m.body[0].num_channels for m in self.body if isinstance(m, ConvBlock)]
        self.film = nn.ModuleList(zero_init(nn.Linear(emb, 2 * c)) for c in widths)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        if t is None:
            raise ValueError("a noise-aware image encoder needs the timestep t")
        feats = timestep_embedding(t, self.time_embed.t_dim).to(x.dtype)  # (B, width)
        emb = functional.silu(self.time_embed.mlp(feats))  # (B, 4·width)
        h, k = x, 0
        for layer in self.body:
            if isinstance(layer, ConvBlock):
                gamma, beta = self.film[k](emb).chunk(2, dim=-1)  # (B, C_k) each
                h = h * (1 + gamma[..., None, None]) + beta[..., None, None]
                k += 1
            h = layer(h)
        return self.proj(h)  # (B, embed_dim)


class NoisyCLIP(CLIP):
    """CLIP with the image encoder f(x_t, t) of :class:`NoisyImageEncoder`.

    ``encode_image(x, t)`` with t None embeds x as x_1 (t = 1: the least noise the encoder was
    trained on, √(1−ᾱ_1) = 0.01 on the linear schedule), so clean images (the evaluation's, a
    sampler's x_0) go through the same call as CLIP's.
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__(cfg)
        self.image = NoisyImageEncoder(cfg)

    def encode_image(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """f(x_t, t): (B, C, S, S) and int64 (B,) → (B, D), unit norm."""
        if t is None:
            t = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        return functional.normalize(self.image(x, t), dim=-1)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor,
                t: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(f(x_t, t) (B, D), g(c) (B, D), log_scale ()) of B matched pairs."""
        return self.encode_image(x, t), self.encode_text(context, context_mask), self.log_scale

    @property
    def logit_scale(self) -> float:
        """exp(log τ⁻¹), clipped at 100 as InfoNCE uses it: the scale of the logit f · g."""
        return math.exp(min(float(self.log_scale.detach()), MAX_LOGIT_SCALE))
