"""Datasets: seeded 2-D toys (:mod:`difflab.data.toy2d`) and images (:mod:`difflab.data.images`:
sklearn digits, MNIST-5k, a folder of the user's images) and captions for text conditioning
(:mod:`difflab.data.captions`)."""

from . import captions, images, toy2d

__all__ = ["captions", "images", "toy2d"]
