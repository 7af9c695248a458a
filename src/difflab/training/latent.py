"""Latent diffusion's objective (Rombach et al. 2022, eq. 2; Weng eq. 33 without the text):
L_simple (or L_hybrid) on z = s · E(x) through the frozen autoencoder of a
:class:`~difflab.pipelines.latent.LatentCodec`.

Each update draws, besides the diffusion's own t and ε, the posterior noise of the KL
autoencoder, so z ~ q(z|x) is a fresh draw every step (not its mean, encoded once). The data is
either the images (encoded batch by batch on the device), or, with ``cached``, the encoder's
outputs of the whole training set computed once (the posterior's mean and log-variance, so the
draws stay fresh): the same z for the same draws, without the encoder's cost each step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..pipelines.latent import LatentCodec
from .diffusion import DiffusionObjective


@torch.inference_mode()
def encode_dataset(codec: LatentCodec, x: Tensor, batch: int = 500) -> Tensor:
    """The encoder's outputs (N, 2c or c, h, w) of images x (N, C, H, W), on the CPU."""
    device = next(codec.parameters()).device
    return torch.cat([codec.moments(b.to(device)).cpu() for b in x.split(batch)])


class LatentDiffusionObjective(DiffusionObjective):
    """:class:`DiffusionObjective` on latents; ``data`` are images (N, C, H, W) or, with
    ``cached``, their encoder outputs from :func:`encode_dataset`."""

    def __init__(self, net: nn.Module, schedule, data: Tensor, codec: LatentCodec, *,
                 image_shape: tuple[int, int, int], cached: bool = False, **kwargs):
        super().__init__(net, schedule, data, **kwargs)
        self.codec, self.cached = codec, cached
        self.sample_shape = codec.latent_shape(image_shape)  # (c, h, w)
        self.kl = codec.ae.quantizer is None

    def to(self, device: torch.device) -> None:
        super().to(device)
        self.codec.to(device)

    def draw(self, step: int, g: torch.Generator) -> dict[str, Tensor]:
        out = super().draw(step, g)
        if self.kl:  # (B, c, h, w): the draw of q(z|x)
            out["posterior"] = torch.randn((self.batch, *self.sample_shape), generator=g)
        return out

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        x = batch.pop("x0")
        posterior = batch.pop("posterior", None)
        with torch.no_grad():
            moments = x if self.cached else self.codec.moments(x)
            z0 = self.codec.from_moments(moments, posterior)  # (B, c, h, w)
        return super().loss(model, {"x0": z0, **batch})
