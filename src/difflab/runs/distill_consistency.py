"""Consistency distillation as a run (Song et al. 2023, Alg. 2; Weng eq. 31): f_θ distilled
from a run's EMA ε-model into a run of kind "consistency-distillation"
(:func:`distill_consistency`; :mod:`difflab.runs.distill` resumes it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..build.model import build_model
from ..config import TrainConfig
from ..distill.consistency_training import euler_step, heun_step
from ..distill.distances import classifier_features, feature_distance, l1, l2, pseudo_huber
from ..errors import ConfigError
from ..training.backend import Backend, torch_threads
from ..training.consistency import ConsistencyDistillation
from ..training.losslog import LossLog
from . import checkpoint as ckpt
from . import latent
from . import run_config as runcfg
from .distill_common import (
    CHECKPOINT_EVERY,
    STUDENT_RESET,
    backend_of,
    check_free,
    cond_data,
    decoder,
    distill_data,
    fit_distill,
    load_teacher,
    raw_network,
)
from .evaluate import evaluate_after
from .load import config_to_json, consistency_model
from .train import saver

SOLVERS = {"euler": euler_step, "heun": heun_step}
DISTANCES = ("l2", "l1", "pseudo_huber", "features")


def distance_fn(name: str, cfg: TrainConfig) -> Callable[[Tensor, Tensor], Tensor]:
    """d of eq. (31)-(32) by name; "features": the committed FD classifier's features (images
    with a classifier only — the LPIPS stand-in, Weng eq. 31)."""
    if name == "features":
        from ..config import IMAGE_SIZES, image_size

        if cfg.dataset not in IMAGE_SIZES:
            raise ConfigError(f"--distance features needs digits or mnist (a committed "
                             f"classifier), not {cfg.dataset}")
        if cfg.autoencoder:
            raise ConfigError("--distance features compares images; a latent run's student "
                              "outputs latents (use l2, l1 or pseudo_huber)")
        return feature_distance(classifier_features(cfg.dataset, image_size(cfg)))
    fns = {"l2": l2, "l1": l1, "pseudo_huber": pseudo_huber}
    if name not in fns:
        raise ConfigError(f"--distance must be one of {', '.join(DISTANCES)}, got {name!r}")
    return fns[name]


def distill_consistency(run: str | Path, out: str | Path, *, solver: str = "heun", N: int = 18,
                        distance: str = "l2", iters: int = 2000, lr: float | None = None,
                        batch: int | None = None, seed: int = 0, mu: float = 0.95,
                        init: str = "auto", overwrite: bool = False, progress: bool = False,
                        evaluate: bool = True, threads: int | None = None,
                        device: str = "auto", precision: str = "fp32", compile: bool = False,
                        checkpoint_every: int = CHECKPOINT_EVERY,
                        max_steps: int | None = None) -> tuple[Path, dict]:
    """Consistency distillation of ``run``'s EMA ε-model into f_θ (Song et al. 2023, Alg. 2;
    Weng eq. 31): N Karras levels snapped to the schedule's steps, Φ = one ``solver`` step of
    the teacher's probability-flow ODE, target decay μ. lr: AdamW, decayed linearly to 0
    (default 4e-4, Song et al.'s CIFAR-10 value); batch: default the teacher's. init: "fresh"
    (a new F_θ, EDM preconditioning), "copy" (F_θ starts as the teacher's network, read as a
    v-network: ``ConsistencyModel.v_from_schedule``; Song et al. also start from the teacher's
    weights) or "auto" (copy where the teacher predicts ε or v with a fixed variance).
    threads: torch threads (default the teacher's). Returns (run directory, metrics); metrics
    are empty when ``max_steps`` stopped it early (continue with :func:`resume_distillation`).
    """
    if solver not in SOLVERS:
        raise ConfigError(f"--solver must be euler or heun, got {solver!r}")
    if N < 2:
        raise ConfigError(f"--N must be at least 2 (levels of the ODE), got {N}")
    if iters < 1:
        raise ConfigError(f"--iters must be at least 1, got {iters}")
    if checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be at least 1, got {checkpoint_every}")
    t_cfg, _, _ = load_teacher(run, threads)
    copyable = t_cfg.variance != "learned" and t_cfg.prediction in ("eps", "v")
    if init not in ("auto", "fresh", "copy"):
        raise ConfigError(f"--init must be auto, fresh or copy, got {init!r}")
    if init == "auto":
        init = "copy" if copyable else "fresh"
    if init == "copy" and not copyable:
        raise ConfigError("--init copy needs a teacher whose network predicts ε or v with a "
                         f"fixed variance ({run} has variance {t_cfg.variance!r}, prediction "
                         f"{t_cfg.prediction!r}); use --init fresh")
    Backend.create(device, precision, compile)
    out = Path(out)
    check_free(out, overwrite)
    job = {"method": "consistency", "teacher": str(run), "solver": solver, "N": N,
           "distance": distance, "iters": iters, "lr": 4e-4 if lr is None else lr,
           "batch": t_cfg.batch if batch is None else batch, "seed": seed, "mu": mu,
           "init": init, "evaluate": evaluate, "threads": threads, "device": device,
           "precision": precision, "compile": compile, "checkpoint_every": checkpoint_every}
    cfg = _consistency_config(t_cfg, job)
    distance_fn(distance, cfg)  # a bad distance fails before any writing
    ckpt.prepare_run_dir(out, overwrite=overwrite)
    runcfg.write_run_config(out, "consistency-distillation", config_to_json(cfg), job)
    return run_consistency(out, job, resume=False, progress=progress, max_steps=max_steps)


def _consistency_config(t_cfg: TrainConfig, job: dict[str, Any]) -> TrainConfig:
    return dataclasses.replace(
        t_cfg, **STUDENT_RESET, method="consistency-distillation",
        prediction="v" if job["init"] == "copy" else "eps", distilled_steps=0,
        eval_sampler="consistency", eval_steps=1, eval_spacing="auto", steps=job["iters"],
        lr=job["lr"], batch=job["batch"], seed=job["seed"], device=job["device"],
        precision=job["precision"], compile=job["compile"])


def run_consistency(out: Path, job: dict[str, Any], *, resume: bool, progress: bool,
                     max_steps: int | None) -> tuple[Path, dict]:
    t_cfg, teacher, schedule = load_teacher(job["teacher"], job["threads"])
    cfg = _consistency_config(t_cfg, job)
    backend = backend_of(job)
    log = LossLog(cfg.log_every)
    with torch_threads(cfg.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = (raw_network(t_cfg, job["teacher"]).requires_grad_(True) if job["init"] == "copy"
               else build_model(cfg))
        objective = ConsistencyDistillation(
            consistency_model(cfg, net, schedule), teacher, schedule, distill_data(t_cfg, job),
            N=job["N"], solver=SOLVERS[job["solver"]], mu=job["mu"], batch=job["batch"],
            iters=job["iters"], lr=job["lr"], lr_decay=True, grad_clip=cfg.grad_clip,
            cond_data=cond_data(t_cfg), distance=distance_fn(job["distance"], cfg))
        state = ckpt.load_checkpoint(out) if resume else None
        result = fit_distill(objective, steps=job["iters"],
                             generator=torch.Generator().manual_seed(job["seed"]),
                             backend=backend, log=log, resume=state, max_steps=max_steps,
                             checkpoint_every=job["checkpoint_every"],
                             save=saver(out, "consistency-distillation", log),
                             progress=progress, desc="consistency distillation")
    if result.step < job["iters"] or not backend.is_main:
        return out, {}
    extra = {"method": cfg.method, "teacher": job["teacher"], "solver": job["solver"],
             "N": job["N"], "distance": job["distance"], "mu": job["mu"], "init": job["init"],
             "train_steps": result.step, "train_seconds": result.seconds, "loss": result.loss}
    target = objective.target.eval()
    if cfg.autoencoder:  # a latent student: its own copy of the teacher's autoencoder
        latent.copy_autoencoder(job["teacher"], out)
    if job["evaluate"]:
        evaluate_after(cfg, target, schedule, out, extra, decode=decoder(cfg, out))
    else:
        ckpt.write_json(out / ckpt.METRICS, extra)
    return out, ckpt.read_json(out / ckpt.METRICS)


__all__ = ["DISTANCES", "SOLVERS", "distance_fn", "distill_consistency", "run_consistency"]
