"""A run's data: the fixed training set (2-D points or an image split), its conditions, its
grey levels, and the image splits and shapes that evaluation shares.

The image splits are those of the committed classifiers (seed 0, :mod:`difflab.data.images`),
whatever the run's ``seed``, so the test split that gives the FD floor is never trained on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from ..config import TrainConfig, image_size, is_image
from ..data import images, shapes, toy2d

if TYPE_CHECKING:
    from .conditioning import TrainConditions

DATA_SEED = 0  # the split seed of the committed classifiers


def image_split(cfg: TrainConfig, split: str) -> images.ImageData:
    """The train or test split of the run's image dataset at its image size."""
    if cfg.dataset == "folder":
        return images.image_folder(cfg.data, image_size(cfg), cfg.channels, split, DATA_SEED)
    if cfg.dataset == "shapes":  # generated RGB scenes with exact captions
        return shapes.shapes(split, size=image_size(cfg), seed=DATA_SEED)
    if cfg.dataset == "mnist" and image_size(cfg) == 16:  # a cascade's base stage: the padded
        # 32×32 average-pooled by 2, exactly the z of a 16 → 32 super-resolution run
        import dataclasses

        from torch.nn.functional import avg_pool2d

        data = images.mnist(split, size=32, seed=DATA_SEED)
        return dataclasses.replace(data, x=avg_pool2d(data.x, 2))
    return getattr(images, cfg.dataset)(split, size=image_size(cfg), seed=DATA_SEED)


def image_shape(cfg: TrainConfig) -> tuple[int, int, int]:
    """(C, H, W) of the run's images (digits and MNIST are grey, shapes RGB)."""
    s = image_size(cfg)
    return (3 if cfg.dataset == "shapes" else cfg.channels, s, s)


def model_shape(cfg: TrainConfig) -> tuple[int, int, int]:
    """(C, H, W) of what the run's denoiser sees: the images, or for a latent run (an
    ``autoencoder`` given) the latents (c, H/f, W/f)."""
    c, h, w = image_shape(cfg)
    if not cfg.autoencoder:
        return (c, h, w)
    return (cfg.ae_latent_channels, h // cfg.ae_factor, w // cfg.ae_factor)


def data_levels(cfg: TrainConfig) -> int | None:
    """K, the grey levels of the run's image data (digits 17, MNIST and folders 256) for the
    discretised decoder L_0; None for 2-D data and latents, which are continuous."""
    if not is_image(cfg.dataset) or cfg.autoencoder:
        return None
    own = {"digits": images.DIGITS_LEVELS, "mnist": images.MNIST_LEVELS,
           "shapes": shapes.LEVELS}
    return own.get(cfg.dataset, 256)  # folders: 8-bit images


def training_data(cfg: TrainConfig) -> Tensor:
    """The fixed training set: (n_train, 2) toy points, or the image train split (N, C, H, W).
    The one place that dispatches on the kind of data."""
    if is_image(cfg.dataset):

        return image_split(cfg, "train").x
    return toy2d.sample(cfg.dataset, cfg.n_train, cfg.seed)


def training_set(cfg: TrainConfig) -> tuple[Tensor, TrainConfig, TrainConditions | None]:
    """The fixed training set (see :func:`training_data`), the config with the data's number of
    classes filled in (class-conditional runs), and the set's conditions (None if
    unconditional)."""
    if cfg.cond == "none":
        return training_data(cfg), cfg, None
    from .conditioning import resolve, train_conditions

    data = image_split(cfg, "train")
    cfg = resolve(cfg, data)
    return data.x, cfg, train_conditions(cfg, data)
