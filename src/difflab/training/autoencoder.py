"""Training the first stage of latent diffusion (Rombach et al. 2022, §3.1 and App. G; Esser et
al. 2021, §3.1): an autoencoder with a reconstruction, a perceptual, a regularisation and an
adversarial loss, as one objective of the one loop.

Per batch x (B, C, H, W), x̃ = D(z), z ~ q(z|x) (KL) or z = quantise(E(x)) (VQ)::

    L_rec  = mean |x − x̃|  (or (x − x̃)², ``rec_loss = "l2"``)  +  w_P · mean_b d_P(x, x̃)
    L_reg  = w_KL · mean_b KL(q(z|x) ‖ N(0, I)) / (C·H·W)        (KL)
           = ‖sg(h) − e‖² + β ‖h − sg(e)‖²                        (VQ)
    L_G    = −mean D(x̃),   λ = w_D · ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_G‖ + 10⁻⁴)
    L_D    = ½ (mean max(0, 1 − D(x)) + mean max(0, 1 + D(x̃)))
    loss   = L_rec + L_reg + a_k (λ L_G + L_D)

a_k = 0 before update ``disc_start`` and 1 from it on. LDM sums the reconstruction over pixels
and the KL over latent dimensions; dividing both by the number of pixel values C·H·W keeps its
balance (w_KL = 10⁻⁶) with a per-pixel mean. d_P is :class:`~difflab.nn.perceptual
.PerceptualDistance` (the LPIPS stand-in); LDM also learns a log-variance that scales L_rec, left
out here (it starts at 0 and only rescales the loss).

LDM alternates two optimisers, one for the autoencoder and one for the discriminator. Here one
AdamW updates both at once (simultaneous gradient descent): the generator's term L_G sees the
discriminator through detached copies of its weights (``torch.func.functional_call``), and L_D
sees x̃ detached, so each network gets the gradient of its own loss only. Both are parts of one
module (:class:`AutoencoderTrainer`) so that one DDP wrapper synchronises them.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..autoencoding import (
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
    kl_standard_normal,
)
from ..nn.autoencoder import Autoencoder
from ..nn.discriminator import PatchDiscriminator
from ..nn.perceptual import PerceptualDistance
from .backend import Backend
from .diffusion import LRSchedule
from .ema import ema_decay_at, ema_update
from .loop import Objective


class AutoencoderTrainer(nn.Module):
    """The autoencoder ``ae``, its discriminator ``disc`` (None: no GAN term) and the frozen
    perceptual distance; ``forward`` returns every term of the loss."""

    def __init__(self, ae: Autoencoder, disc: PatchDiscriminator | None,
                 perceptual: PerceptualDistance | None, *, rec_loss: str = "l1",
                 perceptual_weight: float = 1.0, kl_weight: float = 1e-6,
                 disc_weight: float = 0.5):
        super().__init__()
        if rec_loss not in ("l1", "l2"):
            raise ValueError(f"rec_loss must be l1 or l2, got {rec_loss!r}")
        self.ae, self.disc, self.perceptual = ae, disc, perceptual
        self.rec_loss, self.perceptual_weight = rec_loss, perceptual_weight
        self.kl_weight, self.disc_weight = kl_weight, disc_weight
        self.average = None  # several processes: the mean over them (Backend.mean)

    def forward(self, x: Tensor, noise: Tensor, gan: Tensor) -> dict[str, Tensor]:
        """x (B, C, H, W); noise (B, c, h, w) for q(z|x); gan (B,) the factor a_k (all equal)."""
        ae = self.ae
        enc = ae.encode(x)  # (B, 2c or c, h, w)
        terms: dict[str, Tensor] = {}
        if ae.quantizer is not None:
            q = ae.quantizer(enc)
            x_hat = ae.decoder(q.z_q)
            reg = q.loss
            terms["counts"] = q.counts
        else:
            mean, logvar = ae.moments(enc)
            x_hat = ae.decoder(mean + torch.exp(0.5 * logvar) * noise)
            kl = kl_standard_normal(mean, logvar).mean()
            reg = self.kl_weight * kl / x[0].numel()
            terms["kl"] = kl.detach()
        diff = x - x_hat
        rec = diff.abs().mean() if self.rec_loss == "l1" else diff.pow(2).mean()
        terms["pixel"] = rec.detach()
        if self.perceptual is not None and self.perceptual_weight > 0:
            p = self.perceptual(x, x_hat).mean()
            terms["perceptual"] = p.detach()
            rec = rec + self.perceptual_weight * p
        loss = rec + reg
        terms["reg"] = reg.detach()
        if self.disc is not None:
            factor = gan[0].float()
            detached = {k: v.detach() for k, v in self.disc.named_parameters()}
            g_loss = hinge_g_loss(functional_call(self.disc, detached, (x_hat,)))
            if factor > 0 and torch.is_grad_enabled():
                weight = self.disc_weight * adaptive_weight(rec, g_loss, ae.last_layer(),
                                                            average=self.average)
            else:
                weight = torch.zeros((), device=x.device)
            d_loss = hinge_d_loss(self.disc(x.detach()), self.disc(x_hat.detach()))
            loss = loss + factor * (weight * g_loss + d_loss)
            terms.update(g_loss=g_loss.detach(), d_loss=d_loss.detach(), d_weight=weight)
        terms["loss"] = loss
        return terms


class AutoencoderObjective(Objective):
    """The autoencoder of ``trainer`` trained on ``data`` (N, C, H, W) in [-1, 1], with an EMA
    of its weights (what latent runs use) and, for VQ, dead codes revived after each update."""

    def __init__(self, trainer: AutoencoderTrainer, data: Tensor, *, batch: int,
                 lr: LRSchedule, ema_decay: float, disc_start: int = 0,
                 weight_decay: float = 0.0, grad_clip: float = 0.0, seed: int = 0,
                 backend: Backend | None = None):
        self.net, self.data, self.batch = trainer, data, batch
        self.ema = copy.deepcopy(trainer.ae).requires_grad_(False)
        self.schedule_lr, self.lr, self.ema_decay = lr, lr.lr, ema_decay
        self.disc_start, self.weight_decay, self.grad_clip = disc_start, weight_decay, grad_clip
        self.seed, self.backend = seed, backend
        if backend is not None and backend.world_size > 1:  # λ of the whole batch
            trainer.average = backend.mean
        self.latent_shape = trainer.ae.latent_shape(tuple(data.shape[1:]))
        self.counts: Tensor | None = None  # VQ: assignments of the current update
        self.last: dict[str, Tensor] = {}

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.net, "ema": self.ema}

    def optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.net.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, betas=self.betas,
                                 weight_decay=self.weight_decay, fused=self.fused or None)

    def draw(self, step: int, g: torch.Generator) -> dict[str, Tensor]:
        idx = torch.randint(0, len(self.data), (self.batch,), generator=g)  # (B,)
        noise = torch.randn(self.batch, *self.latent_shape, generator=g)  # (B, c, h, w)
        gan = torch.full((self.batch,), float(step >= self.disc_start))
        return {"x": self.data[idx], "noise": noise, "gan": gan}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        terms = model(batch["x"], batch["noise"], batch["gan"])
        if "counts" in terms:
            c = terms["counts"].detach()
            self.counts = c if self.counts is None else self.counts + c
        # detached tensors, read (one sync) only when metrics() asks: no sync in the step
        self.last = {k: v.detach() for k, v in terms.items() if k not in ("loss", "counts")}
        return terms["loss"]

    def lr_at(self, step: int) -> float:
        return self.schedule_lr(step)

    def after_update(self, step: int) -> None:
        ae = self.net.ae
        ema_update(list(self.ema.parameters()), list(ae.parameters()),
                   ema_decay_at(self.ema_decay, step))
        if ae.quantizer is not None and self.counts is not None:
            counts = self.counts
            if self.backend is not None and self.backend.world_size > 1:
                counts = self.backend.gather(counts[None]).sum(0)  # every rank's assignments
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            moved = ae.quantizer.revive(counts, g)  # (n,) entries moved
            with torch.no_grad():  # the EMA takes a revived entry as it is, not averaged in
                ema_book = self.ema.quantizer.codebook.weight
                ema_book[moved] = ae.quantizer.codebook.weight[moved]
            self.counts = None

    def metrics(self) -> dict[str, float]:
        return {f"last_{k}": float(v) for k, v in self.last.items()}


def reconstruct(ae: Autoencoder, x: Tensor, noise: Tensor | None = None) -> Tensor:
    """x̃ = D(z) for images x (B, C, H, W): z the posterior mean (``noise`` None) or a draw."""
    return ae.decode(ae.latent(ae.encode(x), noise))


