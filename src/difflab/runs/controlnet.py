"""ControlNet runs (Weng, "ControlNet"; Zhang et al. 2023): ``difflab train-controlnet BASE``
as a function, around the one training loop.

:func:`train_controlnet` copies the base run (its config and EMA weights) into ``OUT/base/``,
writes ``OUT/config.json`` (kind ``controlnet``; the config is the base's with this training's
settings; the job names the hint kind and the branch's settings), then trains the control
branch (:class:`difflab.training.controlnet.ControlNetObjective`) with checkpoints every
``checkpoint_every`` updates; :func:`resume_controlnet` continues it exactly. At the end it
samples the held-out images' hints and writes ``metrics.json`` — FD (beside its floor) and the
hint adherence: the F1 between each hint and the same edge detector applied to its sample
(``edges``), or the IoU of the masks (``mask``) — and ``samples.png`` (rows of hints, each above
the row of its samples).

Hints: ``edges``/``edges-thin``/``mask`` from any image dataset (:data:`difflab.data.hints.HINTS`),
``file`` from a folder's ``controls.csv`` (:func:`difflab.data.hints.control_images`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..build.data import image_split, model_shape
from ..config import TrainConfig, is_image
from ..data import hints as hint_lib
from ..data.images import ImageData
from ..errors import ConfigError
from ..schedules import Schedule
from ..training import fit, with_adam_beta2
from ..training.backend import Backend, torch_threads
from ..training.controlnet import P_UNCOND, ControlNetObjective
from ..training.diffusion import LRSchedule
from ..training.losslog import LossLog
from . import checkpoint as ckpt
from . import latent
from . import run_config as runcfg
from .controlnet_model import BASE_DIR, control_for, copy_base, load_base, run_config
from .draw import draw
from .load import config_to_json
from .train import saver

KIND = "controlnet"
HINT_KINDS = (*hint_lib.HINTS, hint_lib.FILE_HINT)
CHECKPOINT_EVERY = 250
HINT_HIDDEN = 16  # width of the hint encoder's first layers


# --- hints of a run -----------------------------------------------------------------------------
def hint_channels(job: dict[str, Any], cfg: TrainConfig) -> int:
    return hint_lib.HINT_CHANNELS.get(job["hint"], cfg.channels)


def hints_of(job: dict[str, Any], cfg: TrainConfig, data: ImageData) -> Tensor:
    """The hints (N, C_h, H, W) in [0, 1] of the images of ``data``: computed by the job's
    detector, or (``file``) the folder's control images."""
    if job["hint"] == hint_lib.FILE_HINT:
        H, W = data.x.shape[-2:]
        return hint_lib.control_images(cfg.data, data.files, (H, W), hint_channels(job, cfg))
    return hint_lib.HINTS[job["hint"]](data.x)


def check_hint_kind(hint: str, cfg: TrainConfig) -> None:
    if hint not in HINT_KINDS:
        raise ConfigError(f"--hint must be one of {', '.join(HINT_KINDS)}, got {hint!r}")
    if hint == hint_lib.FILE_HINT and cfg.dataset != "folder":
        raise ConfigError(f"--hint file reads a folder's {hint_lib.CONTROLS_FILE}; the base was "
                          f"trained on {cfg.dataset} (use --hint edges or mask)")


def adherence(job: dict[str, Any], samples: Tensor, hints: Tensor) -> dict[str, float]:
    """How well ``samples`` (n, C, H, W) follow their ``hints``: the edge F1 (with precision and
    recall) of the job's detector on the samples against the hints, or the mask IoU; {} for
    the user's own control images (no detector)."""
    kind = job["hint"]
    if kind == hint_lib.FILE_HINT:
        return {}
    found = hint_lib.HINTS[kind](samples.clamp(-1, 1))
    if kind == "mask":
        return {"mask_iou": hint_lib.mask_iou(found, hints)}
    scores = hint_lib.edge_f1(found, hints)
    return {"edge_f1": scores["f1"], "edge_precision": scores["precision"],
            "edge_recall": scores["recall"]}


def eval_conditions(cfg: TrainConfig, data: ImageData, n: int) -> dict[str, Tensor]:
    """The base's conditions for samples of the first ``n`` held-out images: their labels (class
    runs), their digits' captions (text runs on digits), ∅ otherwise."""
    if cfg.cond == "none":
        return {}
    from ..build.conditioning import null_cond, sample_conditions

    if cfg.cond == "class" or cfg.dataset != "folder":
        cond, _ = sample_conditions(cfg, n, data.y[:n].tolist())
        return {k: v for k, v in cond.items() if cfg.cond == "class" or k != "y"}
    return {k: v.expand(n, *v.shape[1:]) for k, v in null_cond(cfg).items()}


def evaluate_control(model: nn.Module, schedule: Schedule, cfg: TrainConfig,
                     job: dict[str, Any], *, n: int | None = None, seed: int = 0,
                     sampler: str | None = None, steps: int | None = None,
                     scale: float = 1.0, guidance: float | None = None,
                     out_dir: Path | None = None) -> tuple[dict[str, Any], Tensor, Tensor]:
    """Sample the hints of the first ``n`` held-out images (default ``cfg.n_eval``) with the
    controlled ``model`` at control ``scale``; returns (metrics, samples (n, C, H, W), hints).
    Metrics: :func:`adherence`, FD and its floor (digits, MNIST), the sampler's settings.
    ``out_dir``: the run directory, whose autoencoder decodes a latent base's samples."""
    from ..build.conditioning import guided
    from ..config import spacing_for
    from ..data.fd import DEFAULT_SIZE, FDEvaluator

    test = image_split(cfg, "test")
    n = min(n or cfg.n_eval, len(test))
    hints = hints_of(job, cfg, test)[:n]  # (n, C_h, H, W)
    sampler = sampler or cfg.eval_sampler
    steps = steps or cfg.eval_steps
    w = cfg.eval_guidance if guidance is None else guidance
    previous = model.conditioning_scale
    model.conditioning_scale = scale
    try:
        device = next(model.parameters()).device
        cond = {k: v.to(device) for k, v in {**eval_conditions(cfg, test, n),
                                             "hint": hints}.items()}
        m = guided(model, schedule, cfg, cond, w=w if cfg.cond != "none" else 0.0,
                   sampler=sampler, steps=steps)
        codec = latent.load_codec(out_dir, cfg, device) if out_dir is not None else None
        x0, _, seconds = draw(m, schedule, (n, *model_shape(cfg)), sampler=sampler, steps=steps,
                              eta=cfg.eval_eta if sampler == "ddim" else 0.0,
                              spacing=spacing_for(cfg, sampler), seed=seed,
                              decode=codec.decode if codec is not None else None)
    finally:
        model.conditioning_scale = previous
    x0 = x0.float().cpu().clamp(-1.0, 1.0)
    metrics: dict[str, Any] = {"sampler": sampler, "steps": steps, "n_eval": n,
                               "sample_seed": seed, "control_scale": scale,
                               "sample_seconds": seconds, **adherence(job, x0, hints)}
    if cfg.cond != "none":
        metrics["guidance"] = w
    if cfg.dataset in DEFAULT_SIZE:
        from ..config import image_size

        fd = FDEvaluator.for_dataset(cfg.dataset, image_size(cfg))
        metrics.update(fd=fd.fd(x0), fd_floor=fd.floor())
    return metrics, x0, hints


def hint_picture(hints: Tensor, channels: int) -> Tensor:
    """Hints (n, C_h, H, W) in [0, 1] as images (n, channels, H, W) in [-1, 1] for a grid."""
    x = hints * 2 - 1
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1)
    return x


def save_hints_and_samples(hints: Tensor, samples: Tensor, path: Path, per_row: int = 10) -> None:
    """A grid: a row of hints, the row of their samples below it, and so on."""
    from .plots import save_image_grid

    k = min(len(samples), 5 * per_row)
    rows = []
    for i in range(0, k, per_row):
        h, s = hint_picture(hints[i:i + per_row], samples.shape[1]), samples[i:i + per_row]
        if len(h) < per_row:  # pad the last pair of rows
            pad = torch.full((per_row - len(h), *s.shape[1:]), -1.0)
            h, s = torch.cat([h, pad]), torch.cat([s, pad])
        rows += [h, s]
    save_image_grid(torch.cat(rows), path, nrow=per_row)


# --- training -----------------------------------------------------------------------------------
def control_config(base_cfg: TrainConfig, job: dict[str, Any]) -> TrainConfig:
    """The ControlNet run's config: the base's, with this training's settings."""
    return dataclasses.replace(
        base_cfg, steps=job["steps"], lr=job["lr"], batch=job["batch"], seed=job["seed"],
        p_uncond=job["p_uncond"] if base_cfg.cond != "none" else base_cfg.p_uncond,
        checkpoint_every=job["checkpoint_every"], device=job["device"],
        precision=job["precision"], compile=job["compile"],
        threads=base_cfg.threads if job["threads"] is None else job["threads"], out="")


def train_controlnet(base_run: str | Path, out: str | Path, *, hint: str = "edges",
                     steps: int = 1000, lr: float | None = None, batch: int | None = None,
                     seed: int = 0, p_uncond: float = P_UNCOND, hidden: int = HINT_HIDDEN,
                     zero: bool = True, threads: int | None = None, overwrite: bool = False,
                     progress: bool = False, evaluate: bool = True, device: str = "auto",
                     precision: str = "fp32", compile: bool = False,
                     checkpoint_every: int = CHECKPOINT_EVERY,
                     max_steps: int | None = None) -> Path:
    """Train a ControlNet on the frozen EMA network of ``base_run`` (a diffusion run of images)
    into ``out``; returns ``out``. hint: a kind of :data:`HINT_KINDS`; lr: AdamW peak with the
    base's warm-up and schedule (default: the base's); batch: default the base's; p_uncond: how
    often the base's condition is dropped to ∅ (class or text bases; 0.5 as in the paper);
    hidden: the hint encoder's width; zero: zero convolutions (False: the paper's ablation with
    ordinary initialisation). ``max_steps`` stops early with a checkpoint (then
    :func:`resume_controlnet`)."""
    base_run = Path(base_run)
    kind, base_cfg, _ = run_config(base_run)
    from .controlnet_model import check_base

    check_base(base_run, kind, base_cfg)
    if not is_image(base_cfg.dataset):
        raise ConfigError(f"{base_run} is a model of 2-D points; a ControlNet needs an image "
                          "model")
    check_hint_kind(hint, base_cfg)
    for name, value in (("--steps", steps), ("--checkpoint-every", checkpoint_every),
                        ("--hint-hidden", hidden)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if batch is not None and batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {batch}")
    if lr is not None and not lr > 0:
        raise ConfigError(f"--lr must be > 0, got {lr}")
    if not 0 <= p_uncond <= 1:
        raise ConfigError(f"--p-uncond must lie in [0, 1], got {p_uncond}")
    if threads is not None and threads < 0:
        raise ConfigError(f"--threads must be at least 0, got {threads}")
    backend = Backend.create(device, precision, compile)  # a device this machine lacks fails here
    out = Path(out)
    job = {"base": str(base_run), "hint": hint, "steps": steps,
           "lr": base_cfg.lr if lr is None else lr,
           "batch": base_cfg.batch if batch is None else batch, "seed": seed,
           "p_uncond": p_uncond, "threads": threads, "device": device,
           "precision": precision, "compile": compile, "checkpoint_every": checkpoint_every,
           "evaluate": evaluate,
           "control": {"hint_channels": hint_channels({"hint": hint}, base_cfg),
                       "hidden": hidden, "zero": zero,
                       # a latent base: the hint (at the image's size) down to the latents'
                       "downscale": base_cfg.ae_factor if base_cfg.autoencoder else 1}}
    cfg = control_config(base_cfg, job)
    if backend.is_main:
        ckpt.prepare_run_dir(out, overwrite=overwrite)
        copy_base(base_run, out / BASE_DIR)
        if cfg.autoencoder:  # a latent base: the run decodes with its own copy, as latent runs
            latent.copy_autoencoder(base_run, out)
        runcfg.write_run_config(out, KIND, config_to_json(cfg), job)
    backend.barrier()
    return _run(out, job, resume=False, progress=progress, max_steps=max_steps, backend=backend)


def resume_controlnet(out: str | Path, *, progress: bool = False,
                      max_steps: int | None = None) -> Path:
    """Continue the interrupted ControlNet training in ``out`` from its checkpoint, exactly."""
    out = Path(out)
    kind, _, job = run_config(out)
    if kind != KIND:
        raise ckpt.CheckpointError(f"{out} is a {kind} run, not a ControlNet to resume; give "
                                   "the OUT directory of 'difflab train-controlnet'")
    ckpt.remove_stale_temps(out)
    backend = Backend.create(job["device"], job["precision"], job["compile"])
    return _run(out, job, resume=True, progress=progress, max_steps=max_steps, backend=backend)


def _run(out: Path, job: dict[str, Any], *, resume: bool, progress: bool,
         max_steps: int | None, backend: Backend) -> Path:
    base_cfg, base, schedule = load_base(out / BASE_DIR)
    cfg = control_config(base_cfg, job)
    from ..build.data import training_set

    _, cfg_data, conds = training_set(cfg)  # conditions with the data's number of classes
    train = image_split(cfg_data, "train")
    log = LossLog(cfg.log_every)
    with torch_threads(cfg.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the hint encoder's initial weights, then dropout
        control = control_for(base, job)
        hints = hints_of(job, cfg, train)  # (N, C_h, H, W)
        lr = LRSchedule(cfg.lr, cfg.steps, cfg.warmup, cfg.lr_schedule, cfg.lr_min_ratio)
        x0 = train.x  # (N, C, H, W); a latent base learns on latents (one posterior draw each)
        if cfg.autoencoder:
            x0 = latent.encoded_training_data(cfg, out, train.x, cfg.seed)  # (N, c, h, w)
        objective = ControlNetObjective(base, control, schedule, x0, hints,
                                        batch=cfg.batch, lr=lr, ema_decay=cfg.ema_decay,
                                        conds=conds, p_uncond=job["p_uncond"],
                                        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)
        objective = with_adam_beta2(objective, cfg)
        state = ckpt.load_checkpoint(out) if resume else None
        g = torch.Generator().manual_seed(cfg.seed)
        result = fit(objective, steps=cfg.steps, generator=g, backend=backend, log=log,
                     resume=state, max_steps=max_steps, checkpoint_every=cfg.checkpoint_every,
                     save=saver(out, KIND, log), grad_accum=cfg.grad_accum, progress=progress,
                     desc="controlnet")
        if not backend.is_main:
            return out
        from .plots import plot_loss

        plot_loss(log.rows, out / ckpt.LOSS_PNG, cfg.log_every,
                  title=f"{cfg.dataset}: ControlNet L_simple, {job['hint']} "
                        f"(step {result.step} of {cfg.steps})")
        if result.step < cfg.steps:
            return out
        extra = {"train_steps": result.step, "train_seconds": result.seconds,
                 "loss": result.loss, "hint": job["hint"], "base": job["base"]}
        if not job["evaluate"]:
            ckpt.write_json(out / ckpt.METRICS, extra)
            return out
        from ..nn.controlnet import controlled

        t0 = time.perf_counter()
        model = controlled(base, objective.ema.eval())
        metrics, samples, hints = evaluate_control(model, schedule, cfg, job, seed=cfg.seed,
                                                   out_dir=out)
        ckpt.write_json(out / ckpt.METRICS, {**metrics, **extra,
                                             "eval_seconds": time.perf_counter() - t0})
        save_hints_and_samples(hints, samples, out / "samples.png")
    return out


__all__ = ["HINT_KINDS", "KIND", "adherence", "evaluate_control", "hints_of", "resume_controlnet",
           "train_controlnet"]
