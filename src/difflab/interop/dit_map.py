"""difflab's DiT (:class:`~difflab.nn.dit.DiT`) as diffusers' ``DiTTransformer2DModel``: the
config and the weights, such that the two networks compute the same function.

What matches (read from both sources; tests/test_interop_dit.py checks it to 1e-5):

- The adaLN-Zero block: LayerNorm without affine (eps 1e-6), (shift, scale, gate) for the
  attention and for the MLP regressed from c in that order (diffusers' ``AdaLayerNormZero``),
  attention with q/k/v projections with bias (difflab's fused ``qkv`` is split), an MLP of 4×
  the width with tanh-approximated GELU (``"gelu-approximate"``), gated residual sums.
- The final layer: a non-affine LayerNorm modulated by (shift, scale) from c (``proj_out_1``),
  the linear map (``proj_out_2``) and the same un-patchify layout; the patch embedding is the
  same p×p convolution with stride p plus the fixed 2-D sin-cos positions.
- Labels: a table of K + 1 rows whose last row is the null label ∅ (diffusers' LabelEmbedding
  with its class-dropout row). diffusers gives every block its own copy of the t and y
  embedders; difflab shares one, which is copied into each. An unconditional difflab DiT gets a
  table of zeros (K = 1): pass ``class_labels = 0``.
- Time: diffusers' DiT embeds its 0-based timestep t' as [cos, sin] with frequencies
  10000^(−i/(h−1)) over 256 features; difflab's default DiT embeds t = t' + 1 as [sin, cos] with
  10000^(−i/h), a different function of t that no weight change can turn into the other. A DiT
  trained with ``dit_time_features = "diffusers"`` (and the default ``freq_dim`` 256) computes
  diffusers' features itself (:func:`difflab.nn.embedding.diffusers_timestep_embedding`) and so
  exports exactly; any other DiT run is refused with that advice.

Refused besides: the other three block designs of Peebles & Xie (Fig. 5), text
cross-attention, super-resolution inputs, non-square images and an MLP ratio other than 4.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InteropError
from ..nn.dit import DiT, DiTConfig

DIFFUSERS_FREQ_DIM = 256  # CombinedTimestepLabelEmbeddings' fixed number of t features


def dit_problems(cfg: DiTConfig) -> list[str]:
    """Why this DiT has no exact ``DiTTransformer2DModel`` equivalent ([] when it has one)."""
    problems = []
    if cfg.time_features != "diffusers" or cfg.freq_dim != DIFFUSERS_FREQ_DIM:
        problems.append("its timestep features are difflab's (sin, cos of t with frequencies "
                        "10000^(-i/h)), a different function of t than diffusers' DiT's; train "
                        "the run with dit_time_features = \"diffusers\" (freq_dim 256) to "
                        "export it")
    if cfg.block != "adaln-zero":
        problems.append(f"its blocks are {cfg.block!r} (diffusers' DiT has adaLN-Zero only)")
    if cfg.context_dim:
        problems.append("it reads text through cross-attention")
    if cfg.low_res_channels or cfg.aug_embedding:
        problems.append("it is a super-resolution stage")
    if cfg.input_size[0] != cfg.input_size[1]:
        problems.append(f"its images are not square ({cfg.input_size})")
    if cfg.mlp_ratio != 4.0:
        problems.append(f"its MLP ratio is {cfg.mlp_ratio} (diffusers' FeedForward: 4)")
    return problems


def check_dit(cfg: DiTConfig) -> None:
    problems = dit_problems(cfg)
    if problems:
        raise InteropError("this DiT has no exact diffusers DiTTransformer2DModel equivalent: "
                           + "; ".join(problems))


def dit_config(cfg: DiTConfig) -> dict[str, Any]:
    """The keywords of diffusers' ``DiTTransformer2DModel`` that build this DiT's twin."""
    check_dit(cfg)
    return dict(num_attention_heads=cfg.heads, attention_head_dim=cfg.width // cfg.heads,
                in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                num_layers=cfg.depth, dropout=0.0, attention_bias=True,
                sample_size=cfg.input_size[0], patch_size=cfg.patch_size,
                activation_fn="gelu-approximate", num_embeds_ada_norm=cfg.num_classes or 1,
                upcast_attention=False, norm_type="ada_norm_zero",
                norm_elementwise_affine=False, norm_eps=1e-6)


def dit_state_dict(net: DiT) -> dict[str, Tensor]:
    """The weights of :func:`dit_config`'s ``DiTTransformer2DModel`` for ``net`` (copies; the
    fixed position embedding buffer is diffusers' own and not included)."""
    cfg = net.config
    check_dit(cfg)
    out: dict[str, Tensor] = {}

    def put(prefix: str, module: nn.Module) -> None:
        for key, value in module.state_dict().items():
            out[f"{prefix}.{key}"] = value.detach().clone()

    put("pos_embed.proj", net.x_embedder)
    labels = (net.y_embedder.weight.detach() if cfg.num_classes
              else torch.zeros(2, cfg.width))  # unconditional: labels add exactly zero
    for i, blk in enumerate(net.blocks):
        p = f"transformer_blocks.{i}"
        put(f"{p}.norm1.emb.timestep_embedder.linear_1", net.t_embedder[0])
        put(f"{p}.norm1.emb.timestep_embedder.linear_2", net.t_embedder[2])
        out[f"{p}.norm1.emb.class_embedder.embedding_table.weight"] = labels.clone()
        put(f"{p}.norm1.linear", blk.adaLN_modulation[1])
        for part in ("weight", "bias"):  # the fused [W_Q; W_K; W_V] split in three
            for name, w in zip(("to_q", "to_k", "to_v"),
                               getattr(blk.attn.qkv, part).detach().chunk(3, dim=0), strict=True):
                out[f"{p}.attn1.{name}.{part}"] = w.clone()
        put(f"{p}.attn1.to_out.0", blk.attn.proj)
        put(f"{p}.ff.net.0.proj", blk.mlp.fc1)
        put(f"{p}.ff.net.2", blk.mlp.fc2)
    put("proj_out_1", net.final_layer.adaLN_modulation[1])
    put("proj_out_2", net.final_layer.linear)
    return {k: v.float().contiguous() for k, v in out.items()}


def dit_transformer(diffusers: ModuleType, net: DiT) -> nn.Module:
    """diffusers' ``DiTTransformer2DModel`` with ``net``'s weights (strictly: every weight of
    it set, nothing left over)."""
    model = diffusers.DiTTransformer2DModel(**dit_config(net.config))
    weights = dit_state_dict(net)
    own = model.state_dict()
    for key in own.keys() - weights.keys():  # buffers computed from the config
        if key.endswith("pos_embed.pos_embed"):
            weights[key] = own[key]
    model.load_state_dict(weights, strict=True)
    return model.eval()
