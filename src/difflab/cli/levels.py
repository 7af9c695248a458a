"""``eval --search-levels``: the re-noising levels of a multistep consistency sample searched
(:func:`difflab.samplers.consistency_levels.search_levels`, Song et al. 2023's greedy search);
``--levels`` itself (of ``sample`` and ``eval``) is parsed in :mod:`difflab.cli.common`."""

from __future__ import annotations

import argparse

from .common import UsageError, parse_levels


def add_search_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--search-levels", action="store_true",
                   help="consistency sampler, --steps >= 2: first search the re-noising levels "
                   "that minimise the metric (FD to the train split, or a 2-D run's sliced W1 "
                   "to its training points), one level at a time (Song et al. 2023) by a grid "
                   "in ln σ refined by golden-section search, on x_T and noise of --seed + 1; "
                   "then evaluate with the levels found, as usual, at --seed, and report them "
                   "and the search under 'levels_search'")


def levels_arg(args, model) -> list[float] | None:
    """--levels of ``sample``/``eval`` (None when not given), checked to lie in the consistency
    model's [σ_min, σ_max]; :func:`~difflab.cli.common.sampling_args` has checked the rest."""
    levels = parse_levels(args.levels)
    if levels is None:
        return None
    from ..samplers.consistency import unbind

    f = unbind(model)[0]
    bad = [v for v in levels if not f.sigma_min <= v <= f.sigma_max]
    if bad:
        raise UsageError(f"--levels {bad} outside this model's [σ_min, σ_max] = "
                         f"[{f.sigma_min:.4g}, {f.sigma_max:.4g}]")
    return levels


def check_search(args, sampler: str, steps: int) -> None:
    if not args.search_levels:
        return
    if sampler != "consistency":
        raise UsageError(f"--search-levels applies to --sampler consistency only, not {sampler}")
    if steps < 2:
        raise UsageError("--search-levels needs --steps 2 or more (a 1-step sample is not "
                         "re-noised)")
    if args.levels is not None:
        raise UsageError("give --levels or --search-levels, not both")


def search_record(model, schedule, cfg, *, steps: int, n: int, seed: int, decode=None) -> dict:
    """Search the levels of a ``steps``-step sample of ``model`` on n draws of x_T and noise of
    ``seed``, scored by FD to the real train split (images, through ``decode`` for a latent
    run) or by sliced W1 to n training points (2-D). Returns the record eval reports."""
    import torch

    from ..build.data import model_shape
    from ..config import is_image
    from ..runs.draw import decoded, model_device
    from ..samplers.consistency import default_levels, unbind
    from ..samplers.consistency_levels import search_levels

    image = is_image(cfg.dataset)
    if image:
        from ..runs.cascade import fd_or_none

        fd = fd_or_none(cfg)
        if fd is None:
            raise UsageError("--search-levels scores FD, and no committed classifier fits this "
                             "run's images (a folder, or an image size without one)")

        def score(x):  # x (n, …): images, or a latent run's latents
            x = decoded(decode, x) if decode is not None else x  # (n, C, H, W)
            return fd.fd(x.float().cpu().clamp(-1.0, 1.0))
        metric, shape = "fd to the train split", model_shape(cfg)
    else:
        from ..data import toy2d
        from ..metrics import swd

        ref = toy2d.sample(cfg.dataset, n, cfg.seed)  # (n, 2) points of the training stream

        def score(x):
            return swd(x.float().cpu(), ref)
        metric, shape = "sliced W1 to training points", (2,)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, *shape, generator=g).to(model_device(model))  # (n, …)
    levels, value, history = search_levels(model, schedule, x_T, score, steps, seed=seed)
    default = default_levels(unbind(model)[0], schedule, steps)
    default_score = next(v for lv, v in history if lv == default)
    return {"levels": levels, "score": value, "default_levels": default,
            "default_score": default_score, "metric": metric, "n": n, "seed": seed,
            "probes": len(history)}
