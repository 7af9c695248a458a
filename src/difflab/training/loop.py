"""The one training loop of difflab: every model — diffusion (L_simple, L_hybrid), consistency
training and distillation, progressive distillation, the noisy classifier — is an
:class:`Objective` run by :func:`fit`.

One update, for an objective ``obj`` at step k (0-based)::

    batch = obj.draw(k, g)                        # the GLOBAL batch's random draws, on the CPU
    for each micro-step m of grad_accum:          # this rank's slice of it (Backend.shard)
        loss_m = obj.loss(model, batch[slice]) / grad_accum ; backward
    clip ‖∇‖ to obj.grad_clip
    mean loss, ‖∇‖ and a stop flag read in one sync: not finite → stop or skip (faults.py)
    lr ← obj.lr_at(k); optimiser step
    obj.after_update(k + 1)                       # its EMA policy
    log; a checkpoint every ``checkpoint_every`` updates and at the end

Exact resume: every random number of the loop comes from ONE ``torch.Generator`` (and dropout
from torch's global generator); both are saved with the modules, the optimiser, the objective's
own state and the loss log (:class:`~difflab.training.state.TrainState`). The learning rate and
the EMA decay are functions of the step number. So a run stopped at step k and resumed ends
bit-identical (on the CPU) to an uninterrupted one; and since every rank draws the same global
batch, a checkpoint does not depend on the number of processes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .backend import Backend
from .faults import (
    StopSignals,
    TrainingInterrupted,
    UpdateGuard,
    grad_norm,
    lost_processes,
    unfit_checkpoint,
)
from .loggers import StepLogger
from .losslog import LossLog
from .state import TrainState


class Objective:
    """What :func:`fit` trains. Subclasses set ``net`` (the trained module), ``lr``,
    ``weight_decay``, ``grad_clip`` and implement :meth:`draw`, :meth:`loss` and, where they
    have one, the EMA policy :meth:`after_update` and the learning-rate schedule :meth:`lr_at`.
    """

    net: nn.Module
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max global gradient norm; 0: off
    fused: bool = True  # fused AdamW (one kernel for all parameters)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's (β1, β2)

    def modules(self) -> dict[str, nn.Module]:
        """The named modules a checkpoint holds (the trained one first)."""
        return {"model": self.net}

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=self.lr, betas=self.betas,
                                 weight_decay=self.weight_decay, fused=self.fused or None)

    def draw(self, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        """The random draws of update ``step`` for the whole (global) batch, as tensors whose
        dim 0 is the batch, drawn on the CPU from ``generator``."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """The scalar loss of a slice of a batch from :meth:`draw` (on the device), computed
        with ``model`` — the trained module as the backend prepared it (DDP, compiled)."""
        raise NotImplementedError

    def lr_at(self, step: int) -> float:
        """Learning rate of update ``step`` (0-based)."""
        return self.lr

    def after_update(self, step: int) -> None:
        """After update ``step`` (1-based): the EMA policy."""

    def new_phase(self, step: int) -> bool:
        """Before update ``step`` (0-based): True to start a phase with a fresh optimiser
        (a progressive-distillation round); the objective makes its own changes here."""
        return False

    def end_of_update(self, step: int) -> None:
        """After update ``step`` (1-based) and its checkpoint: e.g. write a finished round."""

    def resumed(self, step: int) -> None:
        """After its state was restored at update ``step``, before training goes on."""

    def to(self, device: torch.device) -> None:
        for module in self.modules().values():
            module.to(device)

    def metrics(self) -> dict[str, float]:
        """Figures of the objective for metrics.json (e.g. its final number of levels)."""
        return {}

    def state_dict(self) -> dict[str, Tensor]:
        """The objective's own state beyond its modules (flat named tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        pass


@dataclass
class FitResult:
    step: int  # updates done in all
    seconds: float  # training time over all sessions
    loss: float | None  # a running mean of the last losses (None if no update ran)
    log: LossLog


def fit(objective: Objective, *, steps: int, generator: torch.Generator,
        backend: Backend | None = None, log: LossLog | None = None,
        resume: TrainState | None = None, max_steps: int | None = None,
        checkpoint_every: int = 0, save: Callable[[TrainState], None] | None = None,
        grad_accum: int = 1, progress: bool = False, desc: str = "train",
        on_update: Callable[[int, float], None] | None = None,
        skip_nonfinite: int = 0, logger: StepLogger | None = None) -> FitResult:
    """Train ``objective`` for updates up to ``steps`` (or ``max_steps``, an interruption).

    ``resume``: a :class:`TrainState` to continue from exactly; ``save(state)`` is called every
    ``checkpoint_every`` updates (0: never), at the end, and on the main process only.
    ``grad_accum``: micro-batches per update (the global batch is split into processes ×
    ``grad_accum`` equal slices). ``on_update(step, loss)`` after every update. Modules end on
    the backend's device. ``progress`` (main process only): a tqdm bar where stderr is a
    terminal, else a one-line :class:`ProgressRecord` (step, loss, steps/s, ETA) on stderr every
    :data:`RECORD_SECONDS` seconds and at the end; False: silent. ``logger``: told of every
    update (loss, learning rate, gradient norm; :mod:`difflab.training.loggers`); give it on
    the main process only.

    Faults (:mod:`.faults`): an update whose loss or gradient norm is not finite is never
    applied: it stops the run with ``NonFiniteError``, or is skipped (``skip_nonfinite`` = K:
    up to K in a row). A SIGINT or SIGTERM ends the update in progress, saves it and raises
    ``TrainingInterrupted`` (after the checkpoint).
    """
    backend = backend or Backend(torch.device("cpu"))
    log = log if log is not None else LossLog(10)
    seed = generator.initial_seed()  # the run's seed (before any resumed state is set)
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be at least 1, got {grad_accum}")
    objective.to(backend.device)
    model = backend.prepare(objective.net)
    opt = objective.optimizer()
    step, elapsed = 0, 0.0
    if resume is not None:
        with unfit_checkpoint():  # a checkpoint of another network: one line (faults.py)
            for name, module in objective.modules().items():
                module.load_state_dict(resume.modules[name])
            objective.load_state_dict(resume.extra)
            opt.load_state_dict(resume.optimizer)
            generator.set_state(resume.generator)
            torch.set_rng_state(resume.torch_rng)
            log.load_state_dict(resume.log)
        step, elapsed = resume.step, resume.elapsed
        objective.resumed(step)
    end = steps if max_steps is None else min(steps, max_steps)
    show = progress and backend.is_main
    bar = _bar(show and on_terminal(), step, steps, desc)
    params = list(objective.net.parameters())
    loss_avg, t_start = None, time.perf_counter()
    record = (ProgressRecord(desc, step, end, t_start, total=steps) if show and bar is None
              else None)

    def state() -> TrainState:
        return TrainState(step=step,
                          modules={k: m.state_dict() for k, m in objective.modules().items()},
                          optimizer=opt.state_dict(), generator=generator.get_state(),
                          torch_rng=torch.get_rng_state(),
                          elapsed=elapsed + time.perf_counter() - t_start,
                          extra=objective.state_dict(), log=log.state_dict())

    def checkpoint() -> None:
        if save is not None and backend.is_main:
            save(state())

    objective.net.train()
    saved = resume.step if resume is not None else None  # the last checkpoint's step
    # --- faults (training/faults.py): signals caught, non-finite updates checked ---
    with StopSignals() as signals, lost_processes(backend.rank, backend.world_size,
                                                  lambda: (step, saved)):
        guard = UpdateGuard(skip_nonfinite, signals)
        while step < end:
            if objective.new_phase(step):
                opt = objective.optimizer()
            batch = objective.draw(step, generator)
            if backend.rank > 0:  # dropout: rank 0 keeps the run's stream, the others their own
                torch.manual_seed(rank_seed(seed, step, backend.rank))
            B = next(iter(batch.values())).shape[0]
            opt.zero_grad(set_to_none=True)
            total = None
            for micro in range(grad_accum):
                part = backend.shard(B, micro, grad_accum)
                piece = {k: v[part].to(backend.device, non_blocking=True) for k, v in batch.items()}
                with backend.no_sync(model, micro < grad_accum - 1), backend.autocast():
                    loss = objective.loss(model, piece)
                if grad_accum > 1:
                    loss = loss / grad_accum
                backend.backward(loss)
                total = loss.detach() if total is None else total + loss.detach()
            backend.unscale(opt)
            norm = grad_norm(params, objective.grad_clip)  # clipped on the way if grad_clip > 0
            logged_norm = norm  # ‖∇‖ before clipping, for the logger
            if backend.scaler is not None:  # fp16: the gradient scaler skips inf gradients itself
                norm = torch.zeros((), device=backend.device)
            value, gnorm, stop = guard.read(total, norm, backend)  # the update's one sync
            skipped = guard.bad(step + 1, value, gnorm, saved)  # (or NonFiniteError)
            if skipped:  # nothing applied; its slot and its draws are used up
                step += 1
                log.skip(step)
            else:
                lr = objective.lr_at(step)
                for group in opt.param_groups:
                    group["lr"] = lr
                backend.step(opt)
                step += 1
                objective.after_update(step)
                log.record(step, value)
                if on_update is not None:
                    on_update(step, value)
                if logger is not None:
                    logger.update(step, value, lr, logged_norm, B)
                loss_avg = value if loss_avg is None else 0.98 * loss_avg + 0.02 * value
            if bar is not None:
                bar.update(1)
                if step % 50 == 0 and loss_avg is not None:
                    bar.set_postfix(loss=f"{loss_avg:.4f}", refresh=False)
            elif record is not None:
                record.update(step, loss_avg)
            if (checkpoint_every and step % checkpoint_every == 0) or step == end or stop:
                checkpoint()
                saved = step
            if stop:  # a SIGINT/SIGTERM reached some process: saved, now stop
                raise TrainingInterrupted(guard.stop_signal(), step, save is not None)
            objective.end_of_update(step)
        if bar is not None:
            bar.close()
        guard.report()
    if step == 0 or (resume is not None and resume.step >= end):
        checkpoint()  # nothing trained this session: still leave a resumable run
    return FitResult(step, elapsed + time.perf_counter() - t_start, loss_avg, log)


RECORD_SECONDS = 30.0  # without a terminal: one progress line per this many seconds


def on_terminal() -> bool:
    """True where a progress bar can redraw itself: stderr is a terminal (or a notebook)."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


class ProgressRecord:
    """The progress of :func:`fit` where no bar can be drawn (stderr redirected, ``nohup``):
    one line on stderr every :data:`RECORD_SECONDS` seconds and at the session's last update,

        train: step 1200/3000 (40%), loss 0.0312, 85.3 steps/s, ETA 0:00:21

    (the loss is the running mean that the bar shows; the speed is this session's; the ETA is
    to the session's last update, which a ``max_steps`` before the end names). It only
    reads the clock and the loss already computed, so training is unchanged."""

    def __init__(self, desc: str, start: int, end: int, t_start: float,
                 every: float | None = None, total: int | None = None):
        self.desc, self.start, self.end, self.t_start = desc, start, end, t_start
        self.total = end if total is None else total  # the run's steps; end: this session's
        self.every = RECORD_SECONDS if every is None else every
        self.last = t_start

    def update(self, step: int, loss: float | None) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and step < self.end:
            return
        self.last = now
        print(self.line(step, loss, now), file=sys.stderr, flush=True)

    def line(self, step: int, loss: float | None, now: float) -> str:
        done = step - self.start
        rate = done / max(now - self.t_start, 1e-9)
        eta = (self.end - step) / rate if rate > 0 else float("inf")
        eta_text = _clock(eta) if eta != float("inf") else "?"
        loss_text = "?" if loss is None else f"{loss:.4g}"
        stop = f" (stopping at {self.end})" if self.end < self.total else ""
        return (f"{self.desc}: step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%)"
                f", loss {loss_text}, {rate:.3g} steps/s, ETA {eta_text}{stop}")


def _clock(seconds: float) -> str:
    """h:mm:ss."""
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def rank_seed(seed: int, step: int, rank: int) -> int:
    """The seed of torch's global generator (dropout) on process ``rank`` > 0 at update
    ``step``: a function of (seed, step, rank) alone, so resume stays exact and ranks differ."""
    return (seed * 1_000_003 + step) * 1_009 + rank


def _bar(progress: bool, initial: int, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
