"""The training loop: L_simple (Weng eq. 19; Ho et al. 2020, Algorithm 1) or L_hybrid (Weng
eq. 23 and the text after it; Nichol & Dhariwal 2021) with AdamW, an EMA of the weights, gradient
clipping, periodic atomic checkpoints and exact resume; then evaluation and pictures.

Exact resume: every random number of the loop (batch indices, t, ε) comes from ONE dedicated
``torch.Generator``, whose state is saved with the weights, the EMA, the AdamW state, the
importance sampler's history of L_t and the loss log. The learning rate and the EMA decay are
functions of the step number, not of stateful objects. So a run stopped at step k and resumed
ends bit-identical (on CPU) to an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from . import checkpoint as ckpt
from .. import schedules
from ..config import TrainConfig, int_list, is_image, spacing_for
from ..data import toy2d
from .draw import Frames, draw, snapshot_marks  # noqa: F401 - draw and snapshot_marks re-exported
from ..losses import l_simple
from ..training.losslog import LossLog
from ..metrics import swd, swd_floor
from ..nn.mlp import MLPDenoiser
from ..parameterization import LearnedVariance
from ..schedules import Schedule
from ..vlb import ImportanceSampler, l_hybrid

if TYPE_CHECKING:
    from ..build.conditioning import TrainConditions


# --- pieces ---
def build_schedule(cfg: TrainConfig) -> Schedule:
    return schedules.linear(cfg.T) if cfg.schedule == "linear" else schedules.cosine(cfg.T)


def build_model(cfg: TrainConfig) -> nn.Module:
    """The ε-network — the MLP for 2-D data, the U-Net for images — initialised from
    ``cfg.seed`` without touching torch's global RNG. With ``variance = "learned"`` the network
    outputs [ε̂, v_raw] (twice the channels) and comes wrapped in
    :class:`~difflab.parameterization.LearnedVariance`, so the model returns (ε̂, v) — Weng
    eq. (23)."""
    learned = cfg.variance == "learned"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if not is_image(cfg.dataset):
            net = MLPDenoiser(dim=2, hidden=cfg.hidden, depth=cfg.depth, t_dim=cfg.t_dim,
                              out_dim=4 if learned else 2)
        else:
            from ..image_eval import image_shape
            from ..nn.unet import UNet, UNetConfig

            mult = int_list(cfg.channel_mult)
            widths = [cfg.model_channels * m for m in mult]
            net = UNet(UNetConfig(
                in_channels=image_shape(cfg)[0], model_channels=cfg.model_channels,
                channel_mult=mult, num_res_blocks=cfg.num_res_blocks,
                attention_resolutions=int_list(cfg.attention), dropout=cfg.dropout,
                groups=math.gcd(32, *widths), learn_sigma=learned,
                num_classes=cfg.num_classes if cfg.cond == "class" else 0,
                context_dim=_text_dim() if cfg.cond == "text" else 0))
    return LearnedVariance(net) if learned else net


def _text_dim() -> int:
    from ..nn.text_encoder import MiniLMConfig

    return MiniLMConfig().dim  # D of the frozen text encoder's tokens


def objective(cfg: TrainConfig, model: nn.Module, schedule: Schedule, x0: Tensor,
              g: torch.Generator, t_sampler: ImportanceSampler | None = None,
              levels: int | None = None, **cond) -> Tensor:
    """The run's training loss on the batch x0 (B, …): L_simple (Weng eq. 19) or
    L_hybrid = L_simple + λ L_vlb with the stop-gradient on μ_θ (Weng eq. 23; Nichol & Dhariwal
    2021, eq. 16), t uniform or drawn by ``t_sampler``. ``levels``: K of K-level image data for
    the bound's decoder term L_0, None for continuous (2-D) data. ``cond``: the batch's
    conditions (see :mod:`difflab.conditioning`). Returns a scalar."""
    if cfg.loss == "hybrid":
        return l_hybrid(model, schedule, x0, cfg.hybrid_lambda, generator=g, sampler=t_sampler,
                        levels=levels, **cond)
    return l_simple(model, schedule, x0, generator=g, **cond)


def data_levels(cfg: TrainConfig) -> int | None:
    """K, the grey levels of the run's image data (digits 17, MNIST and folders 256) for the
    discretised decoder L_0; None for 2-D data, which is continuous."""
    if not is_image(cfg.dataset):
        return None
    from ..data import images

    own = {"digits": images.DIGITS_LEVELS, "mnist": images.MNIST_LEVELS}
    return own.get(cfg.dataset, 256)  # folders: 8-bit images


def training_data(cfg: TrainConfig) -> Tensor:
    """The fixed training set: (n_train, 2) toy points, or the image train split (N, C, H, W).
    The one place that dispatches on the kind of data."""
    if is_image(cfg.dataset):
        from ..image_eval import image_split

        return image_split(cfg, "train").x
    return toy2d.sample(cfg.dataset, cfg.n_train, cfg.seed)


def training_set(cfg: TrainConfig) -> tuple[Tensor, TrainConfig, TrainConditions | None]:
    """The fixed training set (see :func:`training_data`), the config with the data's number of
    classes filled in (class-conditional runs), and the set's conditions (None if
    unconditional)."""
    if cfg.cond == "none":
        return training_data(cfg), cfg, None
    from ..build.conditioning import resolve, train_conditions
    from ..image_eval import image_split

    data = image_split(cfg, "train")
    cfg = resolve(cfg, data)
    return data.x, cfg, train_conditions(cfg, data)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of update number ``step`` (0-based): linear warm-up, then constant or a
    cosine decay to ``lr_min_ratio · lr`` at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup) / max(1, cfg.steps - 1 - cfg.warmup)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * cos)


def ema_decay_at(cfg: TrainConfig, step: int) -> float:
    """EMA decay after update ``step`` (1-based): min(decay, (1 + n)/(10 + n)), so the average
    forgets the random initialisation quickly (as in Ho et al.'s and diffusers' EMA)."""
    return min(cfg.ema_decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema_params: list[Tensor], params: list[Tensor], decay: float) -> None:
    """θ_ema ← decay · θ_ema + (1 − decay) · θ, for matching lists of tensors."""
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


@contextmanager
def torch_threads(n: int):
    """Use ``n`` intra-op threads inside the block (0: leave torch's setting)."""
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def open_run_dir(run_dir: Path, cfg: TrainConfig, *, resume: bool, overwrite: bool) -> None:
    """Check the run directory to resume, or create a fresh one (refusing to replace a run
    without ``overwrite``) and write its config.json."""
    if resume:
        ckpt.check_run_dir(run_dir)
    else:
        ckpt.prepare_run_dir(run_dir, overwrite=overwrite)
        ckpt.write_json(run_dir / ckpt.CONFIG, cfg.to_dict())


def default_run_dir(cfg: TrainConfig) -> Path:
    """runs/<dataset>-<YYYYmmdd-HHMMSS>, with -2, -3, … if that exists already."""
    base = Path("runs") / f"{cfg.dataset}-{datetime.now():%Y%m%d-%H%M%S}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


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
             progress: bool = False) -> Evaluation:
    """Sample ``n`` points and measure SWD to ``n`` held-out points, beside the two-sample floor.

    The held-out set is the test half of ``toy2d.train_test(dataset, ·, n, data_seed)``, which
    no training run has seen; the floor is the mean SWD of ``FLOOR_REPEATS`` pairs of fresh
    samples of the same size. ``variance`` and ``frames``: see :func:`difflab.draw.draw`.
    """
    keep = min(n, 2000)
    x0, snapshots, seconds = draw(model, schedule, (n, 2), sampler=sampler, steps=steps,
                                  eta=eta, spacing=spacing, seed=seed, keep=keep,
                                  variance=variance, frames=frames,
                                  progress=progress)  # (n, 2); Weng Fig. 3, bottom row
    held_out = toy2d.train_test(dataset, 1, n, data_seed)[1]  # (n, 2)
    value = swd(x0, held_out)
    floor = swd_floor(lambda m, s: toy2d.sample(dataset, m, s), n, repeats=FLOOR_REPEATS)
    metrics = {"swd": value, "swd_floor": floor, "swd_ratio": value / floor, "sampler": sampler,
               "steps": steps, "eta": eta, "spacing": spacing, "n_eval": n, "sample_seed": seed,
               "sample_seconds": seconds}
    return Evaluation(metrics, x0, held_out, snapshots)


# --- the loop ---
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
    run's config, up to ``steps`` and the evaluation settings). ``max_steps``: stop after that
    many total updates, write a checkpoint and return without evaluating — an interruption.
    ``progress``: tqdm bar on stderr (default: only when stderr is a terminal).
    """
    if progress is None:
        progress = sys.stderr.isatty()
    if run_dir is None:
        if resume:
            raise ValueError("resume needs the run directory")
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    run_dir = Path(run_dir)
    if cfg.method != "diffusion":  # consistency training (Weng eq. 32), or a distilled run
        from ..runs.consistency_training import train_consistency

        return train_consistency(cfg, run_dir, resume=resume, overwrite=overwrite,
                                 progress=progress, max_steps=max_steps,
                                 evaluate_after=evaluate_after)
    # (N, 2) or (N, C, H, W); bad data fails before any writing
    x_train, cfg, conds = training_set(cfg)
    open_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite)

    # torch's global RNG (dropout draws from it) is seeded here and saved in every checkpoint,
    # inside fork_rng so that the caller's global RNG is left as it was
    with torch_threads(cfg.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        schedule = build_schedule(cfg)
        model = build_model(cfg)
        ema = copy.deepcopy(model).requires_grad_(False)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                fused=True)
        g = torch.Generator().manual_seed(cfg.seed)
        t_sampler = ImportanceSampler(cfg.T) if cfg.t_sampling == "importance" else None
        log = LossLog(cfg.log_every)
        step, elapsed = 0, 0.0
        if resume:
            state = ckpt.load_checkpoint(run_dir)
            model.load_state_dict(state.model)
            ema.load_state_dict(state.ema)
            opt.load_state_dict(state.optimizer)
            g.set_state(state.generator)
            torch.set_rng_state(state.torch_rng)
            if t_sampler is not None:
                if not state.t_sampler:
                    raise ckpt.CheckpointError(f"{run_dir / ckpt.CHECKPOINT} has no importance "
                                               "sampler state; it cannot resume exactly")
                t_sampler.load_state_dict(state.t_sampler)
            log.load_state_dict(state.log)
            step, elapsed = state.step, state.elapsed
            ckpt.write_json(run_dir / ckpt.CONFIG, cfg.to_dict())  # e.g. more steps

        levels = data_levels(cfg)
        n_train = len(x_train)
        end = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
        bar = _bar(progress, step, cfg.steps)
        loss_avg, t_start = None, time.perf_counter()

        def save() -> None:
            ckpt.save_checkpoint(run_dir, ckpt.TrainState(
                step=step, model=model.state_dict(), ema=ema.state_dict(),
                optimizer=opt.state_dict(), generator=g.get_state(),
                torch_rng=torch.get_rng_state(),
                elapsed=elapsed + time.perf_counter() - t_start,
                t_sampler=t_sampler.state_dict() if t_sampler is not None else {},
                log=log.state_dict()))
            log.write_csv(run_dir / ckpt.LOSS_CSV)  # an export: the checkpoint holds the log

        params, ema_params = list(model.parameters()), list(ema.parameters())
        model.train()
        while step < end:
            idx = torch.randint(0, n_train, (cfg.batch,), generator=g)  # (B,)
            cond = conds.batch(idx, g, cfg.p_uncond) if conds is not None else {}
            loss = objective(cfg, model, schedule, x_train[idx], g, t_sampler, levels, **cond)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, step)
            opt.step()
            step += 1
            ema_update(ema_params, params, ema_decay_at(cfg, step))
            value = loss.item()
            log.record(step, value)
            loss_avg = value if loss_avg is None else 0.98 * loss_avg + 0.02 * value
            if bar is not None:
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss_avg:.4f}", refresh=False)
            if step % cfg.checkpoint_every == 0 or step == end:
                save()
        if bar is not None:
            bar.close()
        if step == 0:  # nothing trained (max_steps=0): still leave a resumable run
            save()
        train_seconds = elapsed + time.perf_counter() - t_start
        from ..runs.plots import plot_loss

        plot_loss(log.rows, run_dir / ckpt.LOSS_PNG, cfg.log_every,
                  title=f"{cfg.dataset}: L_{cfg.loss} (step {step} of {cfg.steps})")
        if evaluate_after and step >= cfg.steps:
            ema.eval()
            _evaluate_after(cfg, ema, schedule, run_dir, {
                "train_seconds": train_seconds, "train_steps": step, "loss": loss_avg})
    return run_dir


GIF_KEEP = 64  # images in the reverse-process GIF of an image run (2-D runs: every plotted point)


def _evaluate_after(cfg: TrainConfig, ema: nn.Module, schedule: Schedule, run_dir: Path,
                    extra: dict) -> None:
    """metrics.json (SWD or FD and its floor, plus ``extra``), samples.png, and the reverse
    process as reverse_process.png (a strip) and reverse_process.gif."""
    from ..runs import plots

    kw = dict(sampler=cfg.eval_sampler, steps=cfg.eval_steps, eta=cfg.eval_eta,
              spacing=spacing_for(cfg, cfg.eval_sampler), n=cfg.n_eval, seed=cfg.seed,
              variance=cfg.variance)
    if is_image(cfg.dataset):
        from ..build.conditioning import guided, sample_conditions
        from ..image_eval import evaluate_images

        model, labels = ema, None
        if cfg.cond != "none":  # every class in turn, guided with eval_guidance
            cond, labels = sample_conditions(cfg, cfg.n_eval)
            model = guided(ema, schedule, cfg, cond, w=cfg.eval_guidance,
                           sampler=cfg.eval_sampler, steps=cfg.eval_steps,
                           variance=cfg.variance)
            extra = {**extra, "guidance": cfg.eval_guidance}
        frames = Frames(keep=min(cfg.n_eval, GIF_KEEP))
        metrics, samples, snapshots = evaluate_images(model, schedule, cfg, frames=frames,
                                                      labels=labels, **kw)
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


def _bar(progress: bool, initial: int, total: int):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig saved in a run directory (CheckpointError if missing or invalid)."""
    run_dir = ckpt.check_run_dir(run_dir)
    raw = ckpt.read_json(run_dir / ckpt.CONFIG)
    if not isinstance(raw, dict):
        raise ckpt.CheckpointError(f"{run_dir / ckpt.CONFIG} is corrupt (not a JSON object)")
    try:
        return TrainConfig.from_dict(raw)
    except ValueError as err:
        raise ckpt.CheckpointError(f"{run_dir / ckpt.CONFIG} is invalid: {err}") from None


def load_run(run_dir: str | Path, which: str = "ema") -> tuple[TrainConfig, nn.Module, Schedule]:
    """The config, network (EMA weights by default, in eval mode) and schedule of a run; a
    distilled student comes as an ε-model and a consistency run as its f_θ (distill.runs)."""
    cfg = read_run_config(run_dir)
    if (Path(run_dir) / ckpt.CLASSIFIER).is_file():
        raise ckpt.CheckpointError(f"{run_dir} is a noisy-classifier run, not a diffusion model; "
                                   "pass it to 'difflab sample' as --classifier")
    model = build_model(cfg)
    weights = ckpt.load_weights(run_dir, which)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        msg = " ".join(str(err).split())[:200]
        raise ckpt.CheckpointError(f"weights in {run_dir} do not fit its config ({msg})") from None
    from ..runs.distill import sampling_model  # x0/v students → ε-models; consistency → f_θ

    schedule = build_schedule(cfg)
    return cfg, sampling_model(cfg, model.eval().requires_grad_(False), schedule), schedule
