"""Pieces every sampler shares: evaluating the ε-model at one step, the step loop's progress
bar and callback, and drawing noise from the caller's generator."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from ..parameterization import Model, x0_from_eps
from ..schedules import Schedule, generator_device

Callback = Callable[[int, int, Tensor], None]  # (step index i, timestep t, x after the step)


def alpha_bar_table(schedule: Schedule) -> list[float]:
    """[ᾱ_0 = 1, ᾱ_1, …, ᾱ_T] as Python floats, indexed by t; computed once per sampler call."""
    return [1.0] + schedule.alpha_bars.tolist()


def model_output(model: Model, x_t: Tensor, t: int, cond: dict | None
                 ) -> tuple[Tensor, Tensor | None]:
    """Call the model at one step t. A plain ε-model returns ε̂; a model with a learned variance
    returns the pair (ε̂, v), v the mixing vector of Weng eq. (23). Returns (ε̂, v or None)."""
    tb = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)  # (B,)
    out = model(x_t, tb, **(cond or {}))
    return (out[0], out[1]) if isinstance(out, tuple) else (out, None)


def predict(model: Model, x_t: Tensor, t: int, ab_t: float, cond: dict | None
            ) -> tuple[Tensor, Tensor]:
    """ε̂ = model(x_t, t) and x̂_0 from it (Weng eq. 11). Returns (eps, x0), both like x_t."""
    eps = model_output(model, x_t, t, cond)[0]
    return eps, x0_from_eps(x_t, eps, torch.tensor(ab_t, dtype=x_t.dtype, device=x_t.device))


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    where = generator_device(generator, x.device)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=where).to(x.device)


def loop(items: list, progress: bool, desc: str) -> Iterable:
    """The step loop, with a tqdm bar when ``progress`` is true."""
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)
