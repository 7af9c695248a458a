"""Cascaded diffusion: a base model at low resolution, then super-resolution models p_θ(x | z)
each conditioned on the previous stage's output z (Ho et al. 2021, "Cascaded Diffusion Models";
Weng, "Scale up Generation Resolution and Quality", Fig. 15). Composition only: no files, no
configs — the stages come as objects (:class:`Stage`).

Conditioning augmentation (Ho et al. 2021, §3; Saharia et al. 2022, Imagen, §2.5) corrupts z so
that a super-resolution model learns to repair a base model's mistakes:

- ``gaussian`` (non-truncated): z_s = √ᾱ_s z + √(1 − ᾱ_s) ε, the forward process of eq. (3) of
  the stage's own schedule run to level s (:func:`noise_augment`; s = 0 leaves z clean), s drawn
  per example at training and given to the network; a constant at sampling.
- ``truncated``: trained the same way; at sampling the previous stage's reverse chain stops at
  step s and its x_s is z (:func:`sample_until`), rather than x_0 forward-diffused to s.
- ``blur``: z blurred by a Gaussian of random σ at training (:func:`gaussian_blur`), left sharp
  at sampling.
- ``none``: the baseline.

The low-resolution image of a training image is its average pooling (:func:`downsample`, area
downsampling); the network upsamples z itself (bilinear, :meth:`difflab.nn.unet.UNet.with_low_res`),
so samplers and guidance only bind keywords and work unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.nn import functional

from ..samplers.timesteps import resolve
from ..schedules import Schedule

AUGMENTS = ("none", "gaussian", "truncated", "blur")
EMBEDS_LEVEL = ("gaussian", "truncated")  # the augmentations whose level s the network sees
# the samplers that take an explicit grid of timesteps, so that a chain can stop at step s
TRUNCATABLE = ("ddpm", "ddim", "euler", "heun")


def downsample(x: Tensor, size: int) -> Tensor:
    """The low-resolution image of x (B, C, H, W): average pooling by H / ``size`` (area
    downsampling, exact on the pixel grid). H must be a multiple of ``size``."""
    H = x.shape[-1]
    if H % size:
        raise ValueError(f"cannot average-pool {H} pixels to {size}")
    return functional.avg_pool2d(x, H // size) if size != H else x


def noise_augment(schedule: Schedule, z: Tensor, s: Tensor, noise: Tensor) -> Tensor:
    """z_s ~ q(z_s | z_0) = N(√ᾱ_s z_0, (1 − ᾱ_s) I) with the given noise — Weng eq. (3) at
    level s, int64 (B,) in 0..T; s = 0 returns z itself (ᾱ_0 = 1)."""
    ab = schedule.alpha_bar_at(s)  # (B,) float64, ᾱ_0 = 1
    return schedule.broadcast(ab.sqrt(), z) * z + schedule.broadcast((1 - ab).sqrt(), z) * noise


def blur_kernels(sigma: Tensor, radius: int) -> Tensor:
    """Normalised 1-D Gaussian kernels (B, 2·radius + 1) of std ``sigma`` (B,) in pixels; σ = 0
    is the identity (a unit impulse)."""
    k = torch.arange(-radius, radius + 1, dtype=torch.float64, device=sigma.device)  # (K,)
    s = sigma.to(torch.float64)[:, None]  # (B, 1)
    w = torch.exp(-0.5 * (k[None] / s.clamp(min=1e-12)) ** 2)  # (B, K)
    w = torch.where(s > 1e-6, w, (k[None] == 0).to(w.dtype))
    return w / w.sum(dim=1, keepdim=True)


def gaussian_blur(z: Tensor, sigma: Tensor) -> Tensor:
    """z (B, C, h, w) blurred by a Gaussian of std ``sigma`` (B,) pixels, one σ per image: a
    separable convolution (rows, then columns) with reflected borders, radius ⌈3 σ_max⌉ (Ho et
    al. 2021, §3's blur augmentation)."""
    B, C, h, w = z.shape
    radius = max(1, math.ceil(3 * float(sigma.max()))) if B else 1
    radius = min(radius, h - 1, w - 1)
    kern = blur_kernels(sigma, radius).to(z.dtype)  # (B, K)
    kern = kern.repeat_interleave(C, dim=0)  # (B·C, K): one kernel per image channel
    x = z.reshape(1, B * C, h, w)
    x = functional.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = functional.conv2d(x, kern[:, None, None, :], groups=B * C)  # along the rows
    x = functional.pad(x, (0, 0, radius, radius), mode="reflect")
    x = functional.conv2d(x, kern[:, None, :, None], groups=B * C)  # along the columns
    return x.reshape(B, C, h, w)


class _StopChainError(Exception):
    """Raised from a sampler's callback to end its chain early (truncation)."""

    def __init__(self, x: Tensor):
        super().__init__("stopped")
        self.x = x


def truncated_grid(T: int, steps: int, spacing: str, s: int) -> list[int]:
    """The timesteps of a chain that stops at step s: the sampler's grid of ``steps`` on 1..T
    (``spacing``) above s, then s itself (the last update lands on it)."""
    ts = resolve(T, steps, spacing)
    return [*ts[ts > s].tolist(), s]


def sample_until(sampler: Callable, model, schedule: Schedule, x_T: Tensor, *, steps: int,
                 s: int = 0, spacing: str = "linspace", generator: torch.Generator | None = None,
                 **kwargs) -> Tensor:
    """The reverse chain of ``sampler`` (a function of :mod:`difflab.samplers` that takes an
    explicit list of timesteps: :data:`TRUNCATABLE`) from x_T, stopped at step s: x_s (truncated
    conditioning augmentation, Ho et al. 2021, §3). s = 0 is the whole chain (x_0); s = T
    returns x_T. The grid is :func:`truncated_grid`: the usual one cut at s, its last update
    s' → s (noise added as at any step s > 0)."""
    if s == 0:
        return sampler(model, schedule, x_T, steps=steps, generator=generator, spacing=spacing,
                       **kwargs)
    grid = truncated_grid(schedule.T, steps, spacing, s)
    if len(grid) == 1:  # s = T: nothing to run
        return x_T
    last = len(grid) - 2  # the update from grid[-2] lands on s

    def stop(i: int, t: int, x: Tensor) -> None:
        if i == last:
            raise _StopChainError(x)

    try:
        sampler(model, schedule, x_T, steps=grid, generator=generator, callback=stop, **kwargs)
    except _StopChainError as done:
        return done.x
    raise RuntimeError("the sampler never reached step s")  # pragma: no cover


@dataclass
class Stage:
    """One stage of a cascade.

    ``model(extra)``: the stage's ε-model (guided and bound as the sampler wants it) given its
    low-resolution keywords ``extra`` ({} for the base; ``low_res`` (n, C, h, w) and, when the
    network embeds it, ``aug_level`` (n,) for a super-resolution stage). ``sample(model, x_T,
    s, generator)``: its sampler from x_T, stopped at step s (0: to x_0; see
    :func:`sample_until`). ``shape``: (C, H, W) of its output. ``augment`` and ``aug_level``:
    how this stage's z is made from the previous stage (one of :data:`AUGMENTS`; s at sampling).
    ``settings``: the sampler settings, for reports (e.g. sampler, steps, eta, spacing).
    """

    model: Callable[[dict], Callable]
    sample: Callable[..., Tensor]
    schedule: Schedule
    shape: tuple[int, int, int]
    augment: str = "none"
    aug_level: int = 0
    device: torch.device | str = "cpu"
    settings: dict = field(default_factory=dict)


def condition(stage: Stage, z: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
    """The keywords of a super-resolution ``stage`` from the previous stage's output z: z
    forward-diffused to its ``aug_level`` s (gaussian, noise from ``generator``), z as it is
    (none, blur: no blur at sampling; truncated: z is already the previous chain's x_s), and
    s for the networks that embed it."""
    n, s = z.shape[0], stage.aug_level
    level = torch.full((n,), s, dtype=torch.long)
    if stage.augment == "gaussian" and s > 0:
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype)  # drawn on the CPU
        z = noise_augment(stage.schedule, z.cpu(), level, noise)
    extra = {"low_res": z.to(stage.device)}
    if stage.augment in EMBEDS_LEVEL:
        extra["aug_level"] = level.to(stage.device)
    return extra


def cascade(stages: list[Stage], n: int, generator: torch.Generator) -> list[Tensor]:
    """Sample ``n`` images through the cascade: the base from x_T ~ N(0, I), then every
    super-resolution stage conditioned on the stage before (:func:`condition`). A stage followed
    by a ``truncated`` one stops its chain at that stage's level s and hands over x_s unclipped;
    otherwise its x_0 is clipped to [-1, 1], the data's range. Every random number comes from
    ``generator`` (a CPU generator), in stage order. Returns each stage's output (CPU tensors);
    the last is the cascade's images (n, C, H, W)."""
    outs: list[Tensor] = []
    z = None
    for k, stage in enumerate(stages):
        nxt = stages[k + 1] if k + 1 < len(stages) else None
        stop = nxt.aug_level if nxt is not None and nxt.augment == "truncated" else 0
        extra = {} if z is None else condition(stage, z, generator)
        x_T = torch.randn((n, *stage.shape), generator=generator).to(stage.device)
        with torch.inference_mode():
            x = stage.sample(stage.model(extra), x_T, stop, generator).cpu()
        z = x if stop else x.clamp(-1.0, 1.0)
        outs.append(z)
    return outs
