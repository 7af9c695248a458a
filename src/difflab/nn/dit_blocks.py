"""The pieces of the diffusion transformer in ``dit.py``: patches, 2-D sin-cos positions, attention
over tokens, and the four block designs of Peebles & Xie 2023, Fig. 5.

Every block has the same call, ``block(x, c) -> x`` on tokens x (B, N, D), where ``c`` is a
:class:`DiTConditioning` built once per forward pass; each design reads what it needs from it:

- :class:`InContextBlock` — a plain ViT block; t and y ride along as extra tokens that the
  network prepends to the sequence (it reads nothing from ``c``).
- :class:`CrossAttentionBlock` — a ViT block with a cross-attention layer to the (t, y) tokens
  after its self-attention.
- :class:`AdaLNBlock` — LayerNorm without affine, then x·(1 + scale) + shift, with (scale, shift)
  regressed from the sum of the t and y embeddings.
- :class:`AdaLNZeroBlock` — adaLN plus a gate α before each residual sum; the regression's last
  layer starts at zero, so α = 0 and the block starts as the identity. The paper's best, and
  the default.

Any of them adds a cross-attention layer to text tokens (Weng eq. 33) after its
self-attention when the network reads a caption (``context_dim`` > 0): :class:`TextAttention`.

Facts from facebookresearch/DiT ``models.py`` kept here: LayerNorm eps 1e-6 with no affine in
the adaLN blocks, ``modulate(x, shift, scale) = x·(1 + scale) + shift``, an MLP of 4× the width
with tanh-approximated GELU, a qkv projection with bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 (the usual name)

LN_EPS = 1e-6  # DiT's LayerNorm epsilon


@dataclass
class DiTConditioning:
    """What the blocks of a :class:`~difflab.nn.dit.DiT` may read, built once per forward pass.

    ``vec`` (B, D): the sum of the t embedding and the label embedding (adaLN's input).
    ``tokens`` (B, k, D): the same embeddings as k separate tokens [t, y] (in-context and
    cross-attention designs; k = 1 without labels). ``context`` (B, L, D_ctx) and
    ``context_mask`` (B, L) bool: caption tokens for :class:`TextAttention`; None is ∅.
    """

    vec: Tensor
    tokens: Tensor
    context: Tensor | None = None
    context_mask: Tensor | None = None


# --- patches and positions ----------------------------------------------------------------------
def to_patches(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) → (B, N, p·p·C): the N = (H/p)(W/p) patches in row-major order, each flattened
    as (p_row, p_col, C) — the layout DiT's final layer writes (``unpatchify``'s 'nhwpqc')."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, q)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def from_patches(tokens: Tensor, p: int, H: int, W: int) -> Tensor:
    """The inverse of :func:`to_patches`: (B, N, p·p·C) → (B, C, H, W)."""
    B, N, K = tokens.shape
    C = K // (p * p)
    x = tokens.reshape(B, H // p, W // p, p, p, C)  # (B, h, w, p, q, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """[sin(pos·ω), cos(pos·ω)], ω_k = 10000^(−k/(dim/2)) for k < dim/2: pos (M,) → float64
    (M, dim)."""
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    args = pos.to(torch.float64)[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding of a grid_h × grid_w grid of patches, row-major:
    float32 (grid_h·grid_w, dim). The first dim/2 channels encode the column, the last dim/2 the
    row, each by :func:`sincos_1d` (MAE's and DiT's ``get_2d_sincos_pos_embed``, whose meshgrid
    puts the column first). ``dim`` must be a multiple of 4."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)  # (N,) row of each patch
    cols = torch.arange(grid_w).repeat(grid_h)  # (N,) column of each patch
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x·(1 + scale) + shift with (B, D) scale and shift broadcast over the tokens of
    x (B, N, D) (DiT's ``modulate``; 1 + scale so that zeros are the identity)."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


def layer_norm(width: int, affine: bool) -> nn.LayerNorm:
    return nn.LayerNorm(width, eps=LN_EPS, elementwise_affine=affine)


# --- attention and MLP --------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head attention of tokens x (B, N, D) to ``kv`` (B, M, D_kv) — x itself for
    self-attention: softmax(QKᵀ/√d)V with d = D/heads, then an output projection.

    ``mask`` (B, M) bool marks the keys to attend to. A row with no True key (the null caption
    ∅) attends to nothing: its output is set to exactly zero (softmax over no keys is 0/0), so a
    residual layer of it is the identity — exactly as for no context at all."""

    def __init__(self, width: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} does not split into {heads} attention heads")
        self.heads = heads
        self.self_attention = kv_dim is None
        if self.self_attention:
            self.qkv = nn.Linear(width, 3 * width)
        else:
            self.q = nn.Linear(width, width)  # W_Q
            self.kv = nn.Linear(kv_dim, 2 * width)  # [W_K; W_V]
        self.proj = nn.Linear(width, width)  # W_O

    def forward(self, x: Tensor, kv: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        B, N, D = x.shape
        h, d = self.heads, D // self.heads
        if self.self_attention:
            q, k, v = self.qkv(x).unflatten(-1, (3, h, d)).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
        else:
            q = self.q(x).unflatten(-1, (h, d)).transpose(1, 2)  # (B, h, N, d)
            k, v = self.kv(kv).unflatten(-1, (2, h, d)).permute(2, 0, 3, 1, 4)  # (B, h, M, d)
        keep, real = None, None
        if mask is not None:
            real = mask.any(dim=1)  # (B,) False for ∅
            keep = (mask | ~real[:, None])[:, None, None, :]  # a null row attends to all, zeroed
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, h, N, d)
        out = self.proj(out.transpose(1, 2).flatten(2))  # (B, N, D)
        if real is not None:
            out = torch.where(real[:, None, None], out, torch.zeros_like(out))
        return out


class Mlp(nn.Module):
    """Linear → GELU (tanh approximation) → Linear, hidden width ``ratio`` × width (ViT, DiT)."""

    def __init__(self, width: int, ratio: float):
        super().__init__()
        hidden = int(width * ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TextAttention(nn.Module):
    """x + W_O softmax(Q Kᵀ/√d) V with Q from LN(x) and K, V from the caption tokens — Weng
    eq. (33); Rombach et al. 2022, §3.3. ``W_O`` starts at zero, and ∅ (``context`` None or an
    all-False mask) adds exactly zero."""

    def __init__(self, width: int, heads: int, context_dim: int):
        super().__init__()
        self.norm = layer_norm(width, affine=True)
        self.attn = Attention(width, heads, kv_dim=context_dim)

    def forward(self, x: Tensor, c: DiTConditioning) -> Tensor:
        if c.context is None:
            return x
        return x + self.attn(self.norm(x), c.context, c.context_mask)


# --- the four block designs ---------------------------------------------------------------------
class _Block(nn.Module):
    """Self-attention and MLP of width D, and a :class:`TextAttention` with ``context_dim``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, context_dim: int):
        super().__init__()
        self.attn = Attention(width, heads)
        self.mlp = Mlp(width, mlp_ratio)
        self.text = TextAttention(width, heads, context_dim) if context_dim else None

    def read_text(self, x: Tensor, c: DiTConditioning) -> Tensor:
        return x if self.text is None else self.text(x, c)


class InContextBlock(_Block):
    """Pre-norm ViT block: x += Attn(LN(x)); x += MLP(LN(x)). The t and y tokens are part of x
    (Fig. 5, "in-context conditioning")."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, context_dim: int = 0):
        super().__init__(width, heads, mlp_ratio, context_dim)
        self.norm1, self.norm2 = layer_norm(width, True), layer_norm(width, True)

    def forward(self, x: Tensor, c: DiTConditioning) -> Tensor:  # x: (B, k + N, D)
        x = x + self.attn(self.norm1(x))
        x = self.read_text(x, c)
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(_Block):
    """ViT block with multi-head cross-attention to the (t, y) tokens after the self-attention
    (Fig. 5, "cross-attention block"): x += Attn(LN(x)); x += CrossAttn(LN(x), [t, y]);
    x += MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, context_dim: int = 0):
        super().__init__(width, heads, mlp_ratio, context_dim)
        self.norm1, self.norm2, self.norm3 = (layer_norm(width, True) for _ in range(3))
        self.cross = Attention(width, heads, kv_dim=width)

    def forward(self, x: Tensor, c: DiTConditioning) -> Tensor:  # x: (B, N, D)
        x = x + self.attn(self.norm1(x))
        x = x + self.cross(self.norm2(x), c.tokens)  # to the k = 1 or 2 conditioning tokens
        x = self.read_text(x, c)
        return x + self.mlp(self.norm3(x))


class AdaLNBlock(_Block):
    """Adaptive LayerNorm (Fig. 5, "adaLN block"): LayerNorm without affine, then
    x·(1 + γ) + β with (β, γ) for each sub-layer regressed from c = emb(t) + emb(y):
    x += Attn(modulate(LN(x))); x += MLP(modulate(LN(x)))."""

    n_mod = 4  # (shift, scale) for attention and for the MLP

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, context_dim: int = 0):
        super().__init__(width, heads, mlp_ratio, context_dim)
        self.norm1, self.norm2 = layer_norm(width, False), layer_norm(width, False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, self.n_mod * width))

    def forward(self, x: Tensor, c: DiTConditioning) -> Tensor:  # x: (B, N, D)
        shift1, scale1, shift2, scale2 = self.adaLN_modulation(c.vec).chunk(4, dim=1)  # (B, D)
        x = x + self.attn(modulate(self.norm1(x), shift1, scale1))
        x = self.read_text(x, c)
        return x + self.mlp(modulate(self.norm2(x), shift2, scale2))


class AdaLNZeroBlock(_Block):
    """adaLN-Zero (Fig. 5, the paper's choice): adaLN plus a dimension-wise gate α before each
    residual sum, all six regressed from c:

        x += α₁ · Attn(LN(x)·(1 + γ₁) + β₁);  x += α₂ · MLP(LN(x)·(1 + γ₂) + β₂)

    The regression's last linear layer (``adaLN_modulation[-1]``) is zero-initialised by the
    network, so α = 0 and the block is exactly the identity at initialisation."""

    n_mod = 6  # (shift, scale, gate) for attention and for the MLP

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, context_dim: int = 0):
        super().__init__(width, heads, mlp_ratio, context_dim)
        self.norm1, self.norm2 = layer_norm(width, False), layer_norm(width, False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, self.n_mod * width))

    def forward(self, x: Tensor, c: DiTConditioning) -> Tensor:  # x: (B, N, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c.vec).chunk(6, 1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = self.read_text(x, c)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


BLOCKS: dict[str, type[_Block]] = {
    "adaln-zero": AdaLNZeroBlock,
    "adaln": AdaLNBlock,
    "cross-attention": CrossAttentionBlock,
    "in-context": InContextBlock,
}


class FinalLayer(nn.Module):
    """Tokens (B, N, D) → (B, N, p·p·C_out): LayerNorm, then a linear map to each patch's pixels.
    With ``adaptive`` (the adaLN designs) the LayerNorm has no affine and is modulated by
    (β, γ) regressed from c, as in DiT; otherwise it is a plain LayerNorm. The network
    zero-initialises ``linear`` (and ``adaLN_modulation[-1]``), so it first outputs ε̂ = 0."""

    def __init__(self, width: int, out_dim: int, adaptive: bool):
        super().__init__()
        self.norm_final = layer_norm(width, affine=not adaptive)
        self.linear = nn.Linear(width, out_dim)
        self.adaLN_modulation = (nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
                                 if adaptive else None)

    def forward(self, x: Tensor, c: DiTConditioning) -> Tensor:
        x = self.norm_final(x)
        if self.adaLN_modulation is not None:
            shift, scale = self.adaLN_modulation(c.vec).chunk(2, dim=1)  # (B, D) each
            x = modulate(x, shift, scale)
        return self.linear(x)  # (B, N, p·p·C_out)


def xavier_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` in ``module`` (DiT's
    ``_basic_init``)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def xavier_bound(fan_in: int, fan_out: int) -> float:
    """The half-width √(6 / (fan_in + fan_out)) of Xavier-uniform (Glorot & Bengio 2010)."""
    return math.sqrt(6.0 / (fan_in + fan_out))
