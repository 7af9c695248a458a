"""Training a small CLIP (Radford et al. 2021) as an objective of the one loop: per update, B
training images with one of their captions each (the frozen MiniLM's tokens, from the run's
:class:`~difflab.build.conditioning.TrainConditions`; digits draw a fresh template per example),
and the symmetric InfoNCE of :func:`difflab.contrastive.info_nce` with the learned temperature.
An EMA of the weights is what unCLIP runs and the evaluation use.

Captions repeat in a batch (digits: ten classes; shapes: a lone "a small red circle" has many
images), so some off-diagonal pairs match too; CLIP's loss treats them as negatives all the
same, as the paper does with its web pairs.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..contrastive import info_nce
from ..nn.clip import CLIP
from .diffusion import LRSchedule
from .ema import ema_decay_at, ema_update
from .loop import Objective


class ClipObjective(Objective):
    """InfoNCE of ``net`` on images ``data`` (N, C, H, W) and the captions of ``conds``."""

    def __init__(self, net: CLIP, data: Tensor, conds, *, batch: int, lr: LRSchedule,
                 ema_decay: float, weight_decay: float = 0.0, grad_clip: float = 1.0):
        if conds is None:
            raise ValueError("CLIP trains on captions: the run needs cond = 'text'")
        self.net, self.data, self.conds, self.batch = net, data, conds, batch
        self.ema = copy.deepcopy(net).requires_grad_(False)
        self.schedule_lr, self.lr, self.ema_decay = lr, lr.lr, ema_decay
        self.weight_decay, self.grad_clip = weight_decay, grad_clip
        self.last: dict[str, Tensor] = {}

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.net, "ema": self.ema}

    def draw(self, step: int, g: torch.Generator) -> dict[str, Tensor]:
        idx = torch.randint(0, len(self.data), (self.batch,), generator=g)  # (B,)
        cond = self.conds.batch(idx, g, 0.0)  # {"context": (B, L, 384), "context_mask": (B, L)}
        return {"x": self.data[idx], **cond}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        image, text, log_scale = model(batch["x"], batch["context"], batch["context_mask"])
        loss = info_nce(image, text, log_scale)
        self.last = {"temperature": (-log_scale.detach()).exp(), "loss": loss.detach()}
        return loss

    def lr_at(self, step: int) -> float:
        return self.schedule_lr(step)

    def after_update(self, step: int) -> None:
        ema_update(list(self.ema.parameters()), list(self.net.parameters()),
                   ema_decay_at(self.ema_decay, step))

    def metrics(self) -> dict[str, float]:
        return {f"last_{k}": float(v) for k, v in self.last.items()}
