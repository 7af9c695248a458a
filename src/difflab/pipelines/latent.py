"""Latent diffusion's codec (Rombach et al. 2022, §3.2; Weng eq. 33): the denoiser works on
z = s · E(x) and images come back as x̃ = D(z / s).

The scale s makes the latents unit-variance, so that the schedule's noise levels mean what they
mean in pixel space (ᾱ_t → 0 drowns the signal). LDM measures s = 1/std(z) over a batch of its
first-stage latents; its 0.18215 belongs to its own autoencoder on its own data, which is why
difflab measures s for every autoencoder (:func:`latent_std`, over a whole pass of the training
set) and stores it in the runs (``latent_scale``).

KL latents are draws z ~ q(z|x) (a fresh draw every time: the posterior noise is part of the
data the denoiser learns); VQ latents are the encoder's output h before quantisation, which the
decoder quantises (LDM's choice: the quantiser lives in the decoder).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nn.autoencoder import Autoencoder


class LatentCodec(nn.Module):
    """z = scale · E(x) and x̃ = D(z / scale) around a frozen autoencoder."""

    def __init__(self, ae: Autoencoder, scale: float):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"the latent scale must be positive, got {scale}")
        self.ae, self.scale = ae.eval().requires_grad_(False), float(scale)

    def latent_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return self.ae.latent_shape(shape)

    def moments(self, x: Tensor) -> Tensor:
        """The encoder's output for images x (B, C, H, W): (B, 2c, h, w) KL, (B, c, h, w) VQ."""
        return self.ae.encode(x)

    def from_moments(self, moments: Tensor, noise: Tensor | None = None) -> Tensor:
        """z = scale · (a draw of q(z|x) with ``noise``, or its mean; VQ: h), (B, c, h, w)."""
        return self.scale * self.ae.latent(moments, noise)

    def encode(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        return self.from_moments(self.moments(x), noise)

    def decode(self, z: Tensor) -> Tensor:
        """Images (B, C, H, W) of latents z (B, c, h, w) in the denoiser's (scaled) space."""
        return self.ae.decode(z / self.scale)

    def train(self, mode: bool = True) -> LatentCodec:  # frozen: always in eval mode
        return super().train(False)


@torch.inference_mode()
def latent_std(ae: Autoencoder, x: Tensor, generator: torch.Generator | None = None,
               batch: int = 500) -> float:
    """The standard deviation of the unscaled latents of images x (N, C, H, W), over every
    element: KL: draws z ~ q(z|x) (noise from ``generator``); VQ: h. One pass, in batches."""
    device = next(ae.parameters()).device
    total, total_sq, n = 0.0, 0.0, 0
    for xb in x.split(batch):
        m = ae.encode(xb.to(device))
        noise = None
        if ae.quantizer is None:
            shape = (m.shape[0], m.shape[1] // 2, *m.shape[2:])
            noise = torch.randn(shape, generator=generator).to(device)
        z = ae.latent(m, noise).double()
        total += float(z.sum())
        total_sq += float(z.pow(2).sum())
        n += z.numel()
    mean = total / n
    return max(total_sq / n - mean * mean, 0.0) ** 0.5
