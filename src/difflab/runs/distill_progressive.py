"""Progressive distillation as runs (Salimans & Ho 2022, Alg. 2; Weng Fig. 9-10): rounds
N → N/2 → … from a run's EMA network, each round saved as a run of kind "progressive"
(:func:`distill_progressive`; the layout of the directories is in :mod:`difflab.runs.distill`,
whose ``resume_distillation`` continues an interrupted one)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..build.model import build_model
from ..config import TrainConfig
from ..errors import ConfigError
from ..training.backend import Backend, torch_threads
from ..training.losslog import LossLog
from ..training.progressive import ProgressiveDistillation
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
    guided_teacher,
    load_teacher,
    raw_network,
)
from .evaluate import evaluate_after
from .load import PREDICTIONS, config_to_json, sampling_model
from .train import saver

DEFAULT_START_STEPS = 64  # the first student's N (its teacher takes 128 steps)


def round_steps(start_steps: int, rounds: int, T: int) -> list[int]:
    """[N, N/2, …, N/2^(K−1)] for K = ``rounds``; ValueError where a round would need a
    fraction of a step (or fewer than 1) or its teacher more than T steps (2N ≤ T)."""
    if rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {rounds}")
    if start_steps < 1 or 2 * start_steps > T:
        raise ConfigError(f"--start-steps must lie in 1..T/2 (its teacher takes twice as many "
                         f"steps; T = {T}), got {start_steps}")
    if start_steps % 2 ** (rounds - 1):
        raise ConfigError(f"--rounds {rounds} from --start-steps {start_steps} would go below 1 "
                         f"step ({start_steps} is not divisible by 2^{rounds - 1}); use at most "
                         f"{int(math.log2(start_steps & -start_steps)) + 1} rounds")
    return [start_steps // 2**r for r in range(rounds)]


def _round_loss(log: LossLog, start: int, end: int) -> float | None:
    """The mean of the last tenth of a round's loss-log rows (steps start+1 … end)."""
    rows = [v for s, v in log.rows if start < s <= end]
    tail = rows[-max(1, len(rows) // 10):]
    return sum(tail) / len(tail) if tail else None


def distill_progressive(run: str | Path, out: str | Path, *, rounds: int,
                        start_steps: int | None = None, steps_per_round: int = 1000,
                        prediction: str = "v", init: str = "auto", lr: float | None = None,
                        batch: int | None = None, seed: int = 0, overwrite: bool = False,
                        progress: bool = False, evaluate: bool = True, guidance: float = 0.0,
                        threads: int | None = None,
                        report: Callable[[Path, dict], None] | None = None,
                        device: str = "auto", precision: str = "fp32", compile: bool = False,
                        checkpoint_every: int = CHECKPOINT_EVERY,
                        max_steps: int | None = None) -> list[Path]:
    """Progressive distillation of ``run``'s EMA network (Salimans & Ho 2022, Alg. 2) for
    ``rounds`` rounds of ``steps_per_round`` updates; returns the round directories
    ``out/steps-<N>``, N = start_steps, start_steps/2, … (only those finished when
    ``max_steps`` stops it early; continue with :func:`resume_distillation`).

    start_steps: the first student's N (default 64; for a progressive teacher, half its steps —
    it is only exact on its own grid). init: the first student — "copy" of the teacher's
    network (Alg. 2; when the teacher predicts ε and the student v or x0, its output is
    reinterpreted: a warm start of the features only), "fresh" (seeded), or "auto": a copy
    when it predicts ``prediction`` already, else fresh. lr: AdamW peak, decayed linearly to 0
    each round (default a tenth of the teacher's); batch: default the teacher's. guidance: w of
    classifier-free guidance for a class-conditional teacher (see :func:`guided_teacher`); the
    students are then conditional models with the guidance built in, sampled with w = 0.
    threads: torch threads (default the teacher's). device, precision, compile: as for
    training. ``report(dir, metrics)`` after each round.
    """
    t_cfg, _, _ = load_teacher(run, threads)
    if not (guidance >= 0 and guidance < float("inf")):
        raise ConfigError(f"--guidance must be a number >= 0, got {guidance}")
    if prediction not in ("x0", "v", "eps"):
        raise ConfigError(f"--prediction must be v, x0 or eps, got {prediction!r}")
    if init not in ("auto", "copy", "fresh"):
        raise ConfigError(f"--init must be auto, copy or fresh, got {init!r}")
    if start_steps is None:
        start_steps = (t_cfg.distilled_steps // 2 if t_cfg.method == "progressive"
                       else DEFAULT_START_STEPS)
    if t_cfg.method == "progressive" and 2 * start_steps != t_cfg.distilled_steps:
        raise ConfigError(f"{run} was distilled for {t_cfg.distilled_steps} steps; its student "
                         f"must take half as many (--start-steps {t_cfg.distilled_steps // 2})")
    if steps_per_round < 1:
        raise ConfigError(f"--steps-per-round must be at least 1, got {steps_per_round}")
    if checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be at least 1, got {checkpoint_every}")
    if init == "copy" and t_cfg.variance == "learned":
        raise ConfigError(f"--init copy needs a teacher with a fixed variance (the same "
                         f"network shape); {run} learns Σ_θ")
    Backend.create(device, precision, compile)  # a device this machine lacks fails here
    out = Path(out)
    steps = round_steps(start_steps, rounds, t_cfg.T)
    check_free(out, overwrite)
    for n in steps:
        check_free(out / f"steps-{n}", overwrite)
    copy = init == "copy" or (init == "auto" and t_cfg.prediction == prediction
                              and t_cfg.variance != "learned")
    job = {"method": "progressive", "teacher": str(run), "rounds": rounds,
           "start_steps": start_steps, "steps_per_round": steps_per_round,
           "prediction": prediction, "init": "copy" if copy else "fresh",
           "lr": t_cfg.lr / 10 if lr is None else lr,
           "batch": t_cfg.batch if batch is None else batch, "seed": seed,
           "evaluate": evaluate, "guidance": guidance, "threads": threads, "device": device,
           "precision": precision, "compile": compile, "checkpoint_every": checkpoint_every}
    base = _student_config(t_cfg, job)
    ckpt.prepare_run_dir(out, overwrite=overwrite)
    runcfg.write_run_config(out, "progressive-distillation", config_to_json(base), job)
    return run_progressive(out, job, resume=False, progress=progress, max_steps=max_steps,
                            report=report)


def _student_config(t_cfg: TrainConfig, job: dict[str, Any]) -> TrainConfig:
    """The first round's student config: the teacher's, reset (:data:`STUDENT_RESET`)."""
    n = job["start_steps"]
    return dataclasses.replace(
        t_cfg, **STUDENT_RESET, method="progressive", prediction=job["prediction"],
        distilled_steps=n, eval_sampler="ddim", eval_steps=n, eval_spacing="trailing",
        steps=job["steps_per_round"], lr=job["lr"], batch=job["batch"], seed=job["seed"],
        device=job["device"], precision=job["precision"], compile=job["compile"])


def run_progressive(out: Path, job: dict[str, Any], *, resume: bool, progress: bool,
                     max_steps: int | None, report) -> list[Path]:
    t_cfg, teacher, schedule = load_teacher(job["teacher"], job["threads"])
    teacher = guided_teacher(t_cfg, teacher, job["guidance"])
    base = _student_config(t_cfg, job)
    steps = round_steps(job["start_steps"], job["rounds"], t_cfg.T)
    dirs = [out / f"steps-{n}" for n in steps]
    backend = backend_of(job)
    spr = job["steps_per_round"]
    log = LossLog(base.log_every)

    clock = [time.perf_counter()]  # when this round (or this session of it) began

    def save_round(r: int, n: int, net: nn.Module) -> None:
        if not backend.is_main or (dirs[r] / ckpt.METRICS).is_file():
            return  # written before an interruption
        cfg = dataclasses.replace(base, distilled_steps=n, eval_steps=n)
        ckpt.prepare_run_dir(dirs[r], overwrite=True)
        runcfg.write_run_config(dirs[r], "progressive", config_to_json(cfg))
        meta = {"format": ckpt.FORMAT, "step": str(spr), "method": "progressive"}
        ckpt.save_tensors(dirs[r] / ckpt.weight_file("denoiser", False), net.state_dict(), meta)
        if cfg.autoencoder:  # a latent student: its own copy of the teacher's autoencoder
            latent.copy_autoencoder(job["teacher"], dirs[r])
        extra = {"method": "progressive", "teacher": job["teacher"], "round": r + 1,
                 "rounds": job["rounds"], "distilled_steps": n, "teacher_steps": 2 * n,
                 "prediction": job["prediction"], "train_steps": spr,
                 "teacher_guidance": job["guidance"],
                 "loss": _round_loss(log, r * spr, (r + 1) * spr),
                 "train_seconds": time.perf_counter() - clock[0]}
        rows = [(s - r * spr, v) for s, v in log.rows if r * spr < s <= (r + 1) * spr]
        ckpt.atomic_write_bytes(dirs[r] / ckpt.LOSS_CSV, LossLog(base.log_every).csv().encode()
                                if not rows else
                                ("step,loss\n" + "".join(f"{s},{v!r}\n" for s, v in rows))
                                .encode())
        if job["evaluate"]:
            evaluate_after(cfg, sampling_model(cfg, net, schedule), schedule, dirs[r], extra,
                           decode=decoder(cfg, dirs[r]))
        else:
            ckpt.write_json(dirs[r] / ckpt.METRICS, extra)
        if report is not None:
            report(dirs[r], ckpt.read_json(dirs[r] / ckpt.METRICS))
        clock[0] = time.perf_counter()

    with torch_threads(base.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(base.seed)
        if job["init"] == "copy":
            student = raw_network(t_cfg, job["teacher"]).requires_grad_(True)  # Alg. 2
        else:
            student = build_model(base)  # seeded by ``seed``
        objective = ProgressiveDistillation(
            teacher, student, schedule, distill_data(t_cfg, job), steps[0], job["rounds"],
            parameterization=PREDICTIONS[job["prediction"]], steps_per_round=spr,
            batch=job["batch"], lr=job["lr"], grad_clip=t_cfg.grad_clip,
            cond_data=cond_data(t_cfg), on_round=save_round)
        state = ckpt.load_checkpoint(out) if resume else None
        g = torch.Generator().manual_seed(job["seed"])
        result = fit_distill(objective, steps=objective.steps, generator=g, backend=backend,
                             log=log, resume=state, max_steps=max_steps,
                             checkpoint_every=job["checkpoint_every"],
                             save=saver(out, "progressive-distillation", log),
                             progress=progress, desc="distill")
    return [d for d, r in zip(dirs, range(len(dirs)), strict=True)
            if (r + 1) * spr <= result.step]


__all__ = ["DEFAULT_START_STEPS", "distill_progressive", "round_steps", "run_progressive"]
