"""The losses of the first stage of latent diffusion (Rombach et al. 2022, §3.1 and App. G;
Esser et al. 2021, eq. 4-7): tensors in, tensors out.

- :func:`kl_standard_normal`: KL(N(μ, diag σ²) ‖ N(0, I)), the "KL-reg." term, in closed form.
- :func:`hinge_d_loss` / :func:`hinge_g_loss`: the hinge GAN losses of the patch discriminator.
- :func:`adaptive_weight`: λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + δ) at the decoder's last
  layer G_L (Esser et al. 2021, eq. 7), which balances the two gradients.
- :func:`psnr`: the reconstruction metric, for images in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional


def kl_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag e^{logvar}) ‖ N(0, I)) = ½ Σ_i (μ_i² + σ_i² − 1 − log σ_i²), summed over all
    but the batch dimension: (B,)."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """½ (E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̃))]) (Lim & Ye 2017; LDM's discriminator)."""
    return 0.5 * (functional.relu(1.0 - logits_real).mean()
                  + functional.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """−E[D(x̃)]: the generator (decoder) side of the hinge GAN."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor,
                    delta: float = 1e-4, max_weight: float = 1e4,
                    average: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + δ), clamped to [0, max_weight] and detached
    (Esser et al. 2021, eq. 7). Both losses must depend on ``last_layer`` through a graph that
    is kept (they are differentiated once more by the caller). ``average``: the mean over the
    processes of a run, applied to both gradients first, so that λ is that of the whole batch
    (as one process computes it) and the same on every process."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    if average is not None:
        g_rec, g_gan = average(g_rec), average(g_gan)
    weight = g_rec.norm() / (g_gan.norm() + delta)
    return weight.clamp(0.0, max_weight).detach()


def psnr(x: Tensor, x_hat: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2): (B,)
    10 log10(2² / MSE), the MSE over each image's pixels and channels."""
    mse = (x - x_hat).pow(2).flatten(1).mean(1).clamp(min=1e-12)
    return 10.0 * torch.log10(4.0 / mse)


