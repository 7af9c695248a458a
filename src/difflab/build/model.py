"""The objects a config names: the noise schedule and the network (through the registry of
model kinds in :mod:`difflab.nn.registry`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import schedules
from ..config import TrainConfig, int_list, is_image
from ..nn.mlp import MLPDenoiser
from ..parameterization import LearnedVariance
from ..schedules import Schedule


# --- pieces ---
def build_schedule(cfg: TrainConfig) -> Schedule:
    return schedules.linear(cfg.T) if cfg.schedule == "linear" else schedules.cosine(cfg.T)


def build_model(cfg: TrainConfig) -> nn.Module:
    """The ε-network — the MLP for 2-D data, the U-Net for images — initialised from
    ``cfg.seed`` without touching torch's global RNG. With ``variance = "learned"`` the network
    outputs [ε̂, v_raw] (twice the channels) and comes wrapped in
    :class:`~difflab.parameterization.LearnedVariance`, so the model returns (ε̂, v) — Weng
    eq. (23)."""
    learned = cfg.variance == "learned"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if not is_image(cfg.dataset):
            net = MLPDenoiser(dim=2, hidden=cfg.hidden, depth=cfg.depth, t_dim=cfg.t_dim,
                              out_dim=4 if learned else 2)
        else:
            from ..nn.unet import UNet, UNetConfig
            from .data import image_shape

            mult = int_list(cfg.channel_mult)
            widths = [cfg.model_channels * m for m in mult]
            net = UNet(UNetConfig(
                in_channels=image_shape(cfg)[0], model_channels=cfg.model_channels,
                channel_mult=mult, num_res_blocks=cfg.num_res_blocks,
                attention_resolutions=int_list(cfg.attention), dropout=cfg.dropout,
                groups=math.gcd(32, *widths), learn_sigma=learned,
                num_classes=cfg.num_classes if cfg.cond == "class" else 0,
                context_dim=text_dim() if cfg.cond == "text" else 0))
    return LearnedVariance(net) if learned else net


def text_dim() -> int:
    from ..nn.text_encoder import MiniLMConfig

    return MiniLMConfig().dim  # D of the frozen text encoder's tokens
