"""Training and evaluating the noisy classifier f_φ(y | x_t, t) of classifier guidance.

Dhariwal & Nichol 2021 (ADM), §4.1: the classifier is trained with cross-entropy on noisy
images x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Weng eq. 3) at t drawn uniformly from {1, …, T}, so that
∇_{x_t} log f_φ(y | x_t) is meaningful at every step of sampling (Weng eq. 24-25).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 (the usual name)

from ..schedules import Schedule


def _noisy(schedule: Schedule, x0: Tensor, t: Tensor, generator: torch.Generator | None):
    """x_t = q_sample(x0, t, ε) with ε drawn on the CPU from ``generator`` (Weng eq. 3)."""
    eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    return schedule.q_sample(x0, t, eps)


def train_noisy_classifier(
    net: nn.Module,
    schedule: Schedule,
    x0: Tensor,
    labels: Tensor,
    *,
    steps: int,
    batch: int,
    lr: float,
    generator: torch.Generator | None = None,
    t_max: int | None = None,
    weight_decay: float = 0.0,
    log: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``net(x_t, t) -> logits`` by cross-entropy on x_t = q_sample(x0, t, ε), t ~ U{1..T}
    (or U{1..t_max}); ADM §4.1. Returns ``net``, in eval mode.

    x0 (N, C, H, W) and labels int64 (N,) on the net's device; each step draws ``batch`` rows
    with replacement, their t and their ε from ``generator`` (a CPU generator; None: the global
    one), and takes one AdamW step. ``log(step, loss)`` is called after every step if given.
    """
    T = schedule.T if t_max is None else int(t_max)
    if not 1 <= T <= schedule.T:
        raise ValueError(f"t_max must be in 1..{schedule.T}, got {t_max}")
    if len(x0) != len(labels) or len(x0) == 0:
        raise ValueError(f"need as many labels as images (> 0), got {len(labels)} and {len(x0)}")
    if steps < 0 or batch < 1:
        raise ValueError(f"steps must be >= 0 and batch >= 1, got {steps} and {batch}")
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    for step in range(steps):
        idx = torch.randint(len(x0), (batch,), generator=generator).to(x0.device)  # (b,)
        t = torch.randint(1, T + 1, (batch,), generator=generator)  # (b,), CPU like the schedule
        x_t = _noisy(schedule, x0[idx], t, generator)  # (b, C, H, W)
        loss = F.cross_entropy(net(x_t, t.to(x0.device)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log is not None:
            log(step, float(loss.detach()))
    return net.eval()


@torch.no_grad()
def classifier_accuracy(
    net: nn.Module,
    schedule: Schedule,
    x0: Tensor,
    labels: Tensor,
    t: int | Tensor,
    *,
    generator: torch.Generator | None = None,
    batch: int = 512,
) -> float:
    """Fraction of argmax f_φ(· | x_t, t) = y over x_t = q_sample(x0, t, ε): one fresh ε per
    image; ``t`` an int (every image at that step) or int64 (N,). Runs ``net`` in eval mode."""
    N = len(x0)
    t = torch.full((N,), t, dtype=torch.long) if isinstance(t, int) else t.cpu().long()
    net.eval()
    correct = 0
    for s in range(0, N, batch):
        tt = t[s : s + batch]  # (b,)
        x_t = _noisy(schedule, x0[s : s + batch], tt, generator)  # (b, C, H, W)
        pred = net(x_t, tt.to(x0.device)).argmax(dim=-1)  # (b,)
        correct += int((pred == labels[s : s + batch]).sum())
    return correct / N
