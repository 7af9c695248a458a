"""Tiny run directories for the interop tests (tests/test_interop_*.py): a config and random
weights, written as training writes them, without training (the exports must hold for any
weights, and difflab's zero-initialised output layers would make an untrained network trivial)."""

from __future__ import annotations

from pathlib import Path

import torch

from difflab.build.model import build_model
from difflab.config import TrainConfig
from difflab.runs import checkpoint as ckpt
from difflab.runs import run_config as runcfg

TINY_UNET = dict(dataset="digits", image_size=8, model="unet", model_channels=16,
                 channel_mult="1,2", num_res_blocks=1, attention="", T=100, threads=1,
                 device="cpu", eval_steps=5)


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Every parameter of ``module`` drawn from N(0, scale²), from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def make_run(path: Path, kind: str = "diffusion", seed: int = 0, **fields) -> TrainConfig:
    """A run directory of ``kind`` with the config ``TINY_UNET`` + ``fields`` and random weights
    (the same in the raw and the EMA file)."""
    cfg = TrainConfig.from_dict({**TINY_UNET, **fields})
    weights = randomise(build_model(cfg), seed).state_dict()
    path.mkdir(parents=True)
    runcfg.write_run_config(path, kind, cfg.to_sections())
    for ema in (False, True):
        ckpt.save_tensors(path / ckpt.weight_file("denoiser", ema), weights)
    return cfg
