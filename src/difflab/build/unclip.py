"""The conditions of unCLIP's prior and decoder (Weng eq. 34; Ramesh et al. 2022): a run's
captions (:class:`~difflab.build.conditioning.TrainConditions`, the frozen MiniLM's tokens)
extended with what a frozen CLIP makes of them and of the images.

- Prior: each caption's CLIP text embedding, as √D · c_t (key ``text_emb``), beside its tokens;
  all three are dropped to ∅ together with probability ``p_uncond`` (the paper's 10 %).
- Decoder: each training image's CLIP image embedding c_i (key ``clip_emb``), dropped to 0
  with probability ``p_uncond_image`` (10 %), and its caption, dropped independently with
  probability ``p_uncond`` (50 %) — :class:`DecoderConditions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .conditioning import TrainConditions


def clip_device(clip: nn.Module) -> torch.device:
    return next(clip.parameters()).device


@torch.no_grad()
def image_embeddings(clip: nn.Module, x: Tensor, batch: int = 500) -> Tensor:
    """c_i(x) of images (N, C, H, W) → (N, D) unit-norm, on the CPU."""
    device = clip_device(clip)
    return torch.cat([clip.encode_image(xb.to(device)).cpu() for xb in x.split(batch)])


@torch.no_grad()
def text_embeddings(clip: nn.Module, tokens: Tensor, mask: Tensor, batch: int = 500) -> Tensor:
    """c_t(y) of captions given as MiniLM tokens (U, L, 384) and masks (U, L) → (U, D)
    unit-norm on the CPU; exactly 0 for the null caption ∅ (an all-False mask)."""
    device = clip_device(clip)
    out = torch.cat([clip.encode_text(t.to(device), m.to(device)).cpu()
                     for t, m in zip(tokens.split(batch), mask.split(batch), strict=True)])
    return out * mask.any(dim=1, keepdim=True)


def prior_conditions(captions: TrainConditions, clip: nn.Module) -> TrainConditions:
    """``captions`` with each caption's √D · c_t as ``text_emb`` (and ∅ = 0)."""
    table = dict(captions.table)
    emb = text_embeddings(clip, table["context"], table["context_mask"])  # (U, D)
    D = emb.shape[1]
    table["text_emb"] = emb * math.sqrt(D)
    null = {**captions.null, "text_emb": torch.zeros(1, D)}
    return TrainConditions(table, captions.choices, null)


@dataclass
class DecoderConditions:
    """The decoder's conditions of a batch: the caption (``captions``, dropped with the
    objective's ``p_uncond``) and the image embedding ``clip_emb`` (N, D) of each training
    image, dropped to 0 with probability ``p_image``, independently."""

    captions: TrainConditions
    clip_emb: Tensor  # (N, D)
    p_image: float

    def batch(self, idx: Tensor, generator: torch.Generator, p_uncond: float) -> dict:
        out = self.captions.batch(idx, generator, p_uncond)
        drop = torch.rand(idx.shape[0], generator=generator) < self.p_image  # (B,)
        emb = self.clip_emb[idx]  # (B, D)
        out["clip_emb"] = torch.where(drop[:, None], torch.zeros_like(emb), emb)
        return out
