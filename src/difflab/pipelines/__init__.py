"""Compositions of networks that sample together: a latent model is an autoencoder around a
denoiser (:mod:`.latent`); a cascade is a base model and super-resolution models, each
conditioned on the previous stage's samples (:mod:`.cascade`)."""

from .cascade import Stage, cascade
from .latent import LatentCodec, latent_std

__all__ = ["LatentCodec", "Stage", "cascade", "latent_std"]
