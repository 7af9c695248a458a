"""The ``consistency`` sampler of the registry: Song et al. 2023, Algorithm 1 (Weng eq. 30), for
consistency models only. A consistency model f_θ(x̃, σ) maps a noisy sample straight to x_0; the
ε-samplers need an ε-model ε_θ(x_t, t), so neither kind of model fits the other's samplers, and
both refuse.

This module knows consistency models by their interface alone, so that the sampler layer imports
nothing above it (``tests/test_layers.py``): a consistency model (such as
:class:`difflab.distill.ConsistencyModel`) has the class attribute
``is_consistency_model = True``, the floats ``sigma_min`` and ``sigma_max``, and is called as
``model(x̃ (B, …), σ, **cond) -> x_0 (B, …)`` in VE coordinates x̃ = x_t / √ᾱ_t. A model bound
to its conditions (:class:`difflab.guidance.Bound`) is anything with a ``.model`` and a dict
``.cond``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..schedules import Schedule
from ._common import loop, noise_like
from .edm import schedule_sigmas
from .timesteps import timesteps


def unbind(model) -> tuple[object, dict]:
    """A model bound to its conditions (:class:`difflab.guidance.Bound`: a ``.model`` and a
    dict ``.cond``) as (model, cond); any other model as (model, {})."""
    cond = getattr(model, "cond", None)
    if isinstance(cond, dict) and hasattr(model, "model"):
        return model.model, cond
    return model, {}


def is_consistency_model(model) -> bool:
    """Whether ``model`` is a consistency model f_θ (its class sets
    ``is_consistency_model = True``), bare or bound to its conditions."""
    return getattr(unbind(model)[0], "is_consistency_model", False) is True


def default_levels(model, schedule: Schedule, steps: int) -> list[float]:
    """The S − 1 re-noising levels of an S-step sample: σ at ``timesteps(T, S, "trailing")``
    after the first (the steps DDIM with spacing="trailing" visits), clamped to
    [σ_min, σ_max]. S = 2, linear T = 1000: σ_500 ≈ 3.4."""
    ts = timesteps(schedule.T, steps, "trailing")[1:]  # (S−1,) decreasing, each ≥ 1
    sig = schedule_sigmas(schedule)  # (T,) float64, entry [t−1] is σ_t
    return [min(max(float(sig[t - 1]), model.sigma_min), model.sigma_max) for t in ts.tolist()]


@torch.inference_mode()
def consistency_sample(model, schedule: Schedule, x_T: Tensor,
                       steps: int = 1, generator: torch.Generator | None = None, *,
                       sigmas: Sequence[float] | None = None, progress: bool = False,
                       callback: Callable[[int, float, Tensor], None] | None = None,
                       cond: dict | None = None) -> Tensor:
    """One-step or multistep consistency sampling — Song et al. 2023, Algorithm 1.

    x ← f(x̃_T, σ_max); then for each level σ: x ← x + √(σ² − σ_min²) z, x ← f(x, σ).

    ``model``: a bare consistency model f_θ (see the module docstring). x_T: the usual
    N(0, I) noise of difflab's samplers, read as the variance-preserving state at σ_max
    (ᾱ = 1/(1 + σ_max²)); in VE coordinates that is x̃_T = √(1 + σ_max²) · x_T (std ≈ σ_max, as
    the paper's x_T ~ N(0, σ_max² I)). ``sigmas``: the S − 1 re-noising levels, decreasing
    (Alg. 1's τ_1 > … > τ_{N−1}), as many as ``steps`` − 1; by default :func:`default_levels`
    of ``steps``; :func:`difflab.samplers.consistency_levels.search_levels` searches them.
    ``callback(i, σ, x)`` after each evaluation. Returns x_0 (B, …).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= schedule.T:
        raise ValueError(f"steps must be an integer in 1..T (T={schedule.T}), got {steps!r}")
    cond = cond or {}
    levels = list(sigmas) if sigmas is not None else default_levels(model, schedule, steps)
    if sigmas is not None and len(levels) != steps - 1:
        raise ValueError(f"a {steps}-step sample re-noises {steps - 1} times; got "
                         f"{len(levels)} levels")
    if sigmas is not None and any(b >= a for a, b in zip(levels, levels[1:], strict=False)):
        raise ValueError(f"the re-noising levels must decrease (Alg. 1's τ_1 > … > τ_(S−1)), "
                         f"got {levels}")
    x = model(x_T * math.sqrt(1 + model.sigma_max**2), model.sigma_max, **cond)  # (B, …)
    if callback is not None:
        callback(0, model.sigma_max, x)
    for i, sigma in enumerate(loop(levels, progress, "consistency"), start=1):
        if not model.sigma_min <= sigma <= model.sigma_max:
            raise ValueError(f"level σ = {sigma} outside [σ_min, σ_max]")
        x = x + math.sqrt(sigma**2 - model.sigma_min**2) * noise_like(x, generator)
        x = model(x, sigma, **cond)
        if callback is not None:
            callback(i, sigma, x)
    return x


def consistency(model, schedule: Schedule, x_T: Tensor, steps: int = 1,
                generator: torch.Generator | None = None, **kwargs) -> Tensor:
    """One-step (``steps=1``) or multistep consistency sampling of a consistency model
    (:class:`~difflab.distill.ConsistencyModel`, bare or bound to its conditions) from
    x_T ~ N(0, I) (B, …); ``kwargs`` (``sigmas``, ``progress``, ``callback``, ``cond``) as in
    :func:`consistency_sample`. ValueError for any other model."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= schedule.T:
        raise ValueError(f"steps must be an integer in 1..T (T={schedule.T}), got {steps!r}")
    if not is_consistency_model(model):
        raise ValueError("sampler 'consistency' needs a consistency model (a run of 'difflab "
                         "distill --method consistency' or 'difflab train --method "
                         "consistency-training'); sample an ε-model with ddim, heun, dpm++, …")
    model, bound = unbind(model)
    if bound:
        kwargs["cond"] = {**bound, **(kwargs.get("cond") or {})}
    return consistency_sample(model, schedule, x_T, steps, generator, **kwargs)
