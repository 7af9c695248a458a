"""The diffusion transformer ε_θ(x_t, t, y) of Peebles & Xie 2023 (DiT; Weng, "Model
Architecture", Fig. 19).

1. Patchify: cut x_t (B, C, H, W) into p×p patches and map each linearly to a token of width D —
   a p×p convolution of stride p — then add fixed 2-D sin-cos position embeddings:
   N = (H/p)(W/p) tokens (B, N, D).
2. Embed t (sinusoid of ``freq_dim`` → MLP) and the label y (a table with a last row for the
   null label ∅ of classifier-free guidance).
3. ``depth`` transformer blocks of one of the four designs of the paper's Fig. 5
   (:mod:`difflab.nn.dit_blocks`): in-context tokens, cross-attention to the (t, y) tokens,
   adaLN, or adaLN-Zero (default).
4. A final LayerNorm and linear layer per token, un-patchified to ε̂ (B, C, H, W) — or to
   [ε̂, v_raw] (2C channels) with ``learn_sigma``, the learned-Σ interpolation of Weng eq. 23.

Initialisation as in facebookresearch/DiT ``models.py`` (``initialize_weights``): Xavier-uniform
weights and zero biases for every linear layer, the patch embedding initialised as the linear map
it is (Xavier over fan_in = C·p², fan_out = D), N(0, 0.02) for the label table and the timestep
MLP, and zeros for every block's ``adaLN_modulation[-1]`` and for the final layer (its
modulation and its linear map). With adaLN-Zero every block then starts as the identity and the
network outputs exactly zero. The other designs keep Xavier in their blocks (that is what
adaLN-Zero is compared with) but share the zero final linear map.

Conditioning, as for :class:`~difflab.nn.unet.UNet`: ``forward(x_t, t, y=None, context=None,
context_mask=None)``; y int64 (B,) in 0..K with K the null label ∅, or caption tokens
(B, L, D_ctx) with a padding mask, read by a cross-attention layer in every block (Weng eq. 33;
an all-False mask row is ∅). Omitted conditions are ∅.

Sizes: :data:`DIT_SIZES` names (depth, width, heads) — the paper's S, B, L, XL (Table 1) and tiny
ones for a CPU; the patch size is a separate field (the paper's "/2", "/4", "/8"). Any image size
divisible by p works; the position embedding is a buffer for ``input_size`` and is computed
(closed form) for any other grid. :func:`dit_flops` and :func:`dit_param_count` count a
configuration without building it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .dit_blocks import (
    BLOCKS,
    DiTConditioning,
    FinalLayer,
    from_patches,
    sincos_2d,
    xavier_linears,
)
from .embedding import (
    check_aug_level,
    check_labels,
    diffusers_timestep_embedding,
    timestep_embedding,
    with_low_res,
)
from .unet import masked_mean


class DiTSize(NamedTuple):
    depth: int
    width: int  # D, the paper's hidden size
    heads: int


# the paper's Table 1, and tiny sizes that train in minutes on a 2-core CPU
DIT_SIZES: dict[str, DiTSize] = {
    "T": DiTSize(4, 64, 4),
    "XS": DiTSize(6, 128, 4),
    "S": DiTSize(12, 384, 6),
    "B": DiTSize(12, 768, 12),
    "L": DiTSize(24, 1024, 16),
    "XL": DiTSize(28, 1152, 16),
}
DIT_BLOCKS = tuple(BLOCKS)  # "adaln-zero", "adaln", "cross-attention", "in-context"
# the sinusoidal features of t: difflab's [sin, cos] of t with ω_i = 10000^(−i/h) (as for the
# U-Net), or diffusers' DiT's [cos, sin] of t − 1 with ω_i = 10000^(−i/(h−1)), which makes the
# network exactly a diffusers DiTTransformer2DModel (difflab.interop.dit_map)
TIME_FEATURES = {"difflab": timestep_embedding, "diffusers": diffusers_timestep_embedding}


@dataclass(frozen=True)
class DiTConfig:
    """Shape of a :class:`DiT`. ``input_size``: the (H, W) the position-embedding buffer is made
    for (an int: square); other sizes divisible by ``patch_size`` work too."""

    in_channels: int = 4
    input_size: int | tuple[int, int] = 32
    patch_size: int = 2
    depth: int = 28
    width: int = 1152
    heads: int = 16
    mlp_ratio: float = 4.0
    block: str = "adaln-zero"  # one of DIT_BLOCKS (Fig. 5)
    num_classes: int = 0  # K > 0: class-conditional on y in 0..K−1, K = the null label ∅
    context_dim: int = 0  # D_ctx > 0: cross-attention to caption tokens (Weng eq. 33)
    pool_context: bool = True  # with context_dim: masked mean of the tokens added to c
    learn_sigma: bool = False  # output [ε, v_raw]: 2 × in_channels (Weng eq. 23)
    freq_dim: int = 256  # width of the sinusoidal t features fed to the t MLP
    time_features: str = "difflab"  # one of TIME_FEATURES: "diffusers" to export exactly
    # super-resolution (Ho et al. 2021; Saharia et al. 2022): z (B, C_z, h, w) upsampled and
    # concatenated to x_t before the patch embedding; the augmentation level s embedded like t
    low_res_channels: int = 0
    aug_embedding: bool = False

    def __post_init__(self) -> None:
        size = self.input_size
        hw = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        object.__setattr__(self, "input_size", hw)
        _validate(self)

    @classmethod
    def named(cls, size: str, **kwargs: Any) -> DiTConfig:
        """The configuration of a size in :data:`DIT_SIZES` (e.g. ``"XL"``), other fields from
        ``kwargs`` (``DiTConfig.named("XL", patch_size=2)`` is DiT-XL/2)."""
        if size not in DIT_SIZES:
            raise ValueError(f"unknown DiT size {size!r}; sizes: {', '.join(DIT_SIZES)}")
        return cls(**DIT_SIZES[size]._asdict(), **kwargs)

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def cond_tokens(self) -> int:
        """k: the t token, and the y token with labels."""
        return 1 + (self.num_classes > 0)

    def tokens(self, H: int, W: int) -> int:
        return (H // self.patch_size) * (W // self.patch_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _validate(cfg: DiTConfig) -> None:
    for key in ("in_channels", "patch_size", "depth", "width", "heads", "freq_dim"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"DiT {key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.low_res_channels < 0:
        raise ValueError(f"DiT low_res_channels must be >= 0, got {cfg.low_res_channels}")
    if cfg.time_features not in TIME_FEATURES:
        raise ValueError(f"DiT time_features must be one of {', '.join(TIME_FEATURES)}, got "
                         f"{cfg.time_features!r}")
    if cfg.block not in BLOCKS:
        raise ValueError(f"DiT block must be one of {', '.join(BLOCKS)}, got {cfg.block!r}")
    if cfg.width % cfg.heads or cfg.width % 4:
        raise ValueError(f"DiT width {cfg.width} must be divisible by 4 (2-D positions) and by "
                         f"the {cfg.heads} heads")
    H, W = cfg.input_size
    if H % cfg.patch_size or W % cfg.patch_size:
        raise ValueError(f"DiT input {H}×{W} is not divisible by patch size {cfg.patch_size}")
    if cfg.num_classes < 0 or cfg.context_dim < 0:
        raise ValueError("num_classes and context_dim must be >= 0 (0 = none)")


class DiT(nn.Module):
    """ε_θ(x_t, t): x_t (B, C, H, W), t int64 (B,) in 1..T → (B, C_out, H, W), C_out = C, or 2C
    with ``learn_sigma`` ([ε̂, v_raw] for :class:`difflab.parameterization.LearnedVariance`).
    H and W must be multiples of ``patch_size``."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        D, p = cfg.width, cfg.patch_size
        # patchify [x_t (, up(z))]: (B, N, D)
        self.x_embedder = nn.Conv2d(cfg.in_channels + cfg.low_res_channels, D, p, stride=p)
        self.register_buffer("pos_embed", sincos_2d(D, *self._grid(*cfg.input_size)),
                             persistent=False)  # (N, D), fixed: not trained, not saved
        self.t_embedder = nn.Sequential(nn.Linear(cfg.freq_dim, D), nn.SiLU(), nn.Linear(D, D))
        if cfg.aug_embedding:  # s of the noise-conditioning augmentation, like t (Imagen)
            self.aug_embedder = nn.Sequential(nn.Linear(cfg.freq_dim, D), nn.SiLU(),
                                              nn.Linear(D, D))
        if cfg.num_classes:  # one row per class and a last one for the null label ∅
            self.y_embedder = nn.Embedding(cfg.num_classes + 1, D)
        if cfg.context_dim and cfg.pool_context:  # no bias: ∅ (mean 0) adds exactly 0
            self.context_embedder = nn.Linear(cfg.context_dim, D, bias=False)
        block = BLOCKS[cfg.block]
        self.blocks = nn.ModuleList(block(D, cfg.heads, cfg.mlp_ratio, cfg.context_dim)
                                    for _ in range(cfg.depth))
        adaptive = cfg.block in ("adaln", "adaln-zero")
        self.final_layer = FinalLayer(D, p * p * cfg.out_channels, adaptive)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's ``initialize_weights`` (see the module docstring). Draws from torch's global
        RNG in a fixed order."""
        cfg = self.config
        xavier_linears(self)
        w = self.x_embedder.weight  # (D, C, p, p): Xavier as the linear map (D, C·p²) it is
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        if cfg.num_classes:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder[2].weight, std=0.02)
        if cfg.aug_embedding:
            nn.init.normal_(self.aug_embedder[0].weight, std=0.02)
            nn.init.normal_(self.aug_embedder[2].weight, std=0.02)
        if cfg.context_dim and cfg.pool_context:
            nn.init.zeros_(self.context_embedder.weight)
        for blk in self.blocks:
            if cfg.block == "adaln-zero":
                nn.init.zeros_(blk.adaLN_modulation[-1].weight)
                nn.init.zeros_(blk.adaLN_modulation[-1].bias)
            if blk.text is not None:  # a new text layer starts as the identity
                nn.init.zeros_(blk.text.attn.proj.weight)
                nn.init.zeros_(blk.text.attn.proj.bias)
        final = self.final_layer
        if final.adaLN_modulation is not None:
            nn.init.zeros_(final.adaLN_modulation[-1].weight)
            nn.init.zeros_(final.adaLN_modulation[-1].bias)
        nn.init.zeros_(final.linear.weight)
        nn.init.zeros_(final.linear.bias)

    # --- the forward pass -----------------------------------------------------------------------
    def condition(
        self,
        t: Tensor,
        y: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        aug_level: Tensor | None = None,
    ) -> DiTConditioning:
        """c: the t embedding (B, D) (+ the pooled caption, + the embedded augmentation level s
        of a super-resolution network, None: s = 0), the label embedding (B, D); their sum and
        their stack as tokens (B, k, D); the caption tokens. None is ∅."""
        cfg = self.config
        features = TIME_FEATURES[cfg.time_features]
        t_emb = self.t_embedder(features(t, cfg.freq_dim))  # (B, D)
        s = check_aug_level(aug_level, cfg.aug_embedding, t)  # (B,) or None
        if s is not None:
            t_emb = t_emb + self.aug_embedder(timestep_embedding(s, cfg.freq_dim))  # (B, D)
        if y is not None and not cfg.num_classes:
            raise ValueError("y given to an unconditional network (num_classes = 0)")
        if context is None and context_mask is not None:
            raise ValueError("context_mask given without context")
        if context is not None:
            if not cfg.context_dim:
                raise ValueError("context given to a network without cross-attention "
                                 "(context_dim = 0)")
            self.check_context(context, context_mask, t)
            if cfg.pool_context:
                t_emb = t_emb + self.context_embedder(masked_mean(context, context_mask))
        embs = [t_emb]
        if cfg.num_classes:
            embs.append(self.y_embedder(check_labels(y, cfg.num_classes, t)))  # (B, D)
        vec = embs[0] if len(embs) == 1 else embs[0] + embs[1]  # (B, D)
        return DiTConditioning(vec=vec, tokens=torch.stack(embs, dim=1), context=context,
                               context_mask=context_mask)

    def patchify(self, x_t: Tensor) -> Tensor:
        """x_t (B, C, H, W) → tokens (B, N, D): linear patch embedding + position embedding."""
        H, W = x_t.shape[-2:]
        x = self.x_embedder(x_t).flatten(2).transpose(1, 2)  # (B, N, D)
        return x + self.position_embedding(H, W).to(x.dtype)

    def position_embedding(self, H: int, W: int) -> Tensor:
        """(N, D): the buffer for ``input_size``, the closed form for any other grid."""
        if self.config.input_size == (H, W):
            return self.pos_embed
        return sincos_2d(self.config.width, *self._grid(H, W)).to(self.pos_embed.device)

    def unpatchify(self, x: Tensor, H: int, W: int) -> Tensor:
        """(B, N, p·p·C_out) → (B, C_out, H, W)."""
        return from_patches(x, self.config.patch_size, H, W)

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
        self.check_input(x_t)
        H, W = x_t.shape[-2:]
        c = self.condition(t, y, context, context_mask, aug_level)
        x_in = with_low_res(x_t, low_res, self.config.low_res_channels)  # (B, C + C_z, H, W)
        x = self.patchify(x_in)  # (B, N, D)
        in_context = self.config.block == "in-context"
        if in_context:  # t and y as k extra tokens in front (no position)
            x = torch.cat([c.tokens.to(x.dtype), x], dim=1)  # (B, k + N, D)
        for block in self.blocks:
            x = block(x, c)
        if in_context:
            x = x[:, self.config.cond_tokens:]  # drop the conditioning tokens: (B, N, D)
        return self.unpatchify(self.final_layer(x, c), H, W)  # (B, C_out, H, W)

    # --- helpers --------------------------------------------------------------------------------
    def _grid(self, H: int, W: int) -> tuple[int, int]:
        return H // self.config.patch_size, W // self.config.patch_size

    def check_input(self, x_t: Tensor) -> None:
        """Raise a one-line ValueError for an input this network cannot take."""
        cfg = self.config
        if x_t.ndim != 4 or x_t.shape[1] != cfg.in_channels:
            raise ValueError(f"expected input (B, {cfg.in_channels}, H, W), got "
                             f"{tuple(x_t.shape)}")
        H, W = x_t.shape[-2:]
        if H % cfg.patch_size or W % cfg.patch_size:
            raise ValueError(f"input {H}×{W} is not divisible by the patch size "
                             f"{cfg.patch_size}; resize or pad to a multiple of it")

    def check_context(self, context: Tensor, mask: Tensor | None, t: Tensor) -> None:
        D = self.config.context_dim
        if context.ndim != 3 or context.shape[0] != t.shape[0] or context.shape[2] != D:
            raise ValueError(f"expected context (B={t.shape[0]}, L, {D}), got "
                             f"{tuple(context.shape)}")
        if mask is not None and (mask.dtype != torch.bool or mask.shape != context.shape[:2]):
            raise ValueError(f"expected context_mask bool {tuple(context.shape[:2])}, got "
                             f"{mask.dtype} {tuple(mask.shape)}")

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


# --- counting without building ------------------------------------------------------------------
def dit_param_count(cfg: DiTConfig) -> int:
    """The number of parameters of ``DiT(cfg)``, in closed form."""
    D, C, p, R = cfg.width, cfg.in_channels, cfg.patch_size, int(cfg.width * cfg.mlp_ratio)

    def linear(i: int, o: int, bias: bool = True) -> int:
        return i * o + (o if bias else 0)

    n = linear(C * p * p, D)  # patch embedding
    n += linear(cfg.freq_dim, D) + linear(D, D)  # t MLP
    n += (cfg.num_classes + 1) * D if cfg.num_classes else 0
    n += linear(cfg.context_dim, D, bias=False) if cfg.context_dim and cfg.pool_context else 0
    block = linear(D, 3 * D) + linear(D, D) + linear(D, R) + linear(R, D)  # attention, MLP
    block += {"adaln-zero": linear(D, 6 * D), "adaln": linear(D, 4 * D),
              "cross-attention": linear(D, D) + linear(D, 2 * D) + linear(D, D) + 3 * 2 * D,
              "in-context": 2 * 2 * D}[cfg.block]  # modulation, or cross-attention / LN affines
    if cfg.context_dim:
        block += 2 * D + linear(D, D) + linear(cfg.context_dim, 2 * D) + linear(D, D)
    n += cfg.depth * block
    adaptive = cfg.block in ("adaln", "adaln-zero")
    n += linear(D, 2 * D) if adaptive else 2 * D  # final modulation, or LayerNorm affine
    return n + linear(D, p * p * cfg.out_channels)


def dit_flops(cfg: DiTConfig, H: int | None = None, W: int | None = None, batch: int = 1,
              context_tokens: int = 0) -> int:
    """Floating-point operations of one forward pass, in closed form, counted as
    ``torch.utils.flop_counter`` counts them: 2 per multiply-add of every matrix product
    (linear layers, the patch convolution, QKᵀ and the attention-weighted sum of V); norms,
    activations and softmax are not counted. The paper's "Gflops" (fvcore) count one per
    multiply-add: half of this. ``context_tokens``: L caption tokens, with ``context_dim``."""
    H, W = (H, W) if H is not None else cfg.input_size
    D, C, p, R = cfg.width, cfg.in_channels, cfg.patch_size, int(cfg.width * cfg.mlp_ratio)
    N = cfg.tokens(H, W)
    k = cfg.cond_tokens
    L = context_tokens if cfg.context_dim else 0
    M = N + k if cfg.block == "in-context" else N  # tokens the blocks see

    def attention(q: int, kv: int, kv_dim: int) -> int:  # q tokens attend to kv tokens
        return 2 * (q * D * D + kv * kv_dim * 2 * D + q * D * D) + 4 * q * kv * D

    macs_x2 = 2 * N * C * p * p * D + 2 * (cfg.freq_dim * D + D * D)
    macs_x2 += 2 * cfg.context_dim * D if L and cfg.pool_context else 0
    block = attention(M, M, D) + 4 * M * D * R
    block += {"adaln-zero": 2 * D * 6 * D, "adaln": 2 * D * 4 * D,
              "cross-attention": attention(N, k, D), "in-context": 0}[cfg.block]
    block += attention(M, L, cfg.context_dim) if L else 0
    macs_x2 += cfg.depth * block
    macs_x2 += 2 * D * 2 * D if cfg.block in ("adaln", "adaln-zero") else 0
    macs_x2 += 2 * N * D * p * p * cfg.out_channels
    return batch * macs_x2
