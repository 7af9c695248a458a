"""Fewer sampling steps by distillation — Weng §"Fewer Sampling Steps & Distillation".

- :mod:`.progressive`: progressive distillation (Salimans & Ho 2022, Alg. 2; Weng Fig. 9-10):
  the loss ``progressive_loss``, the target ``teacher_target`` and the student
  parameterisations ``X0``, ``EPS``, ``V``. A distilled student samples with the usual DDIM:
  ``samplers.ddim(V.as_eps(student, s), s, x_T, steps=N, spacing="trailing")``.
- :mod:`.consistency`: consistency models f_θ (Weng eq. 30; Song et al. 2023) in VE coordinates
  and ``consistency_sample`` (Alg. 1), a sampler with the contract signature.
- :mod:`.consistency_training`: the losses of consistency distillation (eq. 31) and training
  (eq. 32), the ODE steps of the teacher and the schedules N(k), μ(k).
- :mod:`.distances`: ℓ2, ℓ1, pseudo-Huber and feature distances for eq. (31)-(32).
The loops that train with these losses are objectives of the one training loop
(:mod:`difflab.training.progressive`, :mod:`difflab.training.consistency`, with in-memory
``progressive_distill``, ``consistency_distill`` and ``consistency_train``); their run
directories are in :mod:`difflab.runs.distill` (``difflab distill``).
"""

from .consistency import (
    ConsistencyModel,
    consistency_sample,
    karras_sigmas,
    karras_timesteps,
    log_sigma_noise,
    schedule_time,
    sigma_table,
)
from .consistency_training import (
    cd_loss,
    ct_ema_decay,
    ct_loss,
    ct_num_levels,
    euler_step,
    heun_step,
)
from .distances import classifier_features, feature_distance, l1, l2, pseudo_huber
from .progressive import (
    EPS,
    X0,
    Prediction,
    V,
    distilled_steps,
    progressive_loss,
    snr_plus_one,
    teacher_grid,
    teacher_target,
    truncated_snr,
)

__all__ = [
    "ConsistencyModel", "EPS", "Prediction", "V", "X0", "cd_loss", "classifier_features",
    "consistency_sample", "ct_ema_decay", "ct_loss", "ct_num_levels", "distilled_steps",
    "euler_step", "feature_distance", "heun_step", "karras_sigmas", "karras_timesteps", "l1",
    "l2", "log_sigma_noise", "progressive_loss", "pseudo_huber", "schedule_time",
    "sigma_table", "snr_plus_one", "teacher_grid", "teacher_target", "truncated_snr",
]
