"""Annealed Langevin dynamics — Weng eq. (4) run over decreasing noise levels, as in NCSN (Song &
Ermon 2019, Algorithm 1), with the final denoising step of Jolicoeur-Martineau et al. 2021.

One loop, :func:`annealed_langevin`, takes a score function of the additive (variance
exploding) perturbation x̃ = x_0 + σ z and a ladder of σ's. :func:`langevin` feeds it either a
score model (:class:`difflab.ncsn.ScoreModel`, known by ``is_score_model``: its own ladder) or
an ε-model of a diffusion schedule, through eq. (21) rescaled to the VE coordinates."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..parameterization import Model
from ..schedules import Schedule
from ._common import Callback, alpha_bar_table, loop, noise_like, predict
from .timesteps import resolve

Score = Callable[[Tensor, int], Tensor]  # (x̃ (B, …), k: index into the ladder) -> ∇ log q_σk(x̃)


def annealed_langevin(score: Score, sigmas: Sequence[float], x: Tensor, *, n_each: int,
                      step_sizes: Sequence[float], generator: torch.Generator | None = None,
                      denoise: bool = True, progress: bool = False,
                      callback: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """``n_each`` updates of eq. (4) at each level k of ``sigmas`` (decreasing), from x (B, …):

        x̃ ← x̃ + (δ_k/2) ∇ log q_σk(x̃) + √δ_k z,   δ_k = step_sizes[k] · σ_k²

    (NCSN's α_i ∝ σ_i²). ``callback(k, x̃)`` after each level. With ``denoise``, a last Tweedie
    step x̂_0 = x̃ + σ_L² ∇ log q_σL(x̃) (the posterior mean E[x_0 | x̃], = eq. 11) removes the
    smallest level's noise (Jolicoeur-Martineau et al. 2021). Score evaluations:
    len(sigmas) · n_each (+1 with denoise)."""
    if not (n_each >= 1 and all(s > 0 for s in step_sizes)):
        raise ValueError("langevin needs n_each >= 1 and step sizes > 0")
    for k in loop(list(range(len(sigmas))), progress, "langevin"):
        delta = step_sizes[k] * sigmas[k] ** 2
        for _ in range(n_each):
            x = x + 0.5 * delta * score(x, k) + math.sqrt(delta) * noise_like(x, generator)
        if callback is not None:
            callback(k, x)
    if denoise:
        x = x + sigmas[-1] ** 2 * score(x, len(sigmas) - 1)
    return x


@torch.inference_mode()
def langevin(
    model: Model,
    schedule: Schedule,
    x_T: Tensor,
    steps: int | Sequence[int] | None = 100,
    generator: torch.Generator | None = None,
    *,
    n_each: int = 10,
    step_size: float | None = None,
    denoise: bool = True,
    spacing: str = "geometric",
    progress: bool = False,
    callback: Callback | None = None,
    cond: dict | None = None,
) -> Tensor:
    """Sample with the score alone: ``n_each`` Langevin updates at each of ``steps`` noise levels
    (:func:`annealed_langevin`), from x_T ∼ N(0, I).

    A **score model** s_θ(x̃, i) (``is_score_model``, :class:`difflab.ncsn.ScoreModel`) brings
    its ladder σ_1 > … > σ_L: ``steps`` levels are taken from it, evenly spaced in index (so
    geometric in σ; all L when steps ≥ L), x̃ starts at σ_1 · x_T, and ``step_size`` defaults to
    technique 4 of Song & Ermon 2020 for the ladder's ratio and ``n_each``
    (:func:`difflab.ncsn.langevin_step_size`). ``schedule`` is unused then; callbacks get
    (level, i, x̃).

    An **ε-model** of ``schedule``: NCSN's x̃ maps onto x_t as x̃ = x_t/√ᾱ_t with
    σ_t = √((1−ᾱ_t)/ᾱ_t), and the score there is ∇ log q(x̃) = −ε_θ(x_t, t)/σ_t (eq. 21
    rescaled); ``step_size`` defaults to 0.5. ``spacing="geometric"`` (the default) places
    ``steps`` levels geometrically in σ between σ_T and σ_1, each rounded to the nearest
    timestep (duplicates dropped, so there may be fewer); the timestep spacings of
    :mod:`difflab.samplers.timesteps` and explicit lists also work. Callbacks get (level, t,
    x_t) in the schedule's coordinates.

    ``denoise``: the last Tweedie step (Jolicoeur-Martineau et al. 2021). Model evaluations:
    steps · n_each (+1 with denoise).
    """
    if getattr(model, "is_score_model", False):
        return _score_model_langevin(model, x_T, steps, generator, n_each=n_each,
                                     step_size=step_size, denoise=denoise, progress=progress,
                                     callback=callback, cond=cond)
    ab = alpha_bar_table(schedule)
    if spacing == "geometric" and isinstance(steps, int):
        ts = geometric_levels(schedule, steps)
    else:
        ts = resolve(schedule.T, steps, "linspace" if spacing == "geometric" else spacing).tolist()
    sigmas = [math.sqrt((1 - ab[t]) / ab[t]) for t in ts]

    def score(x: Tensor, k: int) -> Tensor:  # ∇ log q(x̃) = −ε_θ(√ᾱ_t x̃, t)/σ_t
        t = ts[k]
        return -predict(model, x * math.sqrt(ab[t]), t, ab[t], cond)[0] / sigmas[k]

    def report(k: int, x: Tensor) -> None:
        if callback is not None:
            callback(k, ts[k], x * math.sqrt(ab[ts[k]]))

    step = 0.5 if step_size is None else step_size
    return annealed_langevin(score, sigmas, x_T / math.sqrt(ab[ts[0]]), n_each=n_each,
                             step_sizes=[step] * len(ts), generator=generator, denoise=denoise,
                             progress=progress, callback=report)


def _score_model_langevin(model, x_T: Tensor, steps, generator, *, n_each: int,
                          step_size: float | None, denoise: bool, progress: bool,
                          callback: Callback | None, cond: dict | None) -> Tensor:
    from ..ncsn import langevin_step_size

    ladder = model.sigmas.tolist()  # σ_1 > … > σ_L
    levels = ladder_subset(len(ladder), steps)  # level indices 1..L, increasing
    sigmas = [ladder[i - 1] for i in levels]
    if step_size is None:  # technique 4 for the (geometric) ratio of the levels used
        gamma = (sigmas[0] / sigmas[-1]) ** (1 / max(len(sigmas) - 1, 1))
        step_size = langevin_step_size(max(gamma, 1 + 1e-6), n_each)

    def score(x: Tensor, k: int) -> Tensor:
        i = torch.full((x.shape[0],), levels[k], dtype=torch.long, device=x.device)  # (B,)
        return model(x, i, **(cond or {}))

    def report(k: int, x: Tensor) -> None:
        if callback is not None:
            callback(k, levels[k], x)

    return annealed_langevin(score, sigmas, x_T * sigmas[0], n_each=n_each,
                             step_sizes=[step_size] * len(sigmas), generator=generator,
                             denoise=denoise, progress=progress, callback=report)


def ladder_subset(levels: int, steps: int | Sequence[int] | None) -> list[int]:
    """Which of a ladder's L levels (indices 1..L, σ_1 the largest) ``steps`` visits: ``steps``
    indices evenly spaced from 1 to L (all of them when steps ≥ L or None; duplicates dropped),
    or an explicit increasing list of indices."""
    if steps is None:
        return list(range(1, levels + 1))
    if not isinstance(steps, int):
        out = [int(i) for i in steps]
        if not out or any(not 1 <= i <= levels for i in out) or out != sorted(set(out)):
            raise ValueError(f"level indices must be increasing and lie in 1..{levels}")
        return out
    if isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps!r}")
    n = min(steps, levels)
    if n == 1:
        return [1]
    return sorted({round(1 + k * (levels - 1) / (n - 1)) for k in range(n)})


def geometric_levels(schedule: Schedule, levels: int) -> list[int]:
    """Timesteps whose σ_t = √((1−ᾱ_t)/ᾱ_t) lie nearest (in log σ) to ``levels`` geometrically
    spaced values from σ_T down to σ_1; decreasing, distinct, first T and last 1."""
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= schedule.T:
        raise ValueError(f"steps must be an integer in 1..T (T={schedule.T}), got {levels!r}")
    ab = schedule.alpha_bars
    log_sigma = 0.5 * ((1 - ab) / ab).log()  # (T,), increasing in t
    target = torch.linspace(float(log_sigma[-1]), float(log_sigma[0]), levels, dtype=torch.float64)
    nearest = (log_sigma[None, :] - target[:, None]).abs().argmin(1) + 1  # (levels,)
    return nearest.unique().flip(0).tolist()
