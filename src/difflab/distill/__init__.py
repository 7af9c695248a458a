"""Fewer sampling steps by distillation — Weng §"Fewer Sampling Steps & Distillation".

- :mod:`.progressive`: progressive distillation (Salimans & Ho 2022, Alg. 2; Weng Fig. 9-10):
  ``progressive_round``, ``progressive_distill``, the target ``teacher_target`` and the student
  parameterisations ``X0``, ``EPS``, ``V``. A distilled student samples with the usual DDIM:
  ``samplers.ddim(V.as_eps(student, s), s, x_T, steps=N, spacing="trailing")``.
- :mod:`.consistency`: consistency models f_θ (Weng eq. 30; Song et al. 2023) in VE coordinates
  and ``consistency_sample`` (Alg. 1), a sampler with the contract signature.
- :mod:`.consistency_training`: consistency distillation (eq. 31) and training (eq. 32).
- :mod:`.distances`: ℓ2, ℓ1, pseudo-Huber and feature distances for eq. (31)-(32).
- :mod:`.runs` and :mod:`.ct_run` (not imported here: they build on :mod:`difflab.train`):
  run directories of distilled students and consistency models, behind ``difflab distill``
  and ``difflab train --method consistency-training``.
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
    consistency_distill,
    consistency_train,
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
    progressive_distill,
    progressive_loss,
    progressive_round,
    snr_plus_one,
    teacher_grid,
    teacher_target,
    truncated_snr,
)

__all__ = [
    "EPS", "V", "X0", "ConsistencyModel", "Prediction", "cd_loss", "classifier_features",
    "consistency_distill", "consistency_sample", "consistency_train", "ct_ema_decay", "ct_loss",
    "ct_num_levels", "distilled_steps", "euler_step", "feature_distance", "heun_step",
    "karras_sigmas", "karras_timesteps", "l1", "l2", "log_sigma_noise", "progressive_distill",
    "progressive_loss", "progressive_round", "pseudo_huber", "schedule_time", "sigma_table",
    "snr_plus_one",
    "teacher_grid", "teacher_target", "truncated_snr",
]
