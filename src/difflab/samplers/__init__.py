"""Samplers: plain functions ``(model, schedule, x_T, steps=…, generator=None, …) -> x_0``.

Each sees the model only as an ε-model ``model(x_t, t, **cond)``; wrap x_0-, v- or
score-predicting networks with :mod:`difflab.parameterization`. Each takes ``progress`` (a tqdm
bar), ``callback(i, t, x)`` after every step and ``cond`` (keyword arguments for the model).
"""

from .ancestral import ddpm
from .consistency import consistency
from .ddim import ddim, ddim_invert, slerp
from .dpm_solver import DPM_SPACINGS, dpm_solver_pp
from .dpm_solver_sde import dpm_solver_pp_sde
from .edm import EDM_SPACINGS, edm_heun, karras_sigmas
from .langevin import langevin
from .ode import euler, heun
from .timesteps import SPACINGS, timesteps
from .unipc import unipc

SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "langevin": langevin, "euler": euler, "heun": heun,
            "dpm++": dpm_solver_pp, "dpm++sde": dpm_solver_pp_sde, "unipc": unipc,
            "edm-heun": edm_heun,
            "consistency": consistency}  # for consistency models only (difflab.distill)
# the grids each sampler's ``spacing`` takes (consistency sampling has none: it re-noises to σ's)
SAMPLER_SPACINGS = {"ddpm": SPACINGS, "ddim": SPACINGS, "langevin": ("geometric", *SPACINGS),
                    "euler": SPACINGS, "heun": SPACINGS, "dpm++": DPM_SPACINGS,
                    "dpm++sde": DPM_SPACINGS, "unipc": DPM_SPACINGS, "edm-heun": EDM_SPACINGS,
                    "consistency": ()}


def grids_of(sampler: str) -> tuple[str, ...]:
    """The named grids ``sampler``'s ``spacing`` takes, less DPM-Solver's "auto" (its default,
    which callers pass as None: a user's "auto" means a run's ``eval_spacing = "auto"``)."""
    return tuple(g for g in SAMPLER_SPACINGS[sampler] if g != "auto")


# every grid of every sampler, in the order of first appearance
SPACING_NAMES = tuple(dict.fromkeys(g for s in SAMPLER_SPACINGS for g in grids_of(s)))

__all__ = ["SAMPLERS", "SAMPLER_SPACINGS", "SPACINGS", "SPACING_NAMES", "consistency", "ddim",
           "ddim_invert", "ddpm", "dpm_solver_pp", "dpm_solver_pp_sde", "edm_heun", "euler",
           "grids_of", "heun", "karras_sigmas",
           "langevin", "slerp", "timesteps", "unipc"]
