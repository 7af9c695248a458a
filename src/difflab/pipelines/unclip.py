"""unCLIP as a composition (Weng eq. 34; Ramesh et al. 2022): P(x | y) = P(x | c_i, y) P(c_i | y),
c_i sampled by the diffusion prior and decoded by the embedding-conditioned decoder; and the
uses of the decoder alone (ibid. §3): variations of an image (its c_i decoded with fresh noise),
interpolations (slerp between two images' c_i, decoded with ONE fixed noise) and text diffs
(c_i rotated towards the difference of two captions' c_t). No files, no configs: networks,
schedules and tensors in, images out (:mod:`difflab.runs.unclip` loads runs into these).

Both models are sampled with DDIM (η = 0, Weng eq. 29) under classifier-free guidance (eq. 26):
the prior's ∅ drops the caption (tokens and text embedding), the decoder's drops the image
embedding and the caption together; the decoder's x̂_0 is clipped to [−1, 1] at every step
(Imagen's static thresholding, as GLIDE and unCLIP's decoders clip) unless
``decoder_threshold = "none"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from ..contrastive import slerp, text_diff
from ..guidance import (
    Bound,
    ClassifierFree,
    Thresholded,
    dynamic_threshold,
    static_threshold,
)
from ..parameterization import EpsFromX0
from ..samplers import ddim
from ..schedules import Schedule


@dataclass
class Captions:
    """Encoded captions: MiniLM ``tokens`` (B, L, 384), ``mask`` (B, L) and CLIP's ``text_emb``
    c_t (B, D), unit norm (0 for ∅)."""

    tokens: Tensor
    mask: Tensor
    text_emb: Tensor

    def null(self) -> Captions:
        return Captions(torch.zeros_like(self.tokens), torch.zeros_like(self.mask),
                        torch.zeros_like(self.text_emb))


@dataclass
class Unclip:
    """The parts of unCLIP: the frozen ``clip``, the ``prior`` (a
    :class:`~difflab.nn.unclip_prior.DiffusionPrior`) and the ``decoder`` (an
    :class:`~difflab.nn.unclip_decoder.UnclipDecoder`) with their schedules; sampling settings."""

    clip: nn.Module
    prior: nn.Module | None
    prior_schedule: Schedule | None
    decoder: nn.Module
    decoder_schedule: Schedule
    image_shape: tuple[int, int, int]
    prior_steps: int = 64
    decoder_steps: int = 50
    prior_guidance: float = 1.0
    decoder_guidance: float = 2.0
    decoder_threshold: str = "static"  # x̂_0 clipping of the decoder: "static", "dynamic", "none"
    decoder_spacing: str = "linspace"  # DDIM's timesteps ("leading" on a cosine schedule)

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    # --- P(c_i | y) --------------------------------------------------------------------------
    @torch.no_grad()
    def sample_prior(self, y: Captions, generator: torch.Generator | None = None,
                     best_of: int = 1) -> Tensor:
        """c_i ~ P(c_i | y): (B, D) unit norm. ``best_of`` k draws k per caption and keeps the
        one most similar to c_t (Ramesh et al. 2022, §2.1, with k = 2)."""
        prior, schedule = self.prior, self.prior_schedule
        if prior is None:
            raise ValueError("this unCLIP has no prior")
        B, D = y.text_emb.shape
        k = max(1, best_of)
        rep = Captions(*(v.repeat_interleave(k, 0) for v in (y.tokens, y.mask, y.text_emb)))
        model: nn.Module = EpsFromX0(prior, schedule)
        if self.prior_guidance > 0:
            L = y.tokens.shape[1]
            model = ClassifierFree(model, self.prior_guidance, {
                "context": torch.zeros(1, L, y.tokens.shape[2]),
                "context_mask": torch.zeros(1, L, dtype=torch.bool),
                "text_emb": torch.zeros(1, D)})
        dev = self.device
        bound = Bound(model, context=rep.tokens.to(dev), context_mask=rep.mask.to(dev),
                      text_emb=prior.text_input(rep.text_emb.to(dev)))
        z_T = torch.randn(B * k, D, generator=generator).to(dev)  # (kB, D)
        z0 = ddim(bound, schedule, z_T, steps=self.prior_steps)
        c = prior.unscale(z0).view(B, k, D)  # (B, k, D)
        best = (c * y.text_emb.to(dev)[:, None]).sum(-1).argmax(1)  # (B,)
        return c[torch.arange(B, device=dev), best]

    # --- P(x | c_i, y) -----------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, clip_emb: Tensor, y: Captions | None = None,
               generator: torch.Generator | None = None, x_T: Tensor | None = None) -> Tensor:
        """x ~ P(x | c_i, y): images (B, C, H, W) in [-1, 1] from embeddings (B, D) (the caption
        ``y`` optional: None decodes from c_i alone). ``x_T``: fixed noise (B, C, H, W)."""
        dev, (C, H, W) = self.device, self.image_shape
        B = clip_emb.shape[0]
        if x_T is None:
            x_T = torch.randn(B, C, H, W, generator=generator)
        cond = {"clip_emb": clip_emb.to(dev)}
        if y is not None:
            cond.update(context=y.tokens.to(dev), context_mask=y.mask.to(dev))
        model: nn.Module = self.decoder
        if self.decoder_guidance > 0:
            null = {"clip_emb": torch.zeros(1, clip_emb.shape[1])}
            if y is not None:
                null.update(context=torch.zeros(1, *y.tokens.shape[1:]),
                            context_mask=torch.zeros(1, y.mask.shape[1], dtype=torch.bool))
            model = ClassifierFree(model, self.decoder_guidance, null)
        if self.decoder_threshold != "none":  # Imagen's thresholding of x̂_0 (Weng, after eq. 34)
            clip = {"static": static_threshold, "dynamic": dynamic_threshold}[
                self.decoder_threshold]
            model = Thresholded(model, self.decoder_schedule, clip)
        x0 = ddim(Bound(model, **cond), self.decoder_schedule, x_T.to(dev),
                  steps=self.decoder_steps, spacing=self.decoder_spacing)
        return x0.clamp(-1.0, 1.0)

    # --- the uses ----------------------------------------------------------------------------
    def text_to_image(self, y: Captions, generator: torch.Generator | None = None,
                      best_of: int = 1) -> Tensor:
        """x ~ P(x | y) = P(x | c_i, y) P(c_i | y) — Weng eq. (34)."""
        return self.decode(self.sample_prior(y, generator, best_of), y, generator)

    @torch.no_grad()
    def image_embeddings(self, x: Tensor) -> Tensor:
        """c_i(x) (B, D) of images (B, C, H, W)."""
        return functional.normalize(self.clip.encode_image(x.to(self.device)), dim=-1)

    def variations(self, x: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n variations of each image (B, C, H, W): its c_i decoded with fresh noise, no caption
        (Ramesh et al. 2022, §3.1). Returns (B·n, C, H, W), image b's variations together."""
        emb = self.image_embeddings(x).repeat_interleave(n, 0)  # (B·n, D)
        return self.decode(emb, None, generator)

    def interpolate(self, x_a: Tensor, x_b: Tensor, n: int,
                    generator: torch.Generator | None = None,
                    x_T: Tensor | None = None) -> Tensor:
        """n images along slerp(c_i(x_a), c_i(x_b), w), w = 0 … 1, ALL decoded from the same
        noise x_T (1, C, H, W) (Ramesh et al. 2022, §3.1, Fig. 4). x_a, x_b: (1, C, H, W)."""
        emb = self.interpolation_embeddings(self.image_embeddings(x_a), self.image_embeddings(x_b),
                                            n)
        if x_T is None:
            x_T = torch.randn(1, *self.image_shape, generator=generator)
        return self.decode(emb, None, x_T=x_T.expand(n, *self.image_shape).clone())

    @staticmethod
    def interpolation_embeddings(a: Tensor, b: Tensor, n: int) -> Tensor:
        """slerp(a, b, w) (n, D) for n values w = 0, 1/(n−1), …, 1; a, b (1, D)."""
        w = torch.linspace(0, 1, n, device=a.device)[:, None]  # (n, 1)
        return slerp(a.expand(n, -1), b.expand(n, -1), w)

    def text_diffs(self, x: Tensor, c_from: Tensor, c_to: Tensor, n: int,
                   w_max: float = 0.5, x_T: Tensor | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
        """n images of c_i(x) (1, C, H, W) rotated towards normalise(c_t(to) − c_t(from))
        (c_from, c_to: (1, D)) by w = 0 … ``w_max``, one fixed noise (Ramesh et al. 2022, §3.2)."""
        c_i = self.image_embeddings(x).expand(n, -1)
        w = torch.linspace(0, w_max, n, device=c_i.device)[:, None]
        emb = text_diff(c_i, c_from.to(c_i.device).expand(n, -1),
                        c_to.to(c_i.device).expand(n, -1), w)
        if x_T is None:
            x_T = torch.randn(1, *self.image_shape, generator=generator)
        return self.decode(emb, None, x_T=x_T.expand(n, *self.image_shape).clone())


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity of (N, D) and (N, D) → (N,)."""
    return functional.cosine_similarity(a, b, dim=-1)
