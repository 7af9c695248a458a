"""Training configuration: one flat frozen dataclass in sections, filled from a TOML preset and
then from flags.

- :mod:`.train_config`: :class:`TrainConfig`, whose every field carries its section (data,
  model, diffusion, objective, conditioning, optimiser, evaluation, run) and its help text;
  :meth:`TrainConfig.to_sections` / :meth:`TrainConfig.from_sections`.
- :mod:`.checks`: the checks every config passes when it is made (one-line ``ConfigError``
  naming the key), and the small helpers that read a config (``is_image``, ``image_size``,
  ``model_kind``).
- :mod:`.preset_files`: presets, flat or in sections, that may inherit (``base = "digits"``);
  the built-in ones live in ``difflab/config/presets/*.toml``.

Unknown keys and values of the wrong type raise a :class:`~difflab.errors.ConfigError` (a
``ValueError``) that names the key, so the CLI can print it as one line.
"""

from __future__ import annotations

from ..errors import ConfigError
from .checks import (
    CONDS,
    CONSISTENCY_METHODS,
    DEVICES,
    IMAGE_DATASETS,
    IMAGE_SIZES,
    LOGS,
    LOSSES,
    LR_SCHEDULES,
    METHODS,
    PRECISIONS,
    PREDICTIONS,
    SCHEDULES,
    SCORE_METHODS,
    T_SAMPLINGS,
    VARIANCES,
    data_kind,
    image_size,
    int_list,
    is_image,
    model_kind,
    validate,
)
from .preset_files import (
    CONSISTENCY_EVAL,
    CONSISTENCY_TRAINING_LR,
    SCORE_EVAL,
    builtin_presets,
    load_config,
    method_defaults,
    read_preset,
)
from .train_config import SECTIONS, TrainConfig, field_help, field_section, flatten

__all__ = [
    "CONDS", "CONSISTENCY_EVAL", "CONSISTENCY_METHODS", "CONSISTENCY_TRAINING_LR",
    "DEVICES",
    "IMAGE_DATASETS", "IMAGE_SIZES", "LOGS", "LOSSES", "LR_SCHEDULES", "METHODS", "NO_SPACING",
    "PRECISIONS", "PREDICTIONS", "SCHEDULES", "SCORE_EVAL", "SCORE_METHODS", "SECTIONS",
    "T_SAMPLINGS", "VARIANCES",
    "ConfigError", "TrainConfig", "builtin_presets", "data_kind", "field_help", "field_section",
    "flatten", "image_size", "int_list", "is_image", "load_config", "method_defaults",
    "model_kind", "read_preset",
    "spacing_for", "validate",
]

NO_SPACING = ("consistency",)  # samplers without a timestep grid to space


def spacing_for(cfg: TrainConfig, sampler: str, spacing: str | None = None) -> str | None:
    """The timestep spacing to sample ``cfg``'s run with: ``spacing`` if given, else the run's
    ``eval_spacing``, where "auto" means "leading" for cosine-schedule runs (except Langevin,
    whose noise levels are geometric in σ, and DPM-Solver++, UniPC and EDM-Heun, which cut the
    cosine tail themselves) and the sampler's own default (None) otherwise. Samplers in
    ``NO_SPACING`` (consistency) always get None; an explicit ``spacing`` for them is an
    error."""
    if sampler in NO_SPACING:  # consistency sampling re-noises to σ levels, no grid to space
        if spacing is not None:
            raise ConfigError(f"--spacing does not apply to sampler {sampler!r}")
        return None
    choice = spacing or cfg.eval_spacing
    if choice != "auto":
        return choice
    # dpm++ clips the cosine tail itself (lambda_min) and edm-heun caps σ at 80 on a Karras grid
    own = ("langevin", "dpm++", "dpm++sde", "unipc", "edm-heun")
    return "leading" if cfg.schedule == "cosine" and sampler not in own else None
