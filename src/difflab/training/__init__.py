"""The one training loop (:func:`~difflab.training.loop.fit`) and its objectives.

:data:`OBJECTIVES` is the registry of what ``difflab train`` can train, by the config's
``method``: a factory ``(cfg, schedule, data, conds, backend) -> Objective``. Distillation
objectives (:mod:`.progressive`, :mod:`.consistency`) and the noisy classifier
(:mod:`.classifier`) are built by the run code that loads their teacher or labels.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..build.data import data_levels
from ..build.model import build_model
from ..config import TrainConfig
from ..schedules import Schedule
from ..vlb import ImportanceSampler
from .backend import Backend
from .consistency import ConsistencyTraining
from .diffusion import DiffusionObjective, LRSchedule
from .loop import Objective, fit

SIGMA_DATA = 0.5  # σ_d of f_θ's preconditioning (Song et al. 2023, App. C; data in [−1, 1])


def ct_final_levels(steps: int) -> int:
    """s1 of N(k) for a run of ``steps`` updates: Song et al.'s 150 needs hundreds of thousands
    of steps (1500-3000 steps converge with s1 = 20 on 1-D data), so short runs grow to
    s1 = steps/50, between 20 and 150 — our choice."""
    return min(150, max(20, steps // 50))


def lr_schedule(cfg: TrainConfig) -> LRSchedule:
    """The learning rate of a run's updates: warm-up, then constant or cosine."""
    return LRSchedule(cfg.lr, cfg.steps, cfg.warmup, cfg.lr_schedule, cfg.lr_min_ratio)


def diffusion_objective(cfg: TrainConfig, schedule: Schedule, data: Tensor, conds,
              backend: Backend) -> Objective:
    """L_simple or L_hybrid (Weng eq. 19, 23) with the run's EMA and learning-rate schedule."""
    lr = lr_schedule(cfg)
    t_sampler = ImportanceSampler(cfg.T) if cfg.t_sampling == "importance" else None
    return DiffusionObjective(build_model(cfg), schedule, data, batch=cfg.batch, lr=lr,
                              ema_decay=cfg.ema_decay, conds=conds, p_uncond=cfg.p_uncond,
                              loss=cfg.loss, hybrid_lambda=cfg.hybrid_lambda,
                              t_sampler=t_sampler, levels=data_levels(cfg),
                              weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
                              backend=backend)


def ct_objective(cfg: TrainConfig, schedule: Schedule, data: Tensor, conds,
                         backend: Backend) -> Objective:
    """Consistency training (Weng eq. 32) of a fresh f_θ: s0 = 2, s1 = :func:`ct_final_levels`,
    μ0 = 0.9, ℓ2; lr decayed linearly to 0 unless ``lr_schedule = "constant"``."""
    from ..distill.consistency import ConsistencyModel

    cond_data = None
    if conds is not None:  # class labels, never dropped (no guidance for consistency models)
        if set(conds.table) != {"y"}:
            raise ValueError("consistency training of a text-conditional run is not "
                             "implemented; use --cond class or none")
        cond_data = {"y": conds.table["y"][conds.choices[:, 0]]}
    model = ConsistencyModel.from_schedule(build_model(cfg), schedule, SIGMA_DATA)
    return ConsistencyTraining(model, data, s1=ct_final_levels(cfg.steps), batch=cfg.batch,
                               iters=cfg.steps, lr=cfg.lr,
                               lr_decay=cfg.lr_schedule != "constant",
                               weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
                               cond_data=cond_data)


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "diffusion": diffusion_objective,
    "consistency-training": ct_objective,
}

__all__ = ["OBJECTIVES", "SIGMA_DATA", "Backend", "Objective", "ct_final_levels", "fit",
           "lr_schedule"]
