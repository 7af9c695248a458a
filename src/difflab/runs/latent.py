"""The autoencoder of a latent run: copied from an autoencoder run when the latent run starts,
so that the latent run is self-contained (``autoencoder.safetensors`` beside the denoiser's
weights; the ``ae_*`` fields and the measured ``latent_scale`` in its config), and loaded from
there to encode (training) and decode (sampling, evaluation).
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import torch
from torch import Tensor

from ..build.data import image_shape
from ..build.model import build_autoencoder
from ..config import TrainConfig, field_section
from ..errors import ConfigError
from ..pipelines.latent import LatentCodec
from . import checkpoint as ckpt
from .load import read_run

AUTOENCODER_FILE = ckpt.AUTOENCODER  # in a latent run: the frozen autoencoder (EMA)
RUN_OWN = ("autoencoder", "latent_cache", "latent_scale")  # the latent run's own keys
COPIED = tuple(f.name for f in fields(TrainConfig)
               if field_section(f.name) == "autoencoder" and f.name not in RUN_OWN)


def attach(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Tensor]]:
    """``cfg`` with the autoencoder run ``cfg.autoencoder``'s ``ae_*`` fields and its measured
    latent scale (unless ``cfg.latent_scale`` is set), and that run's EMA weights. ConfigError
    if it is not a finished autoencoder run of images of this run's shape."""
    source = Path(cfg.autoencoder)
    try:
        kind, ae_cfg, _ = read_run(source)
    except ckpt.CheckpointError as err:
        raise ConfigError(f"--autoencoder: {ckpt.one_line(err)}") from None
    if kind != "autoencoder":
        raise ConfigError(f"--autoencoder {source} is a {kind} run; give a run of 'difflab "
                          "train-autoencoder'")
    if image_shape(ae_cfg) != image_shape(cfg):
        raise ConfigError(f"--autoencoder {source} encodes images of shape "
                          f"{image_shape(ae_cfg)}, this run's are {image_shape(cfg)}; use "
                          f"--dataset {ae_cfg.dataset} --image-size {image_shape(ae_cfg)[1]}")
    scale = cfg.latent_scale
    if scale == 0:
        metrics = source / ckpt.METRICS
        if not metrics.is_file():
            raise ConfigError(f"--autoencoder {source} has not finished (no {ckpt.METRICS} "
                              "with its latent scale); train it to the end first")
        scale = float(ckpt.read_json(metrics)["latent_scale"])
    cfg = replace(cfg, **{k: getattr(ae_cfg, k) for k in COPIED}, latent_scale=scale)
    return cfg, ckpt.load_weights(source, "ema", "autoencoder")


def codec_from(cfg: TrainConfig, weights: dict[str, Tensor]) -> LatentCodec:
    ae = build_autoencoder(cfg)
    try:
        ae.load_state_dict(weights)
    except RuntimeError as err:
        raise ckpt.CheckpointError(f"the autoencoder's weights do not fit its config "
                                   f"({ckpt.one_line(err)})") from None
    return LatentCodec(ae, cfg.latent_scale)


def write_autoencoder(run_dir: str | Path, weights: dict[str, Tensor]) -> None:
    ckpt.save_tensors(Path(run_dir) / AUTOENCODER_FILE, weights)


def load_codec(run_dir: str | Path, cfg: TrainConfig,
               device: torch.device | str | None = None) -> LatentCodec | None:
    """The codec of a latent run (None for a pixel-space run), on ``device``."""
    if not cfg.autoencoder:
        return None
    weights, _ = ckpt.load_tensors(Path(run_dir) / AUTOENCODER_FILE)
    codec = codec_from(cfg, weights)
    return codec.to(device) if device is not None else codec


def copy_autoencoder(source_run: str | Path, run_dir: str | Path) -> None:
    """Give a run derived from the latent run ``source_run`` (a distilled student) its own copy
    of the autoencoder, so that it too loads on its own."""
    weights, _ = ckpt.load_tensors(Path(source_run) / AUTOENCODER_FILE)
    write_autoencoder(run_dir, weights)


def encoded_training_data(cfg: TrainConfig, run_dir: str | Path, x: Tensor,
                          seed: int = 0) -> Tensor:
    """The latents z = s · E(x) (N, c, h, w) of a latent run's training images x (N, C, H, W):
    for distillation, whose objectives noise a fixed x_0. KL: one draw of q(z|x) per image
    (seeded by ``seed``), the distribution the teacher was trained on; VQ: h."""
    codec = load_codec(run_dir, cfg)
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.inference_mode():
        for xb in x.split(500):
            m = codec.moments(xb)
            noise = None
            if codec.ae.quantizer is None:
                noise = torch.randn((len(xb), *codec.latent_shape(tuple(xb.shape[1:]))),
                                    generator=g)
            out.append(codec.from_moments(m, noise))
    return torch.cat(out)
