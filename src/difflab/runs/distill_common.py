"""What the distillation runs share (:mod:`difflab.runs.distill` has the layout of their
directories): the teacher (its EMA ε-model, data, conditions and guidance), the config keys a
student resets, the checks of OUT and the training loop's stop on a non-finite update with the
way out that ``difflab distill`` offers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..build.data import training_data
from ..build.model import build_model
from ..config import CONSISTENCY_METHODS, SCORE_METHODS, TrainConfig
from ..errors import ConfigError
from ..schedules import Schedule
from ..training import fit
from ..training.backend import Backend
from ..training.faults import NonFiniteError
from . import checkpoint as ckpt
from . import latent
from .lock import LOCK_FILE

CHECKPOINT_EVERY = 500  # updates between checkpoints of a distillation
# what a distilled or consistency run keeps of its teacher's config, and what it resets
STUDENT_RESET = {"variance": "beta_tilde", "loss": "simple", "t_sampling": "uniform",
                 "eval_eta": 0.0, "eval_guidance": 0.0, "out": ""}


class EpsOnly(nn.Module):
    """ε̂ of a model that may return (ε̂, v) (a learned Σ_θ, Weng eq. 23): distillation targets
    use the deterministic DDIM / ODE path, which needs ε̂ alone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        out = self.model(x_t, t, **cond)
        return out[0] if isinstance(out, tuple) else out


DISTILL_NONFINITE_HINT = ("distill --resume cannot change --lr: start the distillation again "
                          "with a lower --lr (--overwrite replaces OUT)")


def fit_distill(*args, **kw):
    """``training.loop.fit``, its stop on a non-finite update naming what distill can do."""
    try:
        return fit(*args, **kw)
    except NonFiniteError as err:
        raise err.with_hint(DISTILL_NONFINITE_HINT) from None

def load_teacher(run: str | Path, threads: int | None = None
             ) -> tuple[TrainConfig, nn.Module, Schedule]:
    """The teacher run's config (its torch threads replaced by ``threads`` when given, which the
    students then inherit), its EMA ε-model and schedule."""
    from .load import load_run

    if threads is not None and threads < 0:
        raise ConfigError(f"--threads must be at least 0, got {threads}")
    cfg, model, schedule = load_run(run)
    if cfg.sr_low_res:
        raise ConfigError(f"{run} is a super-resolution run; distilling one (with its "
                          "low-resolution input) is not implemented")
    if cfg.method in CONSISTENCY_METHODS:
        raise ConfigError(f"{run} is a consistency model; distil a diffusion run or a "
                         "progressive student")
    if cfg.method in SCORE_METHODS:
        raise ConfigError(f"{run} is a score network (method {cfg.method}), sampled by Langevin "
                          "dynamics only; distil a diffusion run or a progressive student")
    if threads is not None:
        cfg = dataclasses.replace(cfg, threads=threads)
    return cfg, EpsOnly(model).eval(), schedule


def distill_data(t_cfg: TrainConfig, job: dict[str, Any]) -> Tensor:
    """The x_0 the students learn from: the teacher's training images, or for a latent teacher
    their latents (:func:`~difflab.runs.latent.encoded_training_data`)."""
    x = training_data(t_cfg)
    if not t_cfg.autoencoder:
        return x
    return latent.encoded_training_data(t_cfg, job["teacher"], x, job["seed"])


def decoder(cfg: TrainConfig, run_dir: Path) -> Callable[[Tensor], Tensor] | None:
    """A latent student's decoder (None in pixel space)."""
    codec = latent.load_codec(run_dir, cfg)
    return codec.decode if codec is not None else None


def raw_network(cfg: TrainConfig, run: str | Path) -> nn.Module:
    """The run's bare EMA network (what its config's ``prediction`` says it outputs)."""

    net = build_model(cfg)
    net.load_state_dict(ckpt.load_weights(run, "ema"))
    return net


def cond_data(cfg: TrainConfig) -> dict[str, Tensor] | None:
    """Per-example conditioning of the run's training data, passed to teacher and student
    (progressive.py, consistency_training.py): {"y": labels (N,)} of ``training_data(cfg)``
    for a class-conditional run, None for an unconditional one."""
    if cfg.cond == "none":
        return None
    if cfg.cond != "class":
        raise ConfigError(f"distilling a {cfg.cond!r}-conditional run is not implemented; "
                         "distil an unconditional or class-conditional run")
    from ..build.data import image_split

    return {"y": image_split(cfg, "train").y}


def guided_teacher(cfg: TrainConfig, teacher: nn.Module, guidance: float) -> nn.Module:
    """The teacher a student learns: ``teacher`` itself, or with classifier-free guidance of
    weight w (Weng eq. 26) on a class-conditional run — the student, always given the label,
    then learns the guided model (Meng et al. 2023 distil guidance the same way, w fixed)."""
    if guidance == 0:
        return teacher
    from ..build.conditioning import null_cond
    from ..guidance import ClassifierFree

    if cfg.cond != "class":
        raise ConfigError("--guidance needs a class-conditional teacher (train it with --cond "
                         "class)")
    return ClassifierFree(teacher, guidance, null_cond(cfg))


def check_free(run_dir: Path, overwrite: bool) -> None:
    """RunExistsError now, before any training, where ``prepare_run_dir`` would refuse later."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ckpt.RunExistsError(f"{run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        if not overwrite:
            raise ckpt.RunExistsError(f"run directory {run_dir} already exists; pass "
                                      "--overwrite to replace it")
        if not (run_dir / ckpt.CONFIG).is_file():
            raise ckpt.RunExistsError(f"refusing to overwrite {run_dir}: it is not empty and "
                                      "not a difflab run directory")


def backend_of(job: dict[str, Any]) -> Backend:
    return Backend.create(job["device"], job["precision"], job["compile"])


__all__ = ["CHECKPOINT_EVERY", "STUDENT_RESET", "EpsOnly", "backend_of", "check_free",
           "cond_data", "decoder", "distill_data", "fit_distill", "guided_teacher",
           "load_teacher", "raw_network"]
