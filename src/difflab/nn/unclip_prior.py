"""unCLIP's diffusion prior P(c_i | y) (Weng eq. 34; Ramesh et al. 2022, §2.1): a causal
transformer that predicts the clean CLIP image embedding from a noised one.

Its input is one sequence of width ``width`` (Ramesh et al. 2022, §2.1; DALLE2-pytorch's
``DiffusionPriorNetwork``)::

    [ caption tokens (L) | text embedding c_t | timestep t | noised embedding z_t | query ]

each projected to ``width`` with learned positions (the last four's do not depend on the
caption's length L, so padding changes nothing); a causal mask (a position attends to itself
and the positions before it, never to caption padding); the output at the query, projected back
to D, is the prediction of z_0 (the x0-parameterisation: the paper predicts the unnoised
embedding directly). The network is a model of difflab's interface, ``net(z_t, t, **cond) ->
ẑ_0``, with ``cond`` = ``context`` (B, L, 384) the frozen MiniLM's tokens, ``context_mask``
(B, L) bool and ``text_emb`` (B, D) CLIP's text embedding; wrapped in
:class:`difflab.parameterization.EpsFromX0` it is an ε-model that every sampler and the
classifier-free guidance of :mod:`difflab.guidance` take.

Scaling: CLIP's embeddings lie on the unit sphere, so each dimension has a standard deviation
of about 1/√D, far from the unit variance the schedule assumes. The prior works on
z = (c_i − μ) / σ, μ and σ the per-dimension mean and standard deviation of the training
images' embeddings (buffers ``emb_mean`` and ``emb_std``, set once by :meth:`set_scale` and
saved with the weights); :meth:`scale` / :meth:`unscale` convert. The text embedding c_t is
given as √D · c_t (unit variance per dimension on average). The null caption ∅ of
classifier-free guidance is zero tokens, an all-False mask and a zero text embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from .embedding import TimestepEmbedding


@dataclass(frozen=True)
class PriorConfig:
    embed_dim: int = 64  # D of the CLIP embedding
    text_dim: int = 384  # the frozen MiniLM's token width
    width: int = 128
    depth: int = 4
    heads: int = 4
    max_tokens: int = 64


class Block(nn.Module):
    """Pre-LN transformer block: h + MHA(LN(h), mask), then h + MLP(LN(h))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, h: Tensor, attend: Tensor) -> Tensor:  # h (B, S, W); attend (B, 1, S, S)
        B, S, W = h.shape
        q, k, v = self.qkv(self.norm1(h)).unflatten(-1, (3, self.heads, W // self.heads)).permute(
            2, 0, 3, 1, 4)  # (B, heads, S, d) each
        a = functional.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        h = h + self.out(a.transpose(1, 2).flatten(2))
        return h + self.mlp(self.norm2(h))


class DiffusionPrior(nn.Module):
    """ẑ_0 = f(z_t, t, caption tokens, c_t): (B, D) → (B, D) in the scaled space."""

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.config = cfg
        D, W = cfg.embed_dim, cfg.width
        self.tokens_in = nn.Linear(cfg.text_dim, W)
        self.text_in = nn.Linear(D, W)
        self.time_in = TimestepEmbedding(W, W)
        self.x_in = nn.Linear(D, W)
        self.query = nn.Parameter(torch.randn(W) * 0.02)
        self.pos = nn.Parameter(torch.randn(cfg.max_tokens, W) * 0.02)  # caption tokens
        self.slot_pos = nn.Parameter(torch.randn(4, W) * 0.02)  # c_t, t, z_t, query
        self.blocks = nn.ModuleList(Block(W, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(W)
        self.head = nn.Linear(W, D)
        self.register_buffer("emb_mean", torch.zeros(D))
        self.register_buffer("emb_std", torch.ones(D))

    # --- the scaled space -----------------------------------------------------------------------
    @torch.no_grad()
    def set_scale(self, embeddings: Tensor) -> None:
        """μ and σ per dimension of the training images' CLIP embeddings (N, D)."""
        self.emb_mean.copy_(embeddings.mean(0))
        self.emb_std.copy_(embeddings.std(0).clamp(min=1e-6))

    def scale(self, c: Tensor) -> Tensor:
        """c_i (…, D) → z = (c_i − μ) / σ."""
        return (c - self.emb_mean) / self.emb_std

    def unscale(self, z: Tensor) -> Tensor:
        """z (…, D) → the unit-norm CLIP embedding normalise(σ z + μ)."""
        return functional.normalize(z * self.emb_std + self.emb_mean, dim=-1)

    def text_input(self, text_emb: Tensor) -> Tensor:
        """c_t (unit norm, or 0 for ∅) → √D · c_t, what ``forward`` takes as ``text_emb``."""
        return text_emb * math.sqrt(self.config.embed_dim)

    # --- the network ----------------------------------------------------------------------------
    def forward(self, x_t: Tensor, t: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None, text_emb: Tensor | None = None) -> Tensor:
        B, D = x_t.shape
        cfg = self.config
        if context is None:  # ∅: no caption tokens, a zero text embedding
            context = x_t.new_zeros(B, 1, cfg.text_dim)
            context_mask = torch.zeros(B, 1, dtype=torch.bool, device=x_t.device)
        if context_mask is None:
            context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=x_t.device)
        if text_emb is None:
            text_emb = x_t.new_zeros(B, D)
        L = context.shape[1]
        if cfg.max_tokens < L:
            raise ValueError(f"at most {cfg.max_tokens} caption tokens, got {L}")
        seq = torch.cat([self.tokens_in(context),  # (B, L, W)
                         self.text_in(text_emb)[:, None],  # (B, 1, W)
                         self.time_in(t)[:, None],
                         self.x_in(x_t)[:, None],
                         self.query.expand(B, 1, -1)], dim=1)  # (B, S = L + 4, W)
        S = L + 4
        seq = seq + torch.cat([self.pos[:L], self.slot_pos])  # the last four never move
        causal = torch.ones(S, S, dtype=torch.bool, device=x_t.device).tril()  # (S, S)
        real = torch.cat([context_mask, context_mask.new_ones(B, 4)], dim=1)  # (B, S) keys
        eye = torch.eye(S, dtype=torch.bool, device=x_t.device)
        attend = (causal & (real[:, None, :] | eye))[:, None]  # (B, 1, S, S); self always
        h = seq
        for block in self.blocks:
            h = block(h, attend)
        return self.head(self.norm(h[:, -1]))  # (B, D): ẑ_0 at the query
