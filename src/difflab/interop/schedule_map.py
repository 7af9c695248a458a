"""A difflab :class:`~difflab.schedules.Schedule` as the keywords of a diffusers scheduler
(``DDPMScheduler``, from which ``DDIMScheduler.from_config`` also builds), and a diffusers
scheduler config back as a Schedule.

Indexing: difflab's β_t, t = 1..T, is diffusers' ``betas[t − 1]``; the diffusers timestep t' is
difflab's step t' + 1. With ``timestep_spacing = "leading"`` and ``steps_offset = 0``, diffusers'
DDIM visits t' = k·⌊T/S⌋ (k = 0..S−1) and ends on ᾱ = 1 (``set_alpha_to_one``), which is
difflab's ``spacing="leading"`` grid τ_k = 1 + k·⌊T/S⌋ (:mod:`difflab.samplers.timesteps`) with
its last step to ᾱ_0 = 1: the same sampler. ``clip_sample`` is off, as in difflab's samplers.

Named schedules stay named where diffusers computes the same betas: difflab's ``linear`` is
``beta_schedule = "linear"`` (β from 1e-4 to 0.02) and its ``cosine`` is ``"squaredcos_cap_v2"``
(Nichol & Dhariwal's f(t) = cos²((t/T + 0.008)/1.008 · π/2), β capped at 0.999, in both).
Any other schedule travels as ``trained_betas``, every β_t written out (as float64 in JSON).
diffusers itself keeps betas in float32; reading a config back here recomputes named schedules
in float64 and takes ``trained_betas`` as written, so difflab → diffusers → difflab is exact.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import schedules
from ..errors import InteropError
from ..schedules import Schedule

# difflab's parameterisations and fixed variances in diffusers' words
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
VARIANCE_TYPES = {"beta_tilde": "fixed_small", "beta": "fixed_large", "learned": "learned_range"}
LINEAR = (1e-4, 0.02)  # difflab's linear schedule's β_1 and β_T


def named(schedule: Schedule) -> dict[str, Any]:
    """The ``beta_schedule`` keywords that rebuild ``schedule`` by name, or ``trained_betas``."""
    T = schedule.T
    if torch.equal(schedule.betas, schedules.linear(T, *LINEAR).betas):
        return dict(beta_schedule="linear", beta_start=LINEAR[0], beta_end=LINEAR[1])
    if torch.equal(schedule.betas, schedules.cosine(T).betas):
        return dict(beta_schedule="squaredcos_cap_v2")
    return dict(beta_schedule="linear", trained_betas=schedule.betas.tolist())


def scheduler_kwargs(schedule: Schedule, prediction: str = "eps",
                     variance: str = "beta_tilde") -> dict[str, Any]:
    """Keywords of diffusers' ``DDPMScheduler`` for a model trained on ``schedule`` that
    predicts ``prediction`` ("eps", "v", "x0") with Σ_θ ``variance`` ("beta_tilde", "beta",
    "learned": Weng eq. 23, diffusers' "learned_range": the same interpolation
    exp(v log β_t + (1 − v) log β̃_t) with v = (output + 1)/2)."""
    if prediction not in PREDICTION_TYPES:
        raise InteropError(f"prediction {prediction!r} has no diffusers prediction_type "
                           f"(one of {', '.join(PREDICTION_TYPES)})")
    if variance not in VARIANCE_TYPES:
        raise InteropError(f"variance {variance!r} has no diffusers variance_type")
    return dict(num_train_timesteps=schedule.T, **named(schedule),
                variance_type=VARIANCE_TYPES[variance], clip_sample=False,
                prediction_type=PREDICTION_TYPES[prediction], thresholding=False,
                timestep_spacing="leading", steps_offset=0)


def schedule_from_config(config: dict[str, Any]) -> Schedule:
    """The difflab Schedule of a diffusers scheduler config (``scheduler_config.json``):
    ``trained_betas`` as written, or the named ``beta_schedule`` recomputed in float64
    ("linear", "scaled_linear", "squaredcos_cap_v2"). InteropError for anything else."""
    T = int(config.get("num_train_timesteps", 1000))
    if config.get("rescale_betas_zero_snr"):
        raise InteropError("the scheduler rescales its betas to zero terminal SNR (ᾱ_T = 0, "
                           "β_T = 1), which a difflab schedule cannot hold (every β_t < 1)")
    betas = config.get("trained_betas")
    name = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    try:
        if betas is not None:
            if len(betas) != T:
                raise InteropError(f"the scheduler's trained_betas has {len(betas)} values, "
                                   f"not num_train_timesteps = {T}")
            return schedules.from_betas(betas)
        if name == "linear":
            return schedules.linear(T, start, end)
        if name == "scaled_linear":
            b = torch.linspace(math.sqrt(start), math.sqrt(end), T, dtype=torch.float64) ** 2
            return schedules.from_betas(b)
        if name == "squaredcos_cap_v2":
            return schedules.cosine(T)
    except ValueError as err:
        raise InteropError(f"the scheduler's betas are not a schedule: {err}") from None
    raise InteropError(f"beta_schedule {name!r} is not one difflab can read (linear, "
                       "scaled_linear, squaredcos_cap_v2, or trained_betas)")


def prediction_from_config(config: dict[str, Any]) -> str:
    """difflab's name ("eps", "v", "x0") for the scheduler's ``prediction_type``."""
    kind = config.get("prediction_type", "epsilon")
    names = {v: k for k, v in PREDICTION_TYPES.items()}
    if kind not in names:
        raise InteropError(f"prediction_type {kind!r} is not one difflab can read "
                           f"({', '.join(names)})")
    return names[kind]
