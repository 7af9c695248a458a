"""Exponential moving averages of weights: the EMA model of diffusion training and the target
network θ⁻ of consistency models."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def ema_decay_at(decay: float, step: int) -> float:
    """EMA decay after update ``step`` (1-based): min(decay, (1 + n)/(10 + n)), so the average
    forgets the random initialisation quickly (as in Ho et al.'s and diffusers' EMA)."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema_params: list[Tensor], params: list[Tensor], decay: float) -> None:
    """θ_ema ← decay · θ_ema + (1 − decay) · θ, for matching lists of tensors."""
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


@torch.no_grad()
def ema_(target: nn.Module, online: nn.Module, mu: float) -> None:
    """θ⁻ ← μ θ⁻ + (1 − μ) θ, parameter by parameter, buffers copied (Song et al. 2023,
    Alg. 2-3)."""
    ema_update(list(target.parameters()), list(online.parameters()), mu)
    for tb, b in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(b)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with gradients off (a teacher or an EMA target)."""
    import copy

    return copy.deepcopy(module).requires_grad_(False)
