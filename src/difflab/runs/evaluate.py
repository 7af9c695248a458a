"""Evaluation of a trained model: SWD to held-out 2-D data beside its two-sample floor, or
Fréchet distance in the committed classifier's feature space beside the floor of real held-out
images (:mod:`difflab.data.fd`); and the metrics and pictures a finished run writes.

FD depends on the sample sizes (it is biased upwards by ≈ tr(Σ)/n), so compare ``fd`` with
``fd_floor`` only when ``n_eval`` equals the test split's size (180 digits, 500 MNIST): the floor
is the FD of those real test images to the train split, what a perfect generator would score
with as many samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from ..build.data import image_split, model_shape
from ..config import TrainConfig, image_size, is_image, spacing_for
from ..data import toy2d
from ..data.fd import DEFAULT_SIZE
from ..data.shapes_eval import prompt_accuracy
from ..metrics import swd, swd_floor
from ..schedules import Schedule
from . import checkpoint as ckpt
from .draw import Frames, draw, levels_used, time_grid

# --- evaluation ---
# The SWD of two independent 10,000-point swiss rolls ranges over 0.010-0.025 between seeds
# (mass fluctuates along the arms), so the floor is the mean over several pairs.
FLOOR_REPEATS = 5


@dataclass
class Evaluation:
    metrics: dict
    samples: Tensor  # (n, 2)
    held_out: Tensor  # (n, 2)
    snapshots: list[tuple[str, Tensor]]  # (label, x[:k]) from x_T down to x_0


def evaluate(model: Callable, schedule: Schedule, dataset: str, *, sampler: str = "ddim",
             steps: int = 50, eta: float = 0.0, spacing: str | None = None,
             n: int = 10_000, seed: int = 0, data_seed: int = 0,
             variance: str | None = None, frames: Frames | None = None,
             progress: bool = False, levels: Sequence[float] | None = None) -> Evaluation:
    """Sample ``n`` points and measure SWD to ``n`` held-out points, beside the two-sample floor.

    The held-out set is the test half of ``toy2d.train_test(dataset, ·, n, data_seed)``, which
    no training run has seen; the floor is the mean SWD of ``FLOOR_REPEATS`` pairs of fresh
    samples of the same size. ``variance``, ``frames`` and ``levels`` (a consistency sample's
    re-noising levels): see :func:`difflab.runs.draw.draw`.
    """
    keep = min(n, 2000)
    x0, snapshots, seconds = draw(model, schedule, (n, 2), sampler=sampler, steps=steps,
                                  eta=eta, spacing=spacing, seed=seed, keep=keep,
                                  variance=variance, frames=frames, progress=progress,
                                  levels=levels)  # (n, 2); Weng Fig. 3, bottom row
    held_out = toy2d.train_test(dataset, 1, n, data_seed)[1]  # (n, 2)
    value = swd(x0, held_out)
    floor = swd_floor(lambda m, s: toy2d.sample(dataset, m, s), n, repeats=FLOOR_REPEATS)
    metrics = {"swd": value, "swd_floor": floor, "swd_ratio": value / floor, "sampler": sampler,
               "steps": steps, "eta": eta, **time_grid(sampler, steps, spacing), "n_eval": n,
               "sample_seed": seed, "sample_seconds": seconds}
    if sampler == "consistency":
        metrics["levels"] = levels_used(model, schedule, sampler, steps, levels)
    return Evaluation(metrics, x0, held_out, snapshots)


def evaluate_images(model: Callable, schedule: Schedule, cfg: TrainConfig, *,
                    sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
                    spacing: str | None = None, n: int = 180, seed: int = 0,
                    n_strip: int = 8, variance: str | None = None,
                    frames: Frames | None = None, progress: bool = False,
                    labels: Tensor | None = None,
                    decode: Callable[[Tensor], Tensor] | None = None,
                    levels: Sequence[float] | None = None):
    """Sample ``n`` images; FD to the real train split and its floor (real test vs train).

    Returns (metrics, samples (n, C, H, W), snapshots [(label, x (n_strip, C, H, W))] from x_T
    to x_0) — the snapshots are the first ``n_strip`` images along the reverse process.
    ``variance`` (ddpm's Σ_θ) and ``frames`` (an animation's): see :func:`difflab.draw.draw`.
    ``labels`` (n,): the classes the samples should show (a conditional or guided ``model``);
    then ``accuracy`` is the fraction the committed classifier assigns to them; for a
    text-conditional shapes run they are the prompts' attributes (n, A), and
    ``prompt_accuracy`` is the fraction of samples that show all their prompt says, with its
    parts ``prompt_count``, ``prompt_shape``, … (:mod:`difflab.data.shapes_eval`). ``decode``: a
    latent run's decoder; ``model`` then samples latents of the run's :func:`model_shape`.
    ``levels``: a consistency sample's re-noising levels (:func:`difflab.runs.draw.draw`).
    """
    if n < 2:
        raise ValueError(f"FD needs at least 2 samples, got n = {n}")
    x0, snapshots, seconds = draw(model, schedule, (n, *model_shape(cfg)), sampler=sampler,
                                  steps=steps, eta=eta, spacing=spacing, seed=seed,
                                  keep=n_strip, variance=variance, frames=frames,
                                  progress=progress, decode=decode,
                                  levels=levels)  # (n, C, H, W)
    x0 = x0.clamp(-1.0, 1.0)  # (n, C, H, W), as an 8-bit image would be
    snapshots[-1] = ("x_0", x0[:n_strip])
    metrics = {"sampler": sampler, "steps": steps, "eta": eta,
               **time_grid(sampler, steps, spacing), "n_eval": n, "sample_seed": seed,
               "sample_seconds": seconds}
    if sampler == "consistency":
        metrics["levels"] = levels_used(model, schedule, sampler, steps, levels)
    if cfg.dataset in DEFAULT_SIZE:  # a committed classifier exists (not for folders)
        from .cascade import fd_evaluator  # MNIST 16 (a cascade's base): through the 32's

        fd = fd_evaluator(cfg.dataset, image_size(cfg))
        n_test = len(image_split(cfg, "test"))
        metrics.update(fd=fd.fd(x0), fd_floor=fd.floor(), fd_n=n, fd_floor_n=n_test)
        metrics["fd_ratio"] = metrics["fd"] / metrics["fd_floor"]
        if labels is not None and labels.ndim == 2:  # shapes: the attributes of the prompts
            right = prompt_accuracy(x0, labels, fd.classifier)
            metrics["prompt_accuracy"] = right.pop("all")
            metrics.update({f"prompt_{k}": v for k, v in right.items()})
        elif labels is not None:
            metrics["accuracy"] = fd.accuracy(x0, labels)
    return metrics, x0, snapshots


GIF_KEEP = 64  # images in the reverse-process GIF of an image run (2-D runs: every plotted point)


def evaluate_after(cfg: TrainConfig, ema: nn.Module, schedule: Schedule, run_dir: Path,
                   extra: dict, decode: Callable[[Tensor], Tensor] | None = None) -> None:
    """metrics.json (SWD or FD and its floor, plus ``extra``), samples.png, and the reverse
    process as reverse_process.png (a strip) and reverse_process.gif. ``decode``: a latent
    run's decoder (the pictures show decoded latents)."""
    from . import plots

    if cfg.sr_low_res:  # a cascade's super-resolution stage: FD and PSNR of the test split's
        from .cascade import evaluate_super_resolution_after  # low-res images super-resolved

        evaluate_super_resolution_after(cfg, ema, schedule, run_dir, extra)
        return
    kw = dict(sampler=cfg.eval_sampler, steps=cfg.eval_steps, eta=cfg.eval_eta,
              spacing=spacing_for(cfg, cfg.eval_sampler), n=cfg.n_eval, seed=cfg.seed,
              variance=cfg.variance)
    if is_image(cfg.dataset):
        from ..build.conditioning import guided, sample_conditions

        model, labels = ema, None
        if cfg.cond != "none":  # every class in turn, guided with eval_guidance
            cond, labels = sample_conditions(cfg, cfg.n_eval)
            model = guided(ema, schedule, cfg, cond, w=cfg.eval_guidance,
                           sampler=cfg.eval_sampler, steps=cfg.eval_steps,
                           variance=cfg.variance)
            extra = {**extra, "guidance": cfg.eval_guidance}
        frames = Frames(keep=min(cfg.n_eval, GIF_KEEP))
        metrics, samples, snapshots = evaluate_images(model, schedule, cfg, frames=frames,
                                                      labels=labels, decode=decode, **kw)
        ckpt.write_json(run_dir / ckpt.METRICS, {**metrics, **extra})
        plots.save_image_grid(samples[:100], run_dir / "samples.png")
        plots.plot_image_reverse_process(snapshots, run_dir / "reverse_process.png")
    else:
        frames = Frames(keep=min(cfg.n_eval, 2000))
        result = evaluate(ema, schedule, cfg.dataset, data_seed=cfg.seed, frames=frames, **kw)
        ckpt.write_json(run_dir / ckpt.METRICS, {**result.metrics, **extra})
        plots.plot_samples(result.samples, result.held_out, run_dir / "samples.png",
                           title=f"{cfg.dataset}: SWD {result.metrics['swd']:.4f} "
                                 f"(floor {result.metrics['swd_floor']:.4f})")
        plots.plot_reverse_process(result.snapshots, run_dir / "reverse_process.png")
    plots.save_reverse_process_gif(frames.frames, run_dir / "reverse_process.gif")
