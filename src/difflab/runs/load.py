"""Loading a run directory: its config and its model, ready to sample on a device.

``load_run`` reads runs of this format and of the one before it (see
:mod:`difflab.runs.checkpoint`), builds the network of the run's config, loads the EMA (or raw)
weights of its ``denoiser`` component and presents it as the samplers want it: an ε-model for
diffusion runs and progressive students (x0/v students through ``Prediction.as_eps``), f_θ for
consistency models (Weng eq. 30).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..build.model import build_model, build_schedule
from ..build.score import score_ladder
from ..config import CONSISTENCY_METHODS, TrainConfig
from ..distill.progressive import EPS, X0, Prediction, V
from ..ncsn import ScoreModel
from ..schedules import Schedule
from ..training import consistency_model
from ..training.backend import resolve_device
from . import checkpoint as ckpt
from . import run_config as runcfg
from .controlnet_model import load_controlled

PREDICTIONS: dict[str, Prediction] = {"x0": X0, "eps": EPS, "v": V}


def config_to_json(cfg: TrainConfig) -> dict[str, Any]:
    """The config as config.json stores it: by section."""
    return cfg.to_sections()


def config_from_json(values: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`config_to_json`; also reads the flat config of older runs (a field
    they lack takes its default: ``ct_noise_scale`` 10, what consistency training used before
    the field existed; ``adam_beta2`` 0.999, AdamW's default, which every run used before)."""
    return TrainConfig.from_sections(values)


def read_run(run_dir: str | Path) -> tuple[str, TrainConfig, dict[str, Any]]:
    """(kind, config, job) of a run directory (CheckpointError if missing or invalid).

    A consistency model is never guided (guidance acts on ε-models), so its ``eval_guidance``
    reads as 0: consistency students distilled before 2026-11-30 kept their teacher's w."""
    kind, values, job = runcfg.read_run_config(run_dir)
    try:
        cfg = config_from_json(values)
    except ValueError as err:
        raise ckpt.CheckpointError(f"{Path(run_dir) / ckpt.CONFIG} is invalid: "
                                   f"{ckpt.one_line(err)}") from None
    if cfg.method in CONSISTENCY_METHODS and cfg.eval_guidance:
        cfg = dataclasses.replace(cfg, eval_guidance=0.0)
    return kind, cfg, job


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig saved in a run directory (CheckpointError if missing or invalid)."""
    return read_run(run_dir)[1]


def _student(cfg: TrainConfig, net: nn.Module, schedule: Schedule) -> nn.Module:
    return PREDICTIONS[cfg.prediction].as_eps(net, schedule)


def score_model(cfg: TrainConfig, net: nn.Module, schedule: Schedule) -> ScoreModel:
    """s_θ(x̃, σ_i) = net(x̃, i)/σ_i on the run's ladder (a score-matching run, dsm or ssm)."""
    return ScoreModel(net, score_ladder(cfg))


# how each kind of run's network is presented to the samplers (absent: as it is, an ε-model)
SAMPLING_MODELS = {"diffusion": _student, "progressive": _student, "unclip-decoder": _student,
                   "consistency-training": consistency_model,
                   "consistency-distillation": consistency_model, "dsm": score_model,
                   "ssm": score_model}


def sampling_model(cfg: TrainConfig, net: nn.Module, schedule: Schedule) -> nn.Module:
    """The model the samplers see for the network of ``cfg``'s run: x0/v networks (diffusion
    runs trained with ``prediction`` v or x0, progressive students) as ε-models
    (``Prediction.as_eps``), consistency networks F_θ as f_θ (Weng eq. 30), ε-networks as they
    are (:data:`SAMPLING_MODELS`)."""
    wrap = SAMPLING_MODELS.get(cfg.method)
    return wrap(cfg, net, schedule) if wrap is not None else net


# the kinds of run whose model load_run assembles from several components
ASSEMBLED = {"controlnet": load_controlled}


def load_network(run_dir: str | Path, cfg: TrainConfig, which: str = "ema",
                 component: str = "denoiser") -> nn.Module:
    """The bare network of a run's component with its EMA (or raw, ``which="model"``) weights."""
    weights = ckpt.load_weights(run_dir, which, component)
    check_fits(cfg, weights, run_dir)
    model = build_model(cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        msg = " ".join(str(err).split())[:200]
        raise ckpt.CheckpointError(f"weights in {run_dir} do not fit its config ({msg})") from None
    return model


def misfit(cfg: TrainConfig, weights: dict) -> str | None:
    """How ``weights`` differ from the names and shapes of ``cfg``'s network (the first
    difference, in words), or None if they fit. The network is built on the meta device (no
    memory); one that cannot be built there reads as fitting (``load_state_dict`` checks it)."""
    try:
        with torch.device("meta"):
            want = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    except Exception:  # noqa: BLE001 - e.g. a module that reads its weights when built
        return None
    have = {k: tuple(v.shape) for k, v in weights.items()}
    if want == have:
        return None
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    shaped = [k for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    return (f"{shaped[0]}: {list(have[shaped[0]])} in the weights, {list(want[shaped[0]])} "
            "in the config" if shaped else
            f"missing {missing[0]}" if missing else f"unexpected {extra[0]}")


def check_fits(cfg: TrainConfig, weights: dict, run_dir: str | Path) -> None:
    """CheckpointError unless ``weights`` have the names and shapes of ``cfg``'s network
    (:func:`misfit`): a config.json that asks for an enormous network is refused before
    anything is allocated."""
    detail = misfit(cfg, weights)
    if detail is not None:
        raise ckpt.CheckpointError(f"weights in {run_dir} do not fit its config ({detail})")


def load_run(run_dir: str | Path, which: str = "ema", device: str | None = None
             ) -> tuple[TrainConfig, nn.Module, Schedule]:
    """The config, model (EMA weights by default, in eval mode, on ``device``: "auto", "cpu",
    "cuda", …; None: the CPU) and schedule of a run; a distilled student comes as an ε-model and
    a consistency run as its f_θ."""
    kind, cfg, _ = read_run(run_dir)
    if kind in ASSEMBLED:  # a model of several components (a ControlNet: base + control)
        return ASSEMBLED[kind](run_dir, which, device)
    if kind == "noisy-classifier":
        raise ckpt.CheckpointError(f"{run_dir} is a noisy-classifier run, not a diffusion model; "
                                   "pass it to 'difflab sample' as --classifier")
    if kind == "autoencoder":
        raise ckpt.CheckpointError(f"{run_dir} is an autoencoder run (the first stage of latent "
                                   "diffusion), not a diffusion model; train one on its latents "
                                   f"with 'difflab train --autoencoder {run_dir}'")
    if kind in ("clip", "unclip-prior", "unclip-decoder"):
        raise ckpt.CheckpointError(f"{run_dir} is a {kind} run (unCLIP); draw images with "
                                   "'difflab unclip DECODER_RUN [--prior PRIOR_RUN]'")
    if "denoiser" not in ckpt.KINDS[kind]:
        raise ckpt.CheckpointError(f"{run_dir} is a {kind} run, which has no model to sample")
    model = load_network(run_dir, cfg, which)
    if device is not None:
        model.to(resolve_device(device))
    schedule = build_schedule(cfg)
    return cfg, sampling_model(cfg, model.eval().requires_grad_(False), schedule), schedule
