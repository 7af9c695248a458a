"""Datasets: seeded 2-D toys (:mod:`difflab.data.toy2d`)."""

from . import toy2d

__all__ = ["toy2d"]
