"""Seeded sampling of a trained model by the sampler's name, with pictures of the reverse process:
a few snapshots for a strip (as in Weng Fig. 3) and evenly spaced frames for an animation."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..samplers import SAMPLERS
from ..samplers.timesteps import resolve
from ..schedules import Schedule


@dataclass
class Frames:
    """Frames of the reverse process for an animation, filled by :func:`draw`: x_T, then the
    first ``keep`` samples after ``min(S, max_frames)`` evenly spaced steps of the sampler's S,
    the last of which is x_0 — so ``1 + min(S, max_frames)`` frames in all.

    ``frames`` holds (progress, x[:keep]) pairs, progress = the fraction of steps done, in [0, 1].
    """

    keep: int
    max_frames: int = 40
    frames: list[tuple[float, Tensor]] = field(default_factory=list)

    def marks(self, steps: int) -> dict[int, float]:
        """{step index (0-based): progress} of the recorded steps; the last is steps − 1."""
        m = min(steps, self.max_frames)
        return {(j + 1) * steps // m - 1: (j + 1) / m for j in range(m)}  # strictly increasing


def draw(model: Callable, schedule: Schedule, shape: tuple[int, ...], *, sampler: str,
         steps: int, eta: float = 0.0, spacing: str | None = None, seed: int = 0, keep: int = 0,
         variance: str | None = None, frames: Frames | None = None,
         progress: bool = False, decode: Callable[[Tensor], Tensor] | None = None,
         levels: Sequence[float] | None = None
         ) -> tuple[Tensor, list[tuple[str, Tensor]], float]:
    """Run the sampler named ``sampler`` from x_T ~ N(0, I) of ``shape`` (seeded), the one place
    where a sampler is picked by name. With ``keep`` > 0 it also pictures the first ``keep``
    samples along the reverse process (see :func:`snapshot_marks`); with ``frames`` it records
    an animation's frames into it (see :class:`Frames`). ``variance``: Σ_θ for ``ddpm``
    ("beta_tilde", "beta" or "learned"; None: the sampler's default, learned for a model that
    returns (ε̂, v)); the other samplers use ε̂ alone. ``decode``: a latent run's decoder
    (:meth:`difflab.pipelines.LatentCodec.decode`): the sampler runs on latents of ``shape``,
    and x_0, the snapshots and the frames come back as images (the seconds include decoding).
    ``levels``: the ``consistency`` sampler's ``steps`` − 1 re-noising levels σ (None: its
    default; :func:`difflab.samplers.consistency_levels.search_levels` finds better ones).

    Returns (x_0, snapshots [(label, x[:keep])] from x_T to x_0, sampling seconds).
    """
    check_sampler_fits(model, sampler)
    kwargs = {"eta": eta} if sampler == "ddim" else {}
    if spacing is not None:  # None: the sampler's own default
        kwargs["spacing"] = spacing
    if sampler == "ddpm" and variance is not None:
        kwargs["variance"] = variance
    if levels is not None:
        if sampler != "consistency":
            raise ValueError(f"re-noising levels apply to the consistency sampler only, not "
                             f"{sampler!r}")
        kwargs["sigmas"] = [float(s) for s in levels]
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(*shape, generator=g).to(model_device(model))  # (n, …), drawn on the CPU
    calls = callback_count(model, sampler, steps)  # the sampler's callbacks
    marks = snapshot_marks(schedule, sampler, calls, spacing=spacing) if keep else {}
    snapshots = [(f"x_T (t = {schedule.T})", _host(x_T[:keep]))] if keep else []
    frame_marks = frames.marks(calls) if frames is not None else {}
    if frames is not None:
        frames.frames.append((0.0, _host(x_T[:frames.keep])))

    def callback(i: int, t: int, x: Tensor) -> None:
        if i in marks:
            snapshots.append((marks[i], _host(x[:keep])))
        if i in frame_marks:
            frames.frames.append((frame_marks[i], _host(x[:frames.keep])))

    t0 = time.perf_counter()
    with torch.inference_mode():
        x0 = SAMPLERS[sampler](model, schedule, x_T, steps=steps, generator=g,
                               progress=progress, callback=callback, **kwargs)  # (n, …)
        if decode is not None:
            x0 = decoded(decode, x0)  # (n, C, H, W) images of the latents
    seconds = time.perf_counter() - t0
    x0 = x0.cpu()  # (n, …)
    if decode is not None:
        snapshots = [(label, decoded(decode, x)) for label, x in snapshots]
        if frames is not None:
            frames.frames[:] = [(p, decoded(decode, x)) for p, x in frames.frames]
    if keep:
        snapshots.append(("x_0", x0[:keep]))
    if frames is not None:  # the last frame is what the sampler returned (e.g. after denoising)
        if frames.frames[-1][0] == 1.0:
            frames.frames.pop()
        frames.frames.append((1.0, x0[:frames.keep]))
    return x0, snapshots, seconds


DECODE_BATCH = 256


@torch.inference_mode()
def decoded(decode: Callable[[Tensor], Tensor], z: Tensor) -> Tensor:
    """``decode`` of latents z (n, …) in batches, on the decoder's device; a CPU tensor."""
    device = model_device(decode)
    return torch.cat([decode(b.to(device)).cpu() for b in z.split(DECODE_BATCH)])


def model_device(model: Callable) -> torch.device:
    """The device of a model's parameters (the CPU for a parameter-free model)."""
    owner = getattr(model, "__self__", model)  # a bound method: its module's
    if isinstance(owner, torch.nn.Module):
        for p in owner.parameters():
            return p.device
    return torch.device("cpu")


def _host(x: Tensor) -> Tensor:
    """A CPU copy of ``x`` (a snapshot that later steps must not change)."""
    return x.detach().to("cpu", copy=True)


def callback_count(model: Callable, sampler: str, steps: int) -> int:
    """How many times the sampler calls back: ``steps``, but for a score model (Langevin on its
    own ladder) the number of its L levels that ``steps`` visits."""
    if getattr(model, "is_score_model", False):
        from ..samplers.langevin import ladder_subset

        return len(ladder_subset(model.levels, steps))
    return steps


def check_sampler_fits(model: Callable, sampler: str) -> None:
    """ValueError unless ``sampler`` takes this kind of model: the ``consistency`` sampler takes
    consistency models (Weng eq. 30) only, ``langevin`` also score models
    (:class:`difflab.ncsn.ScoreModel`), every other sampler ε-models only."""
    from ..samplers.consistency import is_consistency_model

    if sampler != "langevin" and getattr(model, "is_score_model", False):
        raise ValueError(f"this is a score model; sample it with the langevin sampler, not "
                         f"{sampler!r}")

    if sampler != "consistency" and is_consistency_model(model):
        raise ValueError(f"this run is a consistency model; sample it with --sampler consistency "
                         f"(1 or a few steps), not {sampler!r}")


def spacing_used(sampler: str, spacing: str | None = None) -> str | None:
    """The timestep spacing ``sampler`` samples with when :func:`draw` gets ``spacing``: that
    one, or (None) the sampler's own default — its ``spacing`` parameter's default: linspace
    for ddpm, ddim, euler and heun, geometric for langevin, auto for dpm++, dpm++sde and
    unipc, karras for edm-heun. None for a sampler without a grid to space (consistency).
    What metrics record."""
    if spacing is not None:
        return spacing
    import inspect

    param = inspect.signature(SAMPLERS[sampler]).parameters.get("spacing")
    if param is None or param.default is inspect.Parameter.empty:
        return None
    return param.default


def grid_used(sampler: str, steps: int, spacing: str | None = None) -> str | None:
    """The grid behind :func:`spacing_used` at ``steps``: "auto" resolved to what it stands
    for at that many steps (dpm++, dpm++sde, unipc: "trailing" below 10; from 10 on "logsnr",
    or "capped-blend" for unipc),
    any other spacing as it is. What metrics record as ``grid``, beside ``spacing``."""
    used = spacing_used(sampler, spacing)
    if used == "auto" and sampler in ("dpm++", "dpm++sde", "unipc"):
        from ..samplers.dpm_solver import auto_spacing

        return auto_spacing(steps, sampler)
    return used


def time_grid(sampler: str, steps: int, spacing: str | None = None) -> dict[str, str | None]:
    """``{"spacing": …, "grid": …}``: :func:`spacing_used` and :func:`grid_used`, the two fields
    with which eval's metrics and serve's settings record the time grid sampled on."""
    return {"spacing": spacing_used(sampler, spacing), "grid": grid_used(sampler, steps, spacing)}


def levels_used(model, schedule: Schedule, sampler: str, steps: int,
                levels: Sequence[float] | None = None) -> list[float] | None:
    """The re-noising levels σ a ``consistency`` sample of ``steps`` visits (``levels``, or
    its default); None for any other sampler. What metrics record as ``levels``."""
    if sampler != "consistency":
        return None
    if levels is not None:
        return [float(s) for s in levels]
    from ..samplers.consistency import default_levels, unbind

    return default_levels(unbind(model)[0], schedule, steps)


def visited_timesteps(schedule: Schedule, sampler: str, steps: int,
                      spacing: str | None = None) -> Tensor:
    """The timesteps an ε-sampler evaluates, int64 (S,) decreasing, one per callback: its own
    grid (:func:`spacing_used`; dpm++, dpm++sde and unipc with the λ clip, edm-heun with its σ
    cap) unless ``spacing``."""
    spacing = spacing_used(sampler, spacing)
    if sampler in ("dpm++", "dpm++sde", "unipc"):
        from ..samplers.dpm_solver import dpm_timesteps

        return dpm_timesteps(schedule, steps, spacing, sampler=sampler)
    if sampler == "edm-heun":
        from ..samplers.edm import edm_timesteps

        return edm_timesteps(schedule, steps, spacing)
    return resolve(schedule.T, steps, "linspace" if spacing in (None, "geometric") else spacing)


def snapshot_marks(schedule: Schedule, sampler: str, steps: int,
                   levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.97), *,
                   spacing: str | None = None) -> dict[int, str]:
    """Which sampler steps to picture: the first step whose output has √ᾱ ≥ each level, so
    the panels show the structure emerge (evenly spaced steps would show mostly noise on the
    linear schedule), on the grid the sampler visits with ``spacing`` (None: its own). Returns
    {step index: label}; Langevin's levels are simply spaced evenly; a consistency sample's
    steps each give a clean estimate f_θ, so the first len(levels) of them but the last."""
    if sampler == "langevin":
        k = len(levels)
        return {round((j + 1) * steps / (k + 1)) - 1: f"level {round((j + 1) * steps / (k + 1))}"
                for j in range(k)}
    if sampler == "consistency":  # evaluation i gives f_θ(x̃, σ_i), σ_0 = σ_max
        return {i: f"f_θ, step {i + 1}" for i in range(min(steps - 1, len(levels)))}
    ts = visited_timesteps(schedule, sampler, steps, spacing)  # (S,) decreasing
    after = torch.cat([ts[1:], ts.new_zeros(1)])  # the timestep each update lands on
    signal = schedule.alpha_bar_at(after).sqrt()  # (S,)
    marks = {}
    for level in levels:
        hits = (signal >= level).nonzero()
        if len(hits) and int(hits[0]) < len(ts) - 1:
            marks[int(hits[0])] = f"t = {int(after[hits[0]])}"
    return marks
