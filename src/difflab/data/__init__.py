"""Datasets: seeded 2-D toys (:mod:`difflab.data.toy2d`) and images (:mod:`difflab.data.images`:
sklearn digits, MNIST-5k, a folder of the user's images)."""

from . import images, toy2d

__all__ = ["images", "toy2d"]
