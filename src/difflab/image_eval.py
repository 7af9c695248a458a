"""Image runs: their data, and their evaluation — sample, Fréchet distance in the committed
classifier's feature space (:mod:`difflab.fd`) beside the floor of real held-out images.

The splits are those of the committed classifiers (seed 0, :mod:`difflab.data.images`), whatever
the run's ``seed``, so the test split that gives the floor is never trained on.

FD depends on the sample sizes (it is biased upwards by ≈ tr(Σ)/n), so compare ``fd`` with
``fd_floor`` only when ``n_eval`` equals the test split's size (180 digits, 500 MNIST): the floor
is the FD of those real test images to the train split, what a perfect generator would score
with as many samples.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .config import TrainConfig, image_size
from .data import images
from .draw import Frames, draw
from .fd import DEFAULT_SIZE, FDEvaluator
from .schedules import Schedule

DATA_SEED = 0  # the split seed of the committed classifiers


def image_split(cfg: TrainConfig, split: str) -> images.ImageData:
    """The train or test split of the run's image dataset at its image size."""
    if cfg.dataset == "folder":
        return images.image_folder(cfg.data, image_size(cfg), cfg.channels, split, DATA_SEED)
    return getattr(images, cfg.dataset)(split, size=image_size(cfg), seed=DATA_SEED)


def image_shape(cfg: TrainConfig) -> tuple[int, int, int]:
    """(C, H, W) of the run's images (digits and MNIST are grey)."""
    s = image_size(cfg)
    return (cfg.channels, s, s)


def evaluate_images(model: Callable, schedule: Schedule, cfg: TrainConfig, *,
                    sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
                    spacing: str | None = None, n: int = 180, seed: int = 0,
                    n_strip: int = 8, variance: str | None = None,
                    frames: Frames | None = None, progress: bool = False,
                    labels: Tensor | None = None):
    """Sample ``n`` images; FD to the real train split and its floor (real test vs train).

    Returns (metrics, samples (n, C, H, W), snapshots [(label, x (n_strip, C, H, W))] from x_T
    to x_0) — the snapshots are the first ``n_strip`` images along the reverse process.
    ``variance`` (ddpm's Σ_θ) and ``frames`` (an animation's): see :func:`difflab.draw.draw`.
    ``labels`` (n,): the classes the samples should show (a conditional or guided ``model``);
    then ``accuracy`` is the fraction the committed classifier assigns to them.
    """
    if n < 2:
        raise ValueError(f"FD needs at least 2 samples, got n = {n}")
    x0, snapshots, seconds = draw(model, schedule, (n, *image_shape(cfg)), sampler=sampler,
                                  steps=steps, eta=eta, spacing=spacing, seed=seed,
                                  keep=n_strip, variance=variance, frames=frames,
                                  progress=progress)  # (n, C, H, W)
    x0 = x0.clamp(-1.0, 1.0)  # (n, C, H, W), as an 8-bit image would be
    snapshots[-1] = ("x_0", x0[:n_strip])
    metrics = {"sampler": sampler, "steps": steps, "eta": eta, "spacing": spacing,
               "n_eval": n, "sample_seed": seed, "sample_seconds": seconds}
    if cfg.dataset in DEFAULT_SIZE:  # a committed classifier exists (not for folders)
        fd = FDEvaluator.for_dataset(cfg.dataset, image_size(cfg))
        n_test = len(image_split(cfg, "test"))
        metrics.update(fd=fd.fd(x0), fd_floor=fd.floor(), fd_n=n, fd_floor_n=n_test)
        metrics["fd_ratio"] = metrics["fd"] / metrics["fd_floor"]
        if labels is not None:
            metrics["accuracy"] = fd.accuracy(x0, labels)
    return metrics, x0, snapshots
