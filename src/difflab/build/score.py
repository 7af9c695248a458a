"""The noise ladder of a score-matching run (method dsm or ssm; :mod:`difflab.ncsn`) from its
config: σ_1 and L measured from the training data when the run starts (Song & Ermon 2020,
techniques 1 and 2) and kept in the run's config, so that sampling needs no data."""

from __future__ import annotations

import dataclasses

from torch import Tensor

from ..config import TrainConfig
from ..errors import ConfigError
from ..ncsn import geometric_ladder, ladder_levels, max_pairwise_distance


def resolve_ladder(cfg: TrainConfig, data: Tensor) -> TrainConfig:
    """``cfg`` with ``sigma_max`` = 0 replaced by the largest pairwise distance of ``data``
    (N, …) (technique 1) and ``sigma_levels`` = 0 by technique 2's L for D = data[0].numel()
    (:func:`difflab.ncsn.ladder_levels`). A config that has both already comes back as it is."""
    sigma_max = cfg.sigma_max or max_pairwise_distance(data, seed=cfg.seed)
    if sigma_max <= cfg.sigma_min:
        raise ConfigError(f"the training data's largest pairwise distance {sigma_max:.4g} is not "
                          f"above sigma_min = {cfg.sigma_min}; set --sigma-max")
    levels = cfg.sigma_levels or ladder_levels(sigma_max, cfg.sigma_min, data[0].numel())
    return dataclasses.replace(cfg, sigma_max=float(sigma_max), sigma_levels=levels)


def score_ladder(cfg: TrainConfig) -> Tensor:
    """σ_1 > … > σ_L of a run whose ladder is resolved (:func:`resolve_ladder`), float64 (L,)."""
    if not (cfg.sigma_max and cfg.sigma_levels):
        raise ConfigError("the run's ladder is not resolved (sigma_max and sigma_levels are "
                          "measured from the data when it starts training)")
    return geometric_ladder(cfg.sigma_max, cfg.sigma_min, cfg.sigma_levels)
