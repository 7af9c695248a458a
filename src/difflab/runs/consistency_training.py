"""Consistency training as a run (Song et al. 2023, Alg. 3; Weng eq. 32): what
``difflab train --method consistency-training`` runs, with the checkpoints and exact resume of
:func:`difflab.train.train` — the loop is :func:`difflab.distill.consistency_train`, run in
parts (:class:`~difflab.distill.consistency_training.Resume`) between checkpoints. The run
directory is that of :mod:`difflab.distill.runs`: ``ema.safetensors`` holds θ⁻, and
``load_run`` returns f_θ (:class:`~difflab.distill.ConsistencyModel`).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from . import checkpoint as ckpt
from ..config import TrainConfig
from ..training.parts import adamw
from ..distill.consistency import ConsistencyModel
from ..distill.consistency_training import Resume, consistency_train
from .distill import SIGMA_DATA, BarLog, cond_data


def ct_final_levels(steps: int) -> int:
    """s1 of N(k) for a run of ``steps`` updates: Song et al.'s 150 needs hundreds of thousands
    of steps (consistency_training.py measures s1 = 20 converging in 1500-3000), so short runs
    grow to s1 = steps/50, between 20 and 150 — our choice."""
    return min(150, max(20, steps // 50))


def train_consistency(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                      overwrite: bool = False, progress: bool = False,
                      max_steps: int | None = None, evaluate_after: bool = True) -> Path:
    """Consistency training (Song et al. 2023, Alg. 3; Weng eq. 32) of a fresh f_θ on the
    run's data for ``cfg.steps`` updates at ``cfg.lr`` (decayed linearly to 0 unless
    ``lr_schedule = "constant"``), ``cfg.batch``; s0 = 2, s1 = :func:`ct_final_levels`,
    μ0 = 0.9, ℓ2. As :func:`difflab.train.train`: a checkpoint (θ, θ⁻, AdamW, the generator,
    the loss log) every ``checkpoint_every`` steps and at the end, atomic; ``resume`` continues
    from it exactly (the schedules depend on the step only); ``max_steps`` stops early."""
    if cfg.method != "consistency-training":
        raise ValueError(f"method {cfg.method!r} runs are written by 'difflab distill', not "
                         "'difflab train'")
    from ..training.losslog import LossLog
    from ..build.data import training_data
    from ..build.model import build_model, build_schedule
    from ..training.backend import torch_threads
    from .train import open_run_dir

    run_dir = Path(run_dir)
    data = training_data(cfg)  # bad data fails before any writing
    open_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite)
    with torch_threads(cfg.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        schedule = build_schedule(cfg)
        model = ConsistencyModel.from_schedule(build_model(cfg), schedule, SIGMA_DATA)
        target = copy.deepcopy(model).requires_grad_(False)  # θ⁻
        opt = adamw(model, cfg.lr, cfg.weight_decay)
        g = torch.Generator().manual_seed(cfg.seed)
        log, step, elapsed = LossLog(cfg.log_every), 0, 0.0
        if resume:
            state = ckpt.load_checkpoint(run_dir)
            model.net.load_state_dict(state.model)
            target.net.load_state_dict(state.ema)
            opt.load_state_dict(state.optimizer)
            g.set_state(state.generator)
            torch.set_rng_state(state.torch_rng)
            log.load_state_dict(state.log)
            step, elapsed = state.step, state.elapsed
            ckpt.write_json(run_dir / ckpt.CONFIG, cfg.to_dict())  # e.g. more steps
        end = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
        losses = BarLog(max(0, end - step), "consistency training", progress)
        t_start = time.perf_counter()

        def save(k: int, optimizer: torch.optim.Optimizer) -> None:
            ckpt.save_checkpoint(run_dir, ckpt.TrainState(
                step=k, model=model.net.state_dict(), ema=target.net.state_dict(),
                optimizer=optimizer.state_dict(), generator=g.get_state(),
                torch_rng=torch.get_rng_state(),
                elapsed=elapsed + time.perf_counter() - t_start, log=log.state_dict()))
            log.write_csv(run_dir / ckpt.LOSS_CSV)

        def after(k: int, optimizer: torch.optim.Optimizer) -> None:
            log.record(k, losses[-1])
            if k % cfg.checkpoint_every == 0 or k == end:
                save(k, optimizer)

        try:
            consistency_train(model, data, s1=ct_final_levels(cfg.steps), iters=cfg.steps,
                              batch=cfg.batch, lr=cfg.lr, weight_decay=cfg.weight_decay,
                              lr_decay=cfg.lr_schedule != "constant", grad_clip=cfg.grad_clip,
                              generator=g, cond_data=cond_data(cfg), target=target, log=losses,
                              resume=Resume(start=step, stop=end, optimizer=opt, callback=after))
        finally:
            losses.close()
        if step >= end:  # nothing to do (e.g. resumed at the end): still leave a checkpoint
            save(step, opt)
        from .plots import plot_loss

        plot_loss(log.rows, run_dir / ckpt.LOSS_PNG, cfg.log_every,
                  title=f"{cfg.dataset}: L_CT (step {end} of {cfg.steps})")
        if evaluate_after and end == cfg.steps:
            from .evaluate import evaluate_after as _evaluate_after

            tail = losses[-max(1, len(losses) // 10):]
            _evaluate_after(cfg, target.eval(), schedule, run_dir, {
                "train_seconds": elapsed + time.perf_counter() - t_start, "train_steps": end,
                "loss": sum(tail) / len(tail) if tail else None,
                "ct_s1": ct_final_levels(cfg.steps)})
    return run_dir
