"""The model of a ControlNet run (kind ``controlnet``): its frozen base and its control branch.

A ControlNet run directory holds its base as a run directory of its own, ``base/`` (the base
run's config.json and EMA weights, copied when the ControlNet run was created: the run is
self-contained and ``difflab sample RUN/base`` samples the base alone), beside the branch's
``control.safetensors`` / ``control.ema.safetensors`` and the job (hint kind, branch settings)
in config.json. :func:`load_base` is the ONE place that turns a base run into the network a
branch controls (a pixel-space U-Net diffusion run today; a latent run is one more case there).

This module sits below :mod:`difflab.runs.load` (which calls :func:`load_controlled` for runs of
kind ``controlnet``) and imports nothing from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..build.model import build_model, build_schedule
from ..config import TrainConfig
from ..errors import ConfigError
from ..nn.controlnet import control_branch, controlled
from ..schedules import Schedule
from ..training.backend import resolve_device
from . import checkpoint as ckpt
from . import run_config as runcfg

BASE_DIR = "base"  # the frozen base run inside a ControlNet run
BASE_KINDS = ("diffusion",)  # the kinds of run a ControlNet can control


def run_config(run_dir: str | Path) -> tuple[str, TrainConfig, dict[str, Any]]:
    """(kind, config, job) of a run directory; CheckpointError if missing or invalid."""
    kind, values, job = runcfg.read_run_config(run_dir)
    try:
        return kind, TrainConfig.from_sections(values), job
    except ValueError as err:
        raise ckpt.CheckpointError(f"{Path(run_dir) / ckpt.CONFIG} is invalid: "
                                   f"{ckpt.one_line(err)}") from None


def check_base(run_dir: str | Path, kind: str, cfg: TrainConfig) -> None:
    """ConfigError unless the run can be a ControlNet's base: a diffusion run of images whose
    network predicts ε with a fixed variance."""
    if kind not in BASE_KINDS:
        raise ConfigError(f"{run_dir} is a {kind} run; a ControlNet's base is a diffusion run "
                          "('difflab train')")
    if cfg.variance == "learned":
        raise ConfigError(f"{run_dir} learns its variance (Σ_θ); a ControlNet's base needs a "
                          "fixed variance")
    if cfg.prediction != "eps":
        raise ConfigError(f"{run_dir} predicts {cfg.prediction}; a ControlNet's base predicts ε")
    if cfg.sr_low_res:
        raise ConfigError(f"{run_dir} is a super-resolution run; a ControlNet's base is a "
                          "diffusion run without a low-resolution input")


def load_base(run_dir: str | Path) -> tuple[TrainConfig, nn.Module, Schedule]:
    """The config, bare network (EMA weights, frozen, in eval mode, on the CPU) and schedule of a
    base run — a run written by ``difflab train``, or the ``base/`` copy inside a ControlNet
    run. ConfigError for a run that cannot be a base, CheckpointError for a broken one."""
    kind, cfg, _ = run_config(run_dir)
    check_base(run_dir, kind, cfg)
    net = build_model(cfg)
    try:
        net.load_state_dict(ckpt.load_weights(run_dir, "ema"))
    except RuntimeError as err:
        raise ckpt.CheckpointError(f"weights in {run_dir} do not fit its config "
                                   f"({ckpt.one_line(err)})") from None
    return cfg, net.eval().requires_grad_(False), build_schedule(cfg)


def copy_base(src: str | Path, dst: str | Path) -> None:
    """Copy the base run ``src`` into ``dst`` (a fresh directory): its config.json, the EMA
    (or, without one, raw) weights of each of its components and a latent base's autoencoder."""
    src, dst = ckpt.check_run_dir(src), Path(dst)
    kind, _, _ = runcfg.read_run_config(src)
    dst.mkdir(parents=True, exist_ok=True)
    names = [ckpt.CONFIG]
    if (src / ckpt.AUTOENCODER).is_file():  # a latent base: its frozen autoencoder too
        names.append(ckpt.AUTOENCODER)
    for component, (_, ema) in ckpt.KINDS[kind].items():
        name = ckpt.weight_file(component, ema is not None)
        if not (src / name).is_file():
            name = ckpt.weight_file(component, False)
        names.append(name)
    for name in names:
        if not (src / name).is_file():
            raise ckpt.CheckpointError(f"{src / name} is missing")
        ckpt.atomic_write_bytes(dst / name, (src / name).read_bytes())
    for old in dst.iterdir():  # files of an earlier base, on --overwrite
        if old.name not in names and old.is_file() and old.suffix in (".json", ".safetensors"):
            old.unlink()


def control_for(base: nn.Module, job: dict[str, Any]) -> nn.Module:
    """The (untrained) control branch of ``base`` with the job's branch settings."""
    return control_branch(base, **job["control"])


def load_controlled(run_dir: str | Path, which: str = "ema", device: str | None = None
                    ) -> tuple[TrainConfig, nn.Module, Schedule]:
    """The config, model (the base with its control branch's EMA or raw weights: an ε-model
    ``model(x_t, t, hint=…, **cond)``, in eval mode, on ``device``) and schedule of a ControlNet
    run."""
    kind, cfg, job = run_config(run_dir)
    if kind != "controlnet" or "control" not in job:
        raise ckpt.CheckpointError(f"{run_dir} is not a ControlNet run")
    _, base, schedule = load_base(Path(run_dir) / BASE_DIR)
    control = control_for(base, job)
    try:
        control.load_state_dict(ckpt.load_weights(run_dir, which, "control"))
    except RuntimeError as err:
        raise ckpt.CheckpointError(f"control weights in {run_dir} do not fit its base "
                                   f"({ckpt.one_line(err)})") from None
    model = controlled(base, control.requires_grad_(False)).eval()
    if device is not None:
        model.to(resolve_device(device))
    return cfg, model, schedule

