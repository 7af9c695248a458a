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
from .loop import Objective, fit


def _noisy(schedule: Schedule, x0: Tensor, t: Tensor, generator: torch.Generator | None):
    """x_t = q_sample(x0, t, ε) with ε drawn on the CPU from ``generator`` (Weng eq. 3)."""
    eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    return schedule.q_sample(x0, t, eps)


class NoisyClassifierObjective(Objective):
    """Cross-entropy of ``net(x_t, t) -> logits`` on x_t = q_sample(x0, t, ε), t ~ U{1..t_max}
    (ADM §4.1); AdamW (the for-each kind) at a constant learning rate, no clipping, no EMA."""

    fused = False

    def __init__(self, net: nn.Module, schedule: Schedule, x0: Tensor, labels: Tensor, *,
                 batch: int, lr: float, t_max: int | None = None, weight_decay: float = 0.0):
        self.T = schedule.T if t_max is None else int(t_max)
        if not 1 <= self.T <= schedule.T:
            raise ValueError(f"t_max must be in 1..{schedule.T}, got {t_max}")
        if len(x0) != len(labels) or len(x0) == 0:
            raise ValueError(f"need as many labels as images (> 0), got {len(labels)} and "
                             f"{len(x0)}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.net, self.schedule, self.x0, self.labels = net, schedule, x0, labels
        self.batch, self.lr, self.weight_decay = batch, lr, weight_decay

    def draw(self, step: int, g: torch.Generator) -> dict[str, Tensor]:
        idx = torch.randint(len(self.x0), (self.batch,), generator=g)  # (b,)
        t = torch.randint(1, self.T + 1, (self.batch,), generator=g)  # (b,)
        x0 = self.x0[idx].cpu()  # (b, C, H, W)
        eps = torch.randn(x0.shape, generator=g).to(x0.dtype)  # (b, C, H, W)
        return {"x0": x0, "t": t, "eps": eps, "y": self.labels[idx].cpu()}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        x_t = self.schedule.q_sample(batch["x0"], batch["t"], batch["eps"])  # Weng eq. (3)
        return F.cross_entropy(model(x_t, batch["t"]), batch["y"])


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
    (or U{1..t_max}); ADM §4.1 — :class:`NoisyClassifierObjective` in the one loop, in memory.
    Returns ``net``, in eval mode.

    x0 (N, C, H, W) and labels int64 (N,); each step draws ``batch`` rows with replacement, their
    t and their ε from ``generator`` (a CPU generator; None: a fresh one), and takes one AdamW
    step. ``log(step, loss)`` is called after every step (0-based) if given.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    obj = NoisyClassifierObjective(net, schedule, x0, labels, batch=batch, lr=lr, t_max=t_max,
                                   weight_decay=weight_decay)
    if steps:
        fit(obj, steps=steps, generator=generator or torch.Generator(),
            on_update=None if log is None else lambda k, value: log(k - 1, value))
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
