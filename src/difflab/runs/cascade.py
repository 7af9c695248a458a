"""Cascades of runs: a base run and super-resolution runs (``sr_low_res`` > 0) loaded as the
stages of :func:`difflab.pipelines.cascade.cascade` (Ho et al. 2021, "Cascaded Diffusion
Models"; Saharia et al. 2022, Imagen; Weng, "Scale up Generation Resolution and Quality"), and
the evaluation of a super-resolution run on its own.

Each stage samples with its own sampler, steps, spacing and guidance — by default its run's
``eval_*`` settings — and a super-resolution stage's z is augmented as its run was trained
(``sr_augment``) at the level s of its run (``sr_aug_level``) unless ``aug_level`` is given.

The FD of images at a size with no committed classifier (MNIST 16, a cascade's base) is taken
through the next size's classifier: images and real references are upsampled bilinearly to it
(:class:`LowResFD`), so the floor is that of real low-resolution images.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional

from ..build.conditioning import guided, sample_conditions
from ..build.data import image_shape, image_split, model_shape
from ..config import TrainConfig, image_size, spacing_for
from ..data.fd import DEFAULT_SIZE, FDEvaluator, feature_stats, frechet_distance_from_stats
from ..errors import ConfigError
from ..pipelines.cascade import TRUNCATABLE, Stage, cascade, condition, downsample, sample_until
from ..samplers import SAMPLERS, grids_of
from . import checkpoint as ckpt
from .draw import decoded, spacing_used
from .latent import load_codec
from .load import load_run, read_run_config

STAGE_OPTIONS = ("sampler", "steps", "eta", "spacing", "guidance", "threshold")


def check_chain(runs: Sequence[str | Path], cfgs: Sequence[TrainConfig]) -> None:
    """ConfigError (one line) unless ``runs`` make a cascade: a base run that is not
    super-resolution, then super-resolution runs whose low-resolution side and channels are the
    previous stage's output."""
    if len(runs) < 2:
        raise ConfigError("a cascade needs a base run and at least one super-resolution run "
                          "(BASE_RUN,SR_RUN[,SR_RUN2…])")
    if cfgs[0].sr_low_res:
        raise ConfigError(f"{runs[0]} is a super-resolution run; a cascade starts from a base "
                          "run")
    for k in range(1, len(runs)):
        cfg, prev = cfgs[k], cfgs[k - 1]
        if not cfg.sr_low_res:
            raise ConfigError(f"{runs[k]} is not a super-resolution run (its sr_low_res is 0); "
                              "every run after the first must be one")
        c_prev, side_prev = image_shape(prev)[0], image_size(prev)
        if (cfg.sr_low_res, image_shape(cfg)[0]) != (side_prev, c_prev):
            raise ConfigError(f"{runs[k]} super-resolves {image_shape(cfg)[0]}-channel "
                              f"{cfg.sr_low_res}×{cfg.sr_low_res} images, but {runs[k - 1]} "
                              f"makes {c_prev}-channel {side_prev}×{side_prev} ones")
        if cfg.sr_augment == "truncated" and prev.autoencoder:
            raise ConfigError(f"{runs[k]} is trained for truncated augmentation, which stops "
                              f"the chain of {runs[k - 1]} at a noisy x_s; that is a latent run")


def load_stage(run_dir: str | Path, n: int, *, device: str | None = None,
               sampler: str | None = None, steps: int | None = None, eta: float | None = None,
               spacing: str | None = None, guidance: float | None = None,
               threshold: str = "none", labels: Sequence[int] | None = None,
               prompt: str | None = None, aug_level: int | None = None
               ) -> tuple[TrainConfig, Stage]:
    """One run as a :class:`~difflab.pipelines.cascade.Stage` of ``n`` samples: its EMA model on
    ``device``, guided as ``guidance`` (default: the run's ``eval_guidance``) and ``threshold``
    say, with the run's conditions (``labels``/``prompt``, default every class in turn), sampled
    by ``sampler`` with ``steps``, ``eta``, ``spacing`` (default: the run's ``eval_*``); a
    super-resolution run's z augmented as it was trained at ``aug_level`` (default: the run's
    ``sr_aug_level``). A latent base's samples are decoded."""
    from .draw import model_device

    cfg, model, schedule = load_run(run_dir, device=device)
    codec = load_codec(run_dir, cfg, model_device(model))
    stage = stage_of(cfg, model, schedule, n, sampler=sampler, steps=steps, eta=eta,
                     spacing=spacing, guidance=guidance, threshold=threshold, labels=labels,
                     prompt=prompt, aug_level=aug_level, codec=codec, name=str(run_dir))
    return cfg, stage


def stage_of(cfg: TrainConfig, model, schedule, n: int, *, sampler: str | None = None,
             steps: int | None = None, eta: float | None = None, spacing: str | None = None,
             guidance: float | None = None, threshold: str = "none",
             labels: Sequence[int] | None = None, prompt: str | None = None,
             aug_level: int | None = None, codec=None, name: str = "this run") -> Stage:
    """The :class:`~difflab.pipelines.cascade.Stage` of a run's sampling ``model`` (see
    :func:`load_stage`); ``codec``: a latent run's, to decode its samples."""
    from .draw import model_device

    sampler = sampler or cfg.eval_sampler
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    steps = cfg.eval_steps if steps is None else steps
    if not 1 <= steps <= cfg.T:
        raise ConfigError(f"steps must lie in 1..T (T = {cfg.T}) for {name}, got {steps}")
    eta = (cfg.eval_eta if sampler == cfg.eval_sampler else 0.0) if eta is None else eta
    grids = grids_of(sampler)
    if grids and spacing not in (None, "auto", *grids):
        raise ConfigError(f"spacing {spacing!r} is not a grid of sampler {sampler} (of {name}); "
                          f"choose one of {', '.join(grids)}")
    spacing = spacing_for(cfg, sampler, spacing)
    level = cfg.sr_aug_level if aug_level is None else aug_level
    if cfg.sr_low_res and level and cfg.sr_augment not in ("gaussian", "truncated"):
        raise ConfigError(f"an augmentation level s > 0 needs a super-resolution run trained "
                          f"with gaussian or truncated augmentation; {name} has "
                          f"{cfg.sr_augment!r}")
    if not 0 <= level <= cfg.T:
        raise ConfigError(f"the augmentation level must lie in 0..T (T = {cfg.T}), got {level}")
    w = cfg.eval_guidance if guidance is None else guidance
    cond = {}
    if cfg.cond != "none":
        cond = sample_conditions(cfg, n, labels, prompt)[0]
    dev = model_device(model)
    cond = {k: v.to(dev) if hasattr(v, "to") else v for k, v in cond.items()}

    def model_for(extra: dict):
        return guided(model, schedule, cfg, {**cond, **extra}, w=w, threshold=threshold,
                      sampler=sampler, steps=steps, variance=cfg.variance)

    kwargs = {"eta": eta} if sampler == "ddim" else {}
    if sampler == "ddpm":
        kwargs["variance"] = cfg.variance
    fn = SAMPLERS[sampler]

    def sample(m, x_T: Tensor, s: int, g: torch.Generator) -> Tensor:
        if s:
            if sampler not in TRUNCATABLE:
                raise ConfigError(f"truncated augmentation stops the chain of {name} at "
                                  f"step {s}; sample it with one of {', '.join(TRUNCATABLE)}, "
                                  f"not {sampler}")
            return sample_until(fn, m, schedule, x_T, steps=steps, s=s,
                                spacing=spacing_used(sampler, spacing), generator=g, **kwargs)
        extra = {"spacing": spacing} if spacing is not None else {}
        x = fn(m, schedule, x_T, steps=steps, generator=g, **extra, **kwargs)
        return decoded(codec.decode, x) if codec is not None else x

    return Stage(model=model_for, sample=sample, schedule=schedule, shape=model_shape(cfg),
                 augment=cfg.sr_augment if cfg.sr_low_res else "none", aug_level=level,
                 device=dev, settings={"sampler": sampler, "steps": steps, "eta": eta,
                                       "spacing": spacing_used(sampler, spacing),
                                       "guidance": w})


def load_cascade(runs: Sequence[str | Path], n: int, *, device: str | None = None,
                 aug_level: int | Sequence[int | None] | None = None,
                 stage_options: Sequence[dict] | None = None,
                 labels: Sequence[int] | None = None, prompt: str | None = None
                 ) -> tuple[list[TrainConfig], list[Stage]]:
    """The configs and stages of the cascade ``runs`` (base first), checked
    (:func:`check_chain`). ``aug_level``: s for every super-resolution stage, or one per
    super-resolution stage (None: its run's ``sr_aug_level``). ``stage_options``: one dict per
    run of :func:`load_stage`'s keywords ``sampler``, ``steps``, ``eta``, ``spacing``,
    ``guidance``, ``threshold``. ``labels``/``prompt``: the conditions shared by every stage."""
    for run in runs:
        if not (Path(run) / ckpt.CONFIG).is_file():
            raise ckpt.CheckpointError(f"{run} is not a run directory (no {ckpt.CONFIG})")
    cfgs = [read_run_config(run) for run in runs]
    check_chain(runs, cfgs)
    levels = list(aug_level) if isinstance(aug_level, Sequence) else [aug_level] * (len(runs) - 1)
    if len(levels) != len(runs) - 1:
        raise ConfigError(f"give one augmentation level per super-resolution stage "
                          f"({len(runs) - 1}), got {len(levels)}")
    options = list(stage_options) if stage_options is not None else [{}] * len(runs)
    if len(options) != len(runs):
        raise ConfigError(f"give stage options for each of the {len(runs)} stages")
    stages = []
    for k, run in enumerate(runs):
        unknown = set(options[k]) - set(STAGE_OPTIONS)
        if unknown:
            raise ConfigError(f"unknown stage options {sorted(unknown)}")
        cfg, stage = load_stage(run, n, device=device, labels=labels, prompt=prompt,
                                aug_level=levels[k - 1] if k else None, **options[k])
        cfgs[k] = cfg
        stages.append(stage)
    return cfgs, stages


def sample_cascade(runs: Sequence[str | Path], n: int, *, seed: int = 0,
                   device: str | None = None, aug_level: int | Sequence[int | None] | None = None,
                   stage_options: Sequence[dict] | None = None,
                   labels: Sequence[int] | None = None, prompt: str | None = None
                   ) -> list[Tensor]:
    """``n`` images from the cascade ``runs`` (base first; see :func:`load_cascade`), seeded:
    every stage's output, the last the cascade's (n, C, H, W) in [-1, 1]."""
    stages = load_cascade(runs, n, device=device, aug_level=aug_level,
                          stage_options=stage_options, labels=labels, prompt=prompt)[1]
    return cascade(stages, n, torch.Generator().manual_seed(seed))


# --- FD at a size without a classifier ------------------------------------------------------------
class LowResFD:
    """FD (and accuracy) of images at ``size`` through the committed classifier of ``dataset``
    at its own size: images, and the real splits average-pooled to ``size``, are upsampled
    bilinearly to the classifier's size; the floor is real low-resolution test vs train."""

    def __init__(self, dataset: str, size: int):
        self.inner = FDEvaluator.for_dataset(dataset, DEFAULT_SIZE[dataset])
        self.size, self.big = size, DEFAULT_SIZE[dataset]
        self.classifier = self.inner.classifier
        self._stats: dict[str, tuple[Tensor, Tensor]] = {}

    def up(self, x: Tensor) -> Tensor:
        x = x.float().clamp(-1.0, 1.0)
        return functional.interpolate(x, size=self.big, mode="bilinear", align_corners=False)

    def _ref(self, split: str) -> tuple[Tensor, Tensor]:
        if split not in self._stats:
            real = downsample(self.inner.real(split).x, self.size)
            self._stats[split] = feature_stats(self.inner.features(self.up(real)))
        return self._stats[split]

    def fd(self, samples: Tensor) -> float:
        stats = feature_stats(self.inner.features(self.up(samples)))
        return frechet_distance_from_stats(*stats, *self._ref("train"))

    def floor(self) -> float:
        return frechet_distance_from_stats(*self._ref("test"), *self._ref("train"))

    def accuracy(self, samples: Tensor, labels: Tensor) -> float:
        return self.inner.accuracy(self.up(samples), labels)


def fd_evaluator(dataset: str, size: int):
    """The FD evaluator of images of ``dataset`` at ``size``: the committed classifier's
    (:class:`~difflab.data.fd.FDEvaluator`), or below its size a :class:`LowResFD`."""
    if (dataset, size) == ("mnist", 16):  # the one size below a classifier's (checks.py)
        return LowResFD(dataset, size)
    return FDEvaluator.for_dataset(dataset, size)


def fd_or_none(cfg: TrainConfig):
    """:func:`fd_evaluator` of a run's images, or None where no classifier fits (folders, a
    size without a committed classifier)."""
    if cfg.dataset not in DEFAULT_SIZE:
        return None
    try:
        return fd_evaluator(cfg.dataset, image_size(cfg))
    except (ValueError, OSError):
        return None


# --- evaluation of a super-resolution run ---------------------------------------------------------
def psnr(x: Tensor, ref: Tensor) -> Tensor:
    """PSNR in dB of images x against ref (n, C, H, W) in [-1, 1] (peak-to-peak 2): (n,)."""
    mse = (x.clamp(-1, 1) - ref).double().square().flatten(1).mean(dim=1).clamp(min=1e-12)
    return 10 * torch.log10(4.0 / mse)


def super_resolve(stage: Stage, z: Tensor, generator: torch.Generator) -> Tensor:
    """One super-resolution ``stage`` on given low-resolution images z (n, C, h, w), augmented
    as at sampling (truncated runs: z forward-diffused to s, what the base's x_s would be for a
    perfect base). Returns (n, C, H, W) clipped to [-1, 1]."""
    if stage.augment == "truncated":
        stage = dataclasses.replace(stage, augment="gaussian")
    extra = condition(stage, z, generator)
    x_T = torch.randn((z.shape[0], *stage.shape), generator=generator).to(stage.device)
    with torch.inference_mode():
        return stage.sample(stage.model(extra), x_T, 0, generator).cpu().clamp(-1.0, 1.0)


def evaluate_super_resolution(sr_run: str | Path, *, base_run: str | Path | None = None,
                              n: int | None = None, seed: int = 0, device: str | None = None,
                              aug_level: int | None = None,
                              stage_options: Sequence[dict] | None = None) -> tuple[dict, Tensor]:
    """FD and PSNR of a super-resolution run on its own: the test split's images
    average-pooled to ``sr_low_res`` and super-resolved (``fd_real``, ``psnr_real`` against the
    real images, beside ``psnr_bilinear``, the bilinear upsampling's; ``fd_floor``); with
    ``base_run`` also the FD of the cascade base → this run (``fd_base``, and ``fd_gap`` =
    fd_base − fd_real, the cost of conditioning on samples rather than real images) and of the
    base's own samples (``fd_base_stage``). ``n``: images (default: the run's ``n_eval``, at
    most the test split). Returns (metrics, the super-resolved real test images)."""
    sr_cfg = read_run_config(sr_run)
    if not sr_cfg.sr_low_res:
        raise ConfigError(f"{sr_run} is not a super-resolution run (sr_low_res is 0)")
    split = image_split(sr_cfg, "test")
    test = split.x  # (N, C, H, W)
    n = min(sr_cfg.n_eval if n is None else n, len(test))
    if n < 2:
        raise ConfigError(f"FD needs at least 2 images, got n = {n}")
    opts = list(stage_options) if stage_options is not None else [{}, {}]
    cfg, stage = load_stage(sr_run, n, device=device, aug_level=aug_level,
                            labels=split_labels(sr_cfg, split.y, n), **opts[-1])
    metrics = evaluate_stage(cfg, stage, test[:n], seed)
    if base_run is not None:
        cfgs, stages = load_cascade([base_run, sr_run], n, device=device, aug_level=aug_level,
                                    stage_options=opts if len(opts) == 2 else None)
        outs = cascade(stages, n, torch.Generator().manual_seed(seed))
        fd_base, fd = fd_or_none(cfgs[0]), fd_or_none(cfg)
        if fd is not None:
            metrics["fd_base"] = fd.fd(outs[-1])
            metrics["fd_gap"] = metrics["fd_base"] - metrics["fd_real"]
        if fd_base is not None:
            metrics["fd_base_stage"] = fd_base.fd(outs[0].clamp(-1, 1))
        metrics["base_run"] = str(base_run)
    return metrics, metrics.pop("_images")


def split_labels(cfg: TrainConfig, y: Tensor, n: int) -> list[int] | None:
    """The classes of the first ``n`` test images, for a conditional run to super-resolve them
    under their own labels (or captions of them); None for unconditional and shapes runs
    (whose text conditions are the test split's own captions in order)."""
    if cfg.cond == "none" or cfg.dataset == "shapes":
        return None
    return y[:n].tolist()


def evaluate_stage(cfg: TrainConfig, stage: Stage, hi: Tensor, seed: int) -> dict:
    """The metrics of :func:`evaluate_super_resolution` on real images ``hi`` (n, C, H, W)."""
    z = downsample(hi, cfg.sr_low_res)  # (n, C, h, w)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    x = super_resolve(stage, z, g)
    seconds = time.perf_counter() - t0
    bilinear = functional.interpolate(z, size=hi.shape[-2:], mode="bilinear",
                                      align_corners=False)
    metrics = {"psnr_real": psnr(x, hi).mean().item(),
               "psnr_bilinear": psnr(bilinear, hi).mean().item(), "n_eval": len(hi),
               **stage.settings, "aug_level": stage.aug_level, "sr_augment": cfg.sr_augment,
               "sample_seconds": seconds, "sample_seed": seed, "_images": x}
    fd = fd_or_none(cfg)
    if fd is not None:
        metrics.update(fd_real=fd.fd(x), fd_floor=fd.floor())
    return metrics


def evaluate_super_resolution_after(cfg: TrainConfig, ema, schedule, run_dir: Path,
                                    extra: dict) -> None:
    """After training a super-resolution run: metrics.json (``fd_real``, ``psnr_real``, …: the
    test split's low-resolution images super-resolved with the run's eval settings) and
    samples.png (rows of four: z upsampled, the super-resolved image, the real one, …)."""
    from . import plots
    from .load import sampling_model

    split = image_split(cfg, "test")
    test = split.x
    n = min(cfg.n_eval, len(test))
    model = sampling_model(cfg, ema, schedule)
    stage = stage_of(cfg, model, schedule, n, labels=split_labels(cfg, split.y, n))
    metrics = evaluate_stage(cfg, stage, test[:n], cfg.seed)
    images = metrics.pop("_images")
    ckpt.write_json(run_dir / ckpt.METRICS, {**metrics, "sampler": cfg.eval_sampler,
                                             "steps": cfg.eval_steps, **extra})
    k = min(n, 32)
    z = functional.interpolate(downsample(test[:k], cfg.sr_low_res), size=test.shape[-2:],
                               mode="nearest")
    grid = torch.stack([z, images[:k], test[:k]], dim=1).flatten(0, 1)  # (3k, C, H, W)
    plots.save_image_grid(grid, run_dir / "samples.png", nrow=6)


__all__ = ["LowResFD", "check_chain", "evaluate_super_resolution", "fd_evaluator", "load_cascade",
           "load_stage", "psnr", "sample_cascade", "stage_of", "super_resolve"]
