"""``difflab.load_diffusers(DIR)``: a local diffusers ``UNet2DModel`` folder as a difflab model
and schedule, so that every difflab sampler, guidance method and the likelihood run on it.

``DIR`` is a pipeline folder (``DIR/unet`` and ``DIR/scheduler``, as ``difflab export`` and
``save_pretrained`` of a DDPM/DDIM pipeline write them) or a UNet2DModel folder with a
``scheduler_config.json`` beside its ``config.json``. A ``DIR/transformer`` holding a
``DiTTransformer2DModel`` (a DiT run's export) loads the same way. Nothing is downloaded.

The wrapper (:class:`DiffusersModel`) speaks difflab's model interface
``model(x_t, t, y=None) -> ε̂`` (or ``(ε̂, v)``):

- t: difflab's step 1..T is diffusers' timestep t − 1 (``alphas_cumprod[t − 1]`` is ᾱ_t).
- The scheduler's ``prediction_type`` says what the network predicts; "v_prediction" and
  "sample" outputs are turned into ε̂ with the schedule's ᾱ_t (:mod:`difflab.parameterization`:
  ε = √(1−ᾱ) x_t + √ᾱ v, and Weng eq. 11 solved for ε).
- ``variance_type = "learned_range"`` with 2C output channels is Weng eq. (23)'s learned Σ_θ:
  the model returns (ε̂, v) with v = (output + 1)/2, which ``samplers.ddpm`` and the VLB read.
- Class labels (``num_class_embeds`` = K + 1; a DiT's ``num_embeds_ada_norm`` = K) go to
  ``class_labels``; y = None is label K, the null label ∅ of difflab's classifier-free guidance
  (and of its exports). A DiT always takes labels (an unconditional difflab DiT exports with
  K = 1 and a table of zeros).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InteropError
from ..parameterization import eps_from_v, eps_from_x0
from ..schedules import Schedule
from .requirement import require_diffusers
from .schedule_map import prediction_from_config, schedule_from_config

MODEL_CLASSES = ("UNet2DModel", "DiTTransformer2DModel")


class DiffusersModel(nn.Module):
    """A diffusers ``UNet2DModel`` (or ``DiTTransformer2DModel``) as a difflab model:
    ``forward(x_t, t, y=None)`` with t in 1..T returns ε̂ (B, C, H, W), or (ε̂, v) with a
    learned variance."""

    def __init__(self, net: nn.Module, schedule: Schedule, prediction: str = "eps",
                 learned_variance: bool = False):
        super().__init__()
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.learned_variance = learned_variance
        self.is_dit = type(net).__name__ == "DiTTransformer2DModel"
        if self.is_dit:
            self.num_classes = net.config.num_embeds_ada_norm  # K; label K is ∅
        else:
            embeds = net.config.num_class_embeds
            self.num_classes = embeds - 1 if embeds else 0  # K; label K is ∅

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None, **cond: Any):
        if cond:
            raise ValueError(f"a diffusers {type(self.net).__name__} takes no "
                             f"{', '.join(sorted(cond))}")
        if y is not None and not self.num_classes:
            raise ValueError("y given to an unconditional model (no num_class_embeds)")
        if self.num_classes and y is None:
            y = torch.full_like(t, self.num_classes)
        if self.is_dit:
            out = self.net(x_t, timestep=t - 1, class_labels=y, return_dict=False)[0]
        else:
            out = self.net(x_t, t - 1, class_labels=y, return_dict=False)[0]
        v = None
        if self.learned_variance:
            out, v_raw = out.chunk(2, dim=1)
            v = (v_raw + 1) / 2
        if self.prediction != "eps":
            ab = Schedule.broadcast(self.schedule.alpha_bar_at(t.cpu()), x_t)  # (B, 1, 1, 1)
            out = (eps_from_v if self.prediction == "v" else eps_from_x0)(x_t, out, ab)
        return out if v is None else (out, v)


def find_folders(path: Path) -> tuple[Path, Path]:
    """(the UNet2DModel folder, the scheduler config file) of a pipeline or model folder."""
    if not path.is_dir():
        raise InteropError(f"{path} is not a directory (a diffusers pipeline or UNet2DModel "
                           "folder)")
    sub = next((path / name for name in ("unet", "transformer")
                if (path / name / "config.json").is_file()), None)
    if sub is not None:
        model_dir = sub
        sched = path / "scheduler" / "scheduler_config.json"
    elif (path / "config.json").is_file():
        model_dir, sched = path, path / "scheduler_config.json"
    else:
        raise InteropError(f"{path} has no unet/config.json, transformer/config.json or "
                           "config.json: not a diffusers pipeline or UNet2DModel folder")
    if not sched.is_file():
        raise InteropError(f"{sched} is missing: the schedule the network was trained on is "
                           "part of the model")
    return model_dir, sched


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InteropError(f"cannot read {path}: {' '.join(str(err).split())}") from None
    if not isinstance(value, dict):
        raise InteropError(f"{path} is not a JSON object")
    return value


def load_diffusers(path: str | Path, device: str | torch.device | None = None
                   ) -> tuple[DiffusersModel, Schedule]:
    """(model, schedule) of a local diffusers UNet2DModel folder: the model in eval mode on
    ``device`` (None: the CPU), ready for difflab's samplers. InteropError (one line) for a
    folder that is not one, a scheduler difflab cannot read, or diffusers missing."""
    model_dir, sched_file = find_folders(Path(path))
    model_cfg, sched_cfg = read_json(model_dir / "config.json"), read_json(sched_file)
    class_name = model_cfg.get("_class_name")
    if class_name not in MODEL_CLASSES:
        raise InteropError(f"{model_dir} holds a {class_name!r}; load_diffusers reads "
                           f"{' and '.join(MODEL_CLASSES)} folders")
    schedule = schedule_from_config(sched_cfg)
    prediction = prediction_from_config(sched_cfg)
    c_in = model_cfg.get("in_channels", 3)
    c_out = model_cfg.get("out_channels") or c_in
    variance = sched_cfg.get("variance_type", "fixed_small")
    learned = variance == "learned_range" and c_out == 2 * c_in
    if c_out != c_in and not learned:
        raise InteropError(f"the UNet2DModel outputs {c_out} channels for {c_in} in, with "
                           f"variance_type {variance!r}: difflab reads C (a prediction) or 2C "
                           "with 'learned_range' (Weng eq. 23)")
    if model_cfg.get("time_embedding_type") == "learned" and (
            model_cfg.get("num_train_timesteps") or 0) < schedule.T:
        raise InteropError(f"the UNet2DModel's time table has {model_cfg['num_train_timesteps']} "
                           f"rows, fewer than the schedule's T = {schedule.T}")
    diffusers = require_diffusers()
    try:
        net = getattr(diffusers, class_name).from_pretrained(str(model_dir),
                                                             local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise InteropError(f"cannot load {model_dir}: {' '.join(str(err).split())[:300]}"
                           ) from None
    model = DiffusersModel(net, schedule, prediction, learned)
    if device is not None:
        model.to(device)
    return model.eval().requires_grad_(False), schedule
