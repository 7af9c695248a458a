"""``difflab train`` as a function: a run directory around the one training loop.

:func:`train` builds the run's objective from the registry (:data:`difflab.training.OBJECTIVES`,
by the config's ``method``: diffusion with L_simple or L_hybrid, or consistency training), runs
:func:`difflab.training.fit` on the backend the config asks for (device, precision, compile,
processes), writes atomic checkpoints every ``checkpoint_every`` steps and resumes from them
exactly, then evaluates the EMA model and draws the pictures (on the main process only).
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import torch

from ..build.data import training_set
from ..build.model import build_schedule
from ..build.score import resolve_ladder
from ..config import SCORE_METHODS, TrainConfig
from ..errors import ConfigError
from ..training import OBJECTIVES, fit
from ..training.backend import Backend, torch_threads
from ..training.loggers import check_log, open_log
from ..training.losslog import LossLog
from . import checkpoint as ckpt
from . import latent
from . import run_config as runcfg
from .evaluate import evaluate_after as write_evaluation
from .load import check_fits, config_to_json, sampling_model
from .lock import run_lock

LOSS_NAMES = {"diffusion": "L_{loss}", "consistency-training": "L_CT",
              "autoencoder": "autoencoder loss", "dsm": "L_DSM (λ = σ²)",
              "ssm": "L_SSM-VR (λ = σ²)", "clip": "InfoNCE",
              "unclip-prior": "prior: x0 MSE", "unclip-decoder": "decoder: L_simple"}
UNCLIP_STAGES = ("unclip-prior", "unclip-decoder")  # runs with a frozen CLIP in clip/


def open_run_dir(run_dir: Path, cfg: TrainConfig, kind: str, *, resume: bool, overwrite: bool,
                 job: dict | None = None) -> None:
    """Check the run directory to resume, or create a fresh one (refusing to replace a run
    without ``overwrite``) and write its config.json."""
    if resume:
        ckpt.check_run_dir(run_dir)
        found = runcfg.read_run_config(run_dir)[0]
        if found != kind:  # e.g. a ControlNet: resuming it here would rewrite its config.json
            raise ckpt.CheckpointError(f"{run_dir} is a {found} run, not a {kind} run of "
                                       "'difflab train'; resume it with the command that "
                                       "wrote it")
        ckpt.remove_stale_temps(run_dir)  # of writes a killed run left half done
    else:
        ckpt.prepare_run_dir(run_dir, overwrite=overwrite)
        runcfg.write_run_config(run_dir, kind, config_to_json(cfg), job)


def default_run_dir(cfg: TrainConfig) -> Path:
    """runs/<dataset>-<YYYYmmdd-HHMMSS>, with -2, -3, … if that exists already."""
    base = Path("runs") / f"{cfg.dataset}-{datetime.now():%Y%m%d-%H%M%S}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def saver(run_dir: Path, kind: str, log: LossLog):
    """The loop's ``save``: the checkpoint and weight files, then loss.csv (an export)."""

    def save(state) -> None:
        ckpt.save_checkpoint(run_dir, state, kind)
        ckpt.atomic_write_bytes(run_dir / ckpt.LOSS_CSV, log.csv().encode())

    return save


def train(
    cfg: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    max_steps: int | None = None,
    evaluate_after: bool = True,
) -> Path:
    """Train ``cfg`` into ``run_dir`` (default: a fresh ``runs/…``); return the run directory.

    ``resume``: continue the run in ``run_dir`` from its last checkpoint (``cfg`` must be the
    run's config, up to ``steps``, the evaluation settings and where it runs). ``max_steps``:
    stop after that many total updates, write a checkpoint and return without evaluating — an
    interruption. ``progress``: tqdm bar on stderr (default: only when stderr is a terminal).
    """
    if progress is None:
        progress = sys.stderr.isatty()
    if cfg.method not in OBJECTIVES:
        raise ConfigError(f"method {cfg.method!r} runs are written by 'difflab distill', not "
                         "'difflab train'")
    if run_dir is None:
        if resume:
            raise ConfigError("resume needs the run directory")
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    run_dir = Path(run_dir)
    check_log(cfg.log)  # e.g. tensorboard missing: before anything is written
    backend = Backend.create(cfg.device, cfg.precision, cfg.compile)
    # (N, 2) or (N, C, H, W); bad data fails before any writing
    x_train, cfg, conds = training_set(cfg)
    if cfg.method in SCORE_METHODS:  # σ_1 and L from the data (kept in config.json)
        cfg = resolve_ladder(cfg, x_train)
    codec, ae_weights = None, None
    if cfg.autoencoder and resume:  # a latent run: its own copy of the autoencoder
        codec = latent.load_codec(run_dir, cfg)
    elif cfg.autoencoder:
        cfg, ae_weights = latent.attach(cfg)
        codec = latent.codec_from(cfg, ae_weights)
    if cfg.method in UNCLIP_STAGES:  # the frozen CLIP: its copy in the run, or the run it names
        from .clip import CLIP_DIR, attach_clip, load_clip

        if resume:
            codec = load_clip(run_dir / CLIP_DIR)[1]
        else:
            cfg, codec = attach_clip(cfg)
        codec.to(backend.device)
    if backend.is_main and resume:  # refusals before the lock: none in a refused directory
        ckpt.check_run_dir(run_dir)
    elif backend.is_main:
        if cfg.ct_init_from:  # a warm start that cannot load: refused before the directory
            ct_init_weights(cfg)
        ckpt.check_new_run_dir(run_dir, overwrite)
    with run_lock(run_dir, backend.is_main):  # one trainer per run directory (runs/lock.py)
        return session(cfg, run_dir, backend, x_train, conds, codec, ae_weights, resume=resume,
                       overwrite=overwrite, progress=progress, max_steps=max_steps,
                       evaluate_after=evaluate_after)


def ct_init_weights(cfg: TrainConfig) -> dict:
    """The EMA weights of ``cfg.ct_init_from``, consistency training's warm start; ConfigError
    (one line) unless it is a diffusion run with a fixed variance whose network is the one
    ``cfg`` builds."""
    from .load import misfit, read_run_config

    init_cfg = read_run_config(cfg.ct_init_from)
    if init_cfg.method != "diffusion" or init_cfg.variance == "learned":
        raise ConfigError(f"ct_init_from needs a diffusion run with a fixed variance; "
                          f"{cfg.ct_init_from} is not one")
    init = ckpt.load_weights(cfg.ct_init_from, "ema")
    detail = misfit(cfg, init)
    if detail is not None:
        raise ConfigError(f"ct_init_from: the network of {cfg.ct_init_from} is not the one this "
                          f"run builds ({detail}); give the same model fields (model, hidden, "
                          "model_channels, …) as that run")
    return init


def session(cfg: TrainConfig, run_dir: Path, backend: Backend, x_train, conds, codec,
            ae_weights, *, resume: bool, overwrite: bool, progress: bool,
            max_steps: int | None, evaluate_after: bool) -> Path:
    """The part of :func:`train` that writes ``run_dir`` (holding its lock)."""
    kind = cfg.method
    if backend.is_main:
        open_run_dir(run_dir, cfg, kind, resume=resume, overwrite=overwrite)
        if ae_weights is not None:
            latent.write_autoencoder(run_dir, ae_weights)
        if kind in UNCLIP_STAGES and not resume:
            from .clip import copy_clip

            copy_clip(cfg.clip, run_dir)
    backend.barrier()

    # torch's global RNG (dropout draws from it) is seeded here and saved in every checkpoint,
    # inside fork_rng so that the caller's global RNG is left as it was
    with torch_threads(cfg.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        schedule = build_schedule(cfg)
        if resume and (run_dir / ckpt.weight_file("denoiser", False)).is_file():
            # a config.json edited to ask for another (an enormous) network: refused unbuilt
            check_fits(cfg, ckpt.load_weights(run_dir, "model"), run_dir)
        objective = OBJECTIVES[cfg.method](cfg, schedule, x_train, conds, backend, codec=codec)
        if cfg.ct_init_from and not resume:  # CT's warm start: F_θ and θ⁻ ← the run's EMA net
            init = ct_init_weights(cfg)
            for module in objective.modules().values():
                module.load_state_dict(init)
        g = torch.Generator().manual_seed(cfg.seed)
        log = LossLog(cfg.log_every)
        state = ckpt.load_checkpoint(run_dir) if resume else None
        if resume and backend.is_main:  # e.g. more steps
            runcfg.write_run_config(run_dir, kind, config_to_json(cfg))
        logger = (open_log(cfg.log, run_dir, log, state.step if state is not None else None)
                  if backend.is_main else None)  # --log tensorboard: rank 0 alone writes
        try:
            result = fit(objective, steps=cfg.steps, generator=g, backend=backend, log=log,
                         resume=state, max_steps=max_steps,
                         checkpoint_every=cfg.checkpoint_every, save=saver(run_dir, kind, log),
                         grad_accum=cfg.grad_accum, progress=progress,
                         skip_nonfinite=cfg.skip_nonfinite, logger=logger)
        except BaseException:  # a NaN stop, a signal, a lost process: flush what was logged
            if logger is not None:
                logger.close()
            raise
        if not backend.is_main:
            return run_dir
        from .plots import plot_loss

        name = LOSS_NAMES.get(kind, kind).format(loss=cfg.loss)
        plot_loss(log.rows, run_dir / ckpt.LOSS_PNG, cfg.log_every,
                  title=f"{cfg.dataset}: {name} (step {result.step} of {cfg.steps})")
        if evaluate_after and result.step >= cfg.steps:
            ema = objective.modules()["ema"]
            ema.eval()
            extra = {"train_seconds": result.seconds, "train_steps": result.step,
                     "loss": result.loss, **objective.metrics()}
            if kind == "autoencoder":
                from .autoencoder import evaluate_after as evaluate_autoencoder

                evaluate_autoencoder(cfg, ema, run_dir, extra)
            elif kind == "clip":
                from .clip import evaluate_after as evaluate_clip

                evaluate_clip(cfg, ema, run_dir, extra)
            elif kind in UNCLIP_STAGES:
                from .unclip import evaluate_after as evaluate_unclip

                evaluate_unclip(cfg, kind, sampling_model(cfg, ema, schedule), codec, schedule,
                                run_dir, extra)
            else:
                write_evaluation(cfg, sampling_model(cfg, ema, schedule), schedule, run_dir,
                                 extra, decode=codec.decode if codec is not None else None)
            if logger is not None:  # the evaluation's metrics and pictures
                logger.evaluation(run_dir, result.step)
        if logger is not None:
            logger.close()
    return run_dir
