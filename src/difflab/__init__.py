"""difflab: diffusion models as Lilian Weng's post "What are Diffusion Models?" explains them.

The maths lives in small modules, each citing the post's equations:
``schedules`` (eq 1, 3, 7-12, 22), ``parameterization`` (eq 11, 21, v), ``losses`` (eq 19),
``samplers`` (eq 4, 17, 27-29, probability-flow ODE), ``oracle`` (exact denoisers),
``metrics`` (sliced Wasserstein), ``data``, ``vlb`` (eq 13-18, 23: the variational bound)
``likelihood`` (bits/dim from the probability-flow ODE), ``guidance`` (eq 24-26,
thresholding) and ``distill`` (progressive distillation, consistency models: eq 30-32).
Training, conditioning and the CLI are in ``train``, ``conditioning`` and ``cli``.
"""

from . import (
    data,
    distill,
    guidance,
    likelihood,
    losses,
    metrics,
    oracle,
    parameterization,
    samplers,
    schedules,
    vlb,
)

__version__ = "0.1.0"

__all__ = ["data", "distill", "guidance", "likelihood", "losses", "metrics", "oracle",
           "parameterization", "samplers", "schedules", "vlb"]
