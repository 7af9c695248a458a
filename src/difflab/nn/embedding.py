"""Sinusoidal embedding of the integer timestep t (Vaswani et al. 2017, §3.5; Ho et al. 2020, §4).

emb(t)_i = sin(t · ω_i) for i < d/2 and cos(t · ω_{i−d/2}) after, with ω_i = max_period^(−i/(d/2)),
so that nearby t get nearby vectors and the network sees t at every scale from 1 to T.

Class labels are embedded by a learned table (``nn.Embedding``) whose last row, index K, is the
null label ∅ of classifier-free guidance; :func:`check_labels` validates them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of t: int or float tensor (B,) → float32 (B, dim).

    The layout is [sin(t ω), cos(t ω)] as in Ho et al.'s implementation; an odd ``dim`` gets one
    zero column at the end.
    """
    if dim < 1:
        raise ValueError(f"embedding dim must be >= 1, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (half,)
    args = t.to(torch.float32)[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, 2·half)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def diffusers_timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """The sinusoidal features diffusers' DiT computes (``Timesteps(dim, flip_sin_to_cos=True,
    downscale_freq_shift=1)``): [cos(t' ω), sin(t' ω)] of diffusers' 0-based timestep
    t' = t − 1, with ω_i = max_period^(−i/(d/2 − 1)). Int tensor t (B,) in 1..T → float32
    (B, dim), computed with the same float32 operations, so a DiT with
    ``time_features="diffusers"`` is exactly a ``DiTTransformer2DModel`` (difflab.interop)."""
    half = dim // 2
    if half < 2:
        raise ValueError(f"diffusers' timestep features need dim >= 4, got {dim}")
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - 1))  # (half,)
    args = (t - 1).float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    """t ↦ MLP(sinusoidal(t)): int64 (B,) → (B, out_dim)."""

    def __init__(self, t_dim: int, out_dim: int):
        super().__init__()
        self.t_dim = t_dim
        self.mlp = nn.Sequential(nn.Linear(t_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.t_dim))  # (B, out_dim)


def check_labels(y: Tensor | None, num_classes: int, t: Tensor) -> Tensor:
    """Class labels y int64 (B,) in 0..K (K = ``num_classes`` is the null label ∅); None → ∅
    for every row of t (B,). Raises a one-line ValueError for anything else."""
    if y is None:
        return torch.full_like(t, num_classes, dtype=torch.long)  # (B,) all ∅
    if y.dtype not in (torch.int64, torch.int32) or y.shape != t.shape:
        raise ValueError(f"expected labels y int64 of shape {tuple(t.shape)}, got {y.dtype} "
                         f"{tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) > num_classes):
        raise ValueError(
            f"labels must be in 0..{num_classes} ({num_classes} = the null label), got values "
            f"in {int(y.min())}..{int(y.max())}"
        )
    return y.long()



def check_aug_level(aug_level: Tensor | None, enabled: bool, t: Tensor) -> Tensor | None:
    """The augmentation level s (B,) of a cascade's super-resolution network (Saharia et al.
    2022: embedded like t), 0 where None; None for a network without ``enabled`` aug embedding.
    One-line ValueErrors for an unexpected or misshapen s."""
    if not enabled:
        if aug_level is not None:
            raise ValueError("aug_level given to a network without aug_embedding")
        return None
    s = torch.zeros_like(t) if aug_level is None else aug_level
    if s.shape != t.shape:
        raise ValueError(f"expected aug_level of shape {tuple(t.shape)}, got {tuple(s.shape)}")
    return s


def with_low_res(x_t: Tensor, low_res: Tensor | None, channels: int) -> Tensor:
    """x_t (B, C, H, W), and for a super-resolution network (``channels`` = C_z > 0)
    [x_t, up(z)] (B, C + C_z, H, W): z = ``low_res`` (B, C_z, h, w) upsampled bilinearly to
    H × W (Ho et al. 2021, §2). One-line ValueErrors for a missing, unexpected or misshapen z."""
    if not channels:
        if low_res is not None:
            raise ValueError("low_res given to a network without low_res_channels")
        return x_t
    if low_res is None:
        raise ValueError("a super-resolution network needs its low-resolution image low_res")
    if low_res.ndim != 4 or low_res.shape[:2] != (x_t.shape[0], channels):
        raise ValueError(f"expected low_res ({x_t.shape[0]}, {channels}, h, w), got "
                         f"{tuple(low_res.shape)}")
    up = torch.nn.functional.interpolate(low_res.to(x_t.dtype), size=x_t.shape[-2:],
                                         mode="bilinear", align_corners=False)
    return torch.cat([x_t, up], dim=1)  # (B, C + C_z, H, W)
