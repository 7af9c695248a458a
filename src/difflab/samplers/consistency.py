"""The ``consistency`` sampler of the registry: Song et al. 2023, Algorithm 1 (Weng eq. 30) —
:func:`difflab.distill.consistency_sample` under the sampler contract, for consistency models
only. A consistency model f_θ(x̃, σ) maps a noisy sample straight to x_0; the ε-samplers need an
ε-model ε_θ(x_t, t), so neither kind of model fits the other's samplers, and both refuse.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _unbind(model) -> tuple[object, dict]:
    """A model bound to its conditions (:class:`difflab.conditioning.Bound`) as (model, cond)."""
    from ..build.conditioning import Bound  # lazy: conditioning imports the samplers' neighbours

    return (model.model, model.cond) if isinstance(model, Bound) else (model, {})


def is_consistency_model(model) -> bool:
    """Whether ``model`` is a consistency model f_θ, bare or bound to its conditions."""
    from ..distill.consistency import ConsistencyModel  # lazy: distill imports the samplers

    return isinstance(_unbind(model)[0], ConsistencyModel)


def consistency(model, schedule, x_T: Tensor, steps: int = 1,
                generator: torch.Generator | None = None, **kwargs) -> Tensor:
    """One-step (``steps=1``) or multistep consistency sampling of a
    :class:`~difflab.distill.ConsistencyModel` from x_T ~ N(0, I) (B, …); ``kwargs``
    (``sigmas``, ``progress``, ``callback``, ``cond``) as in
    :func:`difflab.distill.consistency_sample`. ValueError for any other model."""
    from ..distill.consistency import consistency_sample

    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= schedule.T:
        raise ValueError(f"steps must be an integer in 1..T (T={schedule.T}), got {steps!r}")
    if not is_consistency_model(model):
        raise ValueError("sampler 'consistency' needs a consistency model (a run of 'difflab "
                         "distill --method consistency' or 'difflab train --method "
                         "consistency-training'); sample an ε-model with ddim, heun, dpm++, …")
    model, bound = _unbind(model)
    if bound:
        kwargs["cond"] = {**bound, **(kwargs.get("cond") or {})}
    return consistency_sample(model, schedule, x_T, steps, generator, **kwargs)
