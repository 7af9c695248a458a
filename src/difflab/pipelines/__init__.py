"""Compositions of networks that sample together: a latent model is an autoencoder around a
denoiser (:mod:`.latent`)."""

from .latent import LatentCodec, latent_std

__all__ = ["LatentCodec", "latent_std"]
