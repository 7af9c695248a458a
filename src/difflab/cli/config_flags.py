"""Flags generated from the fields of :class:`difflab.config.TrainConfig` (``train`` and
``train-classifier``), their help text, and the config built from them, with the config's
errors rewritten to name the flag (``config key 'loss' = 'hybrid'`` → ``--loss 'hybrid'``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from ..config import DEVICES, PRECISIONS, TrainConfig, load_config
from ..samplers import SAMPLERS
from .common import UsageError, flag, one_line

HELP = {
    "dataset": "2-D: swiss_roll, moons, 8gaussians, checkerboard; images: digits, mnist, "
               "folder (with --data)",
    "image_size": "image side in pixels (digits 8, 16, 32; mnist 28, 32; 0: the dataset's own)",
    "model": "auto (MLP for 2-D data, U-Net for images), mlp or unet",
    "model_channels": "U-Net base width",
    "channel_mult": "U-Net width multipliers, one per resolution level, e.g. 1,2",
    "num_res_blocks": "U-Net residual blocks per level",
    "attention": "U-Net self-attention at these downsampling factors, e.g. 2 ('' for none)",
    "dropout": "U-Net dropout",
    "data": "image directory for --dataset folder",
    "channels": "image channels for --dataset folder: 1 (grey) or 3 (RGB)",
    "schedule": "noise schedule: linear or cosine",
    "T": "number of diffusion steps",
    "steps": "training steps (optimizer updates)",
    "lr": "peak learning rate (AdamW)",
    "batch": "batch size",
    "seed": "seed of initialisation, batches and noise",
    "hidden": "MLP width",
    "depth": "number of residual MLP blocks",
    "out": "run directory (default: runs/<dataset>-<date>-<time>)",
    "eval_sampler": "sampler for the evaluation after training: " + ", ".join(SAMPLERS),
    "eval_steps": "sampler steps for the evaluation after training",
    "n_eval": "samples (and held-out points) for the evaluation (images: FD sample size)",
    "threads": "torch threads (0: torch's default, all cores)",
    "n_train": "size of the fixed 2-D training set (images: the whole train split)",
    "t_dim": "width of the sinusoidal time embedding",
    "lr_schedule": "constant or cosine (decay after warm-up)",
    "warmup": "linear learning-rate warm-up steps",
    "lr_min_ratio": "final learning rate of the cosine decay, as a fraction of --lr",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "clip the gradient norm to this (0: off)",
    "ema_decay": "decay of the exponential moving average of the weights",
    "checkpoint_every": "steps between checkpoints",
    "eval_eta": "DDIM eta for the evaluation after training",
    "eval_spacing": "timestep spacing for the evaluation: auto (leading on the cosine schedule), "
                    "linspace, leading or trailing",
    "variance": "Σ_θ of the reverse process: beta_tilde or beta (fixed), or learned (eq 23: "
                "the network outputs [ε, v]; needs --loss hybrid)",
    "loss": "simple (L_simple, eq 19) or hybrid (L_simple + λ L_vlb with the stop-gradient on "
            "μ_θ; needs --variance learned)",
    "hybrid_lambda": "λ of L_hybrid",
    "t_sampling": "uniform, or importance (p_t ∝ √E[L_t²] from the history of the bound's terms; "
                  "needs --loss hybrid)",
    "log_every": "steps per row of loss.csv (the mean loss of those steps)",
    "cond": "none, class (label embedding) or text (captions through the frozen MiniLM and "
            "cross-attention, eq 33); images only",
    "p_uncond": "probability of dropping the condition to ∅ in training (classifier-free "
                "guidance)",
    "num_classes": "number of classes (0: the dataset's own)",
    "text_tokens": "caption tokens kept by the text encoder",
    "eval_guidance": "classifier-free guidance w for the evaluation of a conditional run",
    "method": "diffusion, or consistency-training (Weng eq. 32: a consistency model, sampled "
              "with --sampler consistency)",
    "prediction": "what the network outputs: eps (x0 and v: students of 'difflab distill')",
    "distilled_steps": "set by 'difflab distill' (the steps a progressive student takes)",
    "device": f"where to train: {', '.join(DEVICES)} (auto: CUDA if present, else the CPU)",
    "precision": f"{', '.join(PRECISIONS)}: autocast precision (fp16 with a gradient scaler, "
                 "CUDA only); weights, optimiser and EMA stay float32",
    "compile": "torch.compile the network",
    "grad_accum": "micro-batches per optimizer update (--batch is the whole update's batch)",
}
_TYPES = {"int": int, "float": float, "str": str}


def add_config_flags(p: argparse.ArgumentParser, names: Iterable[str] | None = None, *,
                     show_defaults: bool = True) -> None:
    """One flag per TrainConfig field (those in ``names``, default all), default None (not
    given); bool fields get --x/--no-x."""
    defaults = TrainConfig()
    wanted = None if names is None else set(names)
    for f in fields(TrainConfig):
        if wanted is not None and f.name not in wanted:
            continue
        text = HELP.get(f.name, f.name.replace("_", " "))
        if show_defaults and "(default" not in text:  # a help text may state its own
            text += f" (default: {getattr(defaults, f.name)!r})"
        if str(f.type) == "bool":
            p.add_argument(flag(f.name), dest=f.name, default=None, help=text,
                           action=argparse.BooleanOptionalAction)
            continue
        p.add_argument(flag(f.name), dest=f.name, type=_TYPES[str(f.type)], default=None,
                       metavar=f.name if f.name == "T" else f.name.upper(), help=text)


def given_fields(args: argparse.Namespace, names: Iterable[str] | None = None) -> dict[str, Any]:
    """{field: value} of the config flags given on the command line."""
    names = [f.name for f in fields(TrainConfig)] if names is None else names
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def config_from_flags(preset: str | None, values: dict[str, Any],
                      base: TrainConfig | None = None) -> TrainConfig:
    """``load_config(preset, values)`` (or, with ``base``, ``base`` with ``values`` applied);
    its errors (a bad value, a malformed or missing preset) become one :class:`UsageError`
    that names the flags given."""
    try:
        if base is not None:
            return TrainConfig.from_dict(values, base=base)
        return load_config(preset, values)
    except (ValueError, OSError) as err:
        if isinstance(err, OSError) and err.filename is None:
            raise
        msg = one_line(err)
        for f in fields(TrainConfig):  # "config key 'loss' = 'hybrid'" → "--loss 'hybrid'"
            msg = msg.replace(f"config key {f.name!r} = ", f"{flag(f.name)} ")
        for key in values:
            msg = msg.replace(f"config key {key!r}", flag(key))
        raise UsageError(msg) from None
