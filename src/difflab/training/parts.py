"""Pieces the distillation loops share: batches drawn from one generator, AdamW, EMA targets.

The conventions are those of :mod:`difflab.train`: every random number of a loop comes from the
caller's ``torch.Generator``; AdamW is fused; an EMA is a ``torch._foreach_lerp_``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def draw_batch(data: Tensor, batch: int, generator: torch.Generator | None,
               cond_data: dict[str, Tensor] | None = None) -> tuple[Tensor, dict]:
    """A batch of rows of ``data`` (N, …) drawn with replacement, and the same rows of every
    per-example conditioning tensor in ``cond_data`` (e.g. {"y": labels (N,)})."""
    idx = torch.randint(0, data.shape[0], (batch,), generator=generator)  # (B,)
    x0 = data[idx]  # (B, …)
    cond = {k: v[idx] for k, v in (cond_data or {}).items()}
    return x0, cond


def adamw(module: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


@torch.no_grad()
def ema_(target: nn.Module, online: nn.Module, mu: float) -> None:
    """θ⁻ ← μ θ⁻ + (1 − μ) θ, parameter by parameter (Song et al. 2023, Alg. 2-3)."""
    t_params, params = list(target.parameters()), list(online.parameters())
    torch._foreach_lerp_(t_params, params, 1.0 - mu)
    for tb, b in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(b)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with gradients off (a teacher or an EMA target)."""
    import copy

    return copy.deepcopy(module).requires_grad_(False)
