"""Training a noise-aware CLIP (GLIDE, Nichol et al. 2022, §2.4): CLIP's objective
(:class:`.clip.ClipObjective`, symmetric InfoNCE with a learned temperature) between the image
embeddings f(x_t, t) of noised training images and the text embeddings g(c) of their captions.

Per update: B images x_0 with one caption each, t ~ U{1..T} and ε ~ N(0, I) per image, and
x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (Weng eq. 3) under the diffusion run's schedule — the x_t that a
sampler will show the encoder during CLIP guidance (Weng eq. 25).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..contrastive import info_nce
from ..nn.noisy_clip import NoisyCLIP
from ..schedules import Schedule
from .clip import ClipObjective


class NoisyClipObjective(ClipObjective):
    """InfoNCE of ``net`` (:class:`NoisyCLIP`) on x_t of ``schedule`` and the captions."""

    def __init__(self, net: NoisyCLIP, schedule: Schedule, data: Tensor, conds, **kwargs):
        super().__init__(net, data, conds, **kwargs)
        self.schedule = schedule

    def draw(self, step: int, g: torch.Generator) -> dict[str, Tensor]:
        batch = super().draw(step, g)  # x (B, C, H, W), context (B, L, 384), context_mask
        B = batch["x"].shape[0]
        batch["t"] = torch.randint(1, self.schedule.T + 1, (B,), generator=g)  # (B,)
        batch["eps"] = torch.randn(batch["x"].shape, generator=g).to(batch["x"].dtype)
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        t = batch["t"]
        x_t = self.schedule.q_sample(batch["x"], t.cpu(), batch["eps"])  # Weng eq. (3)
        image, text, log_scale = model(x_t, batch["context"], batch["context_mask"], t)
        loss = info_nce(image, text, log_scale)
        self.last = {"temperature": (-log_scale.detach()).exp(), "loss": loss.detach()}
        return loss
