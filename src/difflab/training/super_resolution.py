"""The super-resolution objective of a cascade's upper stages: L_simple (or L_hybrid) of
p_θ(x | z), where z is the training image average-pooled to the low resolution
(:func:`difflab.pipelines.cascade.downsample`) and corrupted by the conditioning augmentation
(Ho et al. 2021, "Cascaded Diffusion Models", §3; Saharia et al. 2022, Imagen, §2.5; Weng,
"Scale up Generation Resolution and Quality"):

- ``gaussian`` / ``truncated``: s ~ U{0, …, s_max} per example and z_s = √ᾱ_s z + √(1 − ᾱ_s) ε'
  (eq. 3 of the run's schedule, :func:`~difflab.pipelines.cascade.noise_augment`); the network
  sees s (``aug_level``). Truncated augmentation trains exactly so; it differs at sampling only.
- ``blur``: σ ~ U[σ_min, σ_max] per example and z blurred by it
  (:func:`~difflab.pipelines.cascade.gaussian_blur`); the network does not see σ.
- ``none``: z as it is.

Every random number (s, ε', σ) is drawn in :meth:`draw` from the run's one generator, after the
draws of :class:`~difflab.training.diffusion.DiffusionObjective`, so a resumed run stays
bit-identical; the corruption itself is computed in :meth:`loss`, on the device.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..pipelines.cascade import AUGMENTS, EMBEDS_LEVEL, downsample, gaussian_blur, noise_augment
from ..schedules import Schedule
from .diffusion import DiffusionObjective


class SuperResolutionObjective(DiffusionObjective):
    """ε-prediction training of a super-resolution ``net`` (a U-Net with ``low_res_channels``)
    on images ``data`` (N, C, H, W), conditioned on their average pooling to ``low_res`` pixels,
    corrupted by ``augment`` (one of :data:`~difflab.pipelines.cascade.AUGMENTS`) with levels
    s in 0..``aug_max`` or blur σ in [``blur_min``, ``blur_max``]. Other keywords: those of
    :class:`~difflab.training.diffusion.DiffusionObjective` (class or text conditions too)."""

    def __init__(self, net: nn.Module, schedule: Schedule, data: Tensor, *, low_res: int,
                 augment: str = "none", aug_max: int = 0, blur_min: float = 0.4,
                 blur_max: float = 0.6, **kwargs):
        super().__init__(net, schedule, data, **kwargs)
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
        if augment in EMBEDS_LEVEL and not 1 <= aug_max <= schedule.T:
            raise ValueError(f"aug_max must lie in 1..T for {augment} augmentation")
        downsample(data[:1], low_res)  # checks that the size divides
        self.low_res, self.augment, self.aug_max = low_res, augment, aug_max
        self.blur_min, self.blur_max = blur_min, blur_max

    def draw(self, step: int, g: torch.Generator) -> dict[str, Tensor]:
        out = super().draw(step, g)  # idx, conditions, t, ε: the diffusion run's draws first
        out["low_res"] = downsample(out["x0"], self.low_res)  # z (B, C, h, w), area pooling
        if self.augment in EMBEDS_LEVEL:
            out["aug_level"] = torch.randint(0, self.aug_max + 1, (self.batch,), generator=g)
            out["aug_noise"] = torch.randn(out["low_res"].shape, generator=g,
                                           dtype=out["low_res"].dtype)  # ε' (B, C, h, w)
        elif self.augment == "blur":
            u = torch.rand(self.batch, generator=g, dtype=torch.float64)  # (B,)
            out["blur_sigma"] = self.blur_min + (self.blur_max - self.blur_min) * u
        return out

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        batch = dict(batch)  # the network's keywords: conditions, low_res [, aug_level]
        noise, sigma = batch.pop("aug_noise", None), batch.pop("blur_sigma", None)
        batch["low_res"] = self.corrupt(batch["low_res"], batch.get("aug_level"), noise, sigma)
        return super().loss(model, batch)

    def corrupt(self, z: Tensor, s: Tensor | None, noise: Tensor | None,
                sigma: Tensor | None) -> Tensor:
        """z (B, C, h, w) as the network sees it in training: forward-diffused to the levels s
        (B,) with the noise ε' (gaussian, truncated), blurred by σ (B,) (blur), or clean."""
        if self.augment in EMBEDS_LEVEL:
            return noise_augment(self.schedule, z, s, noise)
        if self.augment == "blur":
            return gaussian_blur(z, sigma)
        return z
