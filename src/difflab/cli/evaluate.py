"""``difflab eval RUN``: SWD (2-D) or FD (images) of a sampler against its floor, as JSON; with
``--nll``, test-set bits/dim from the full VLB and the probability-flow ODE instead.

``--precision`` applies to sampling (the network under autocast); ``--nll`` always scores in
float32 (a bound in bits/dim is a sum of small differences that bf16 would swamp)."""

from __future__ import annotations

import argparse
import json

from ..config import CONSISTENCY_METHODS, is_image
from .cascade import add_eval_flags, run_sr_eval
from .common import (
    SAMPLING_FLAGS,
    UsageError,
    add_sampling_flags,
    autocast_network,
    flag,
    sampling_args,
    show_progress,
    user_errors,
)
from .guidance_flags import GUIDANCE_FLAGS, add_guidance_flags, guidance_record, guided_from_args
from .levels import add_search_flag, check_search, levels_arg, search_record

NLL_N_IMAGES, NLL_N_POINTS, NLL_ODE_STEPS = 64, 1000, 100  # eval --nll defaults
NLL_FLAGS = ("ode_steps", "hutchinson_samples")


def add_parser(sub) -> None:
    what = ("print SWD (2-D) or FD (images) and its floor for a sampler, or with --nll "
            "test-set bits/dim (JSON)")
    p = sub.add_parser("eval", help=what, description=what[0].upper() + what[1:] + ".")
    add_sampling_flags(p, n_help="number of samples (default: the run's n_eval; with --nll "
                       f"test images, default {NLL_N_IMAGES}, or 2-D held-out points, default "
                       f"{NLL_N_POINTS})")
    add_guidance_flags(p)
    p.add_argument("--nll", action="store_true",
                   help="instead of sampling, print test-set bits/dim from the full VLB (all T "
                   "terms) and from the probability-flow ODE (Hutchinson), with standard "
                   f"errors, on -n test images (default {NLL_N_IMAGES}) or, for 2-D runs, "
                   f"held-out points (default {NLL_N_POINTS}; bits/dim of a density)")
    p.add_argument("--ode-steps", type=int, metavar="S",
                   help=f"with --nll: timesteps of the ODE's grid, 1..T (default {NLL_ODE_STEPS})")
    p.add_argument("--hutchinson-samples", type=int, metavar="K",
                   help="with --nll: Hutchinson probes per item (default 1)")
    add_search_flag(p)
    add_eval_flags(p)
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    from ..runs.load import load_run
    from ..training.backend import torch_threads

    if args.nll:
        return run_nll(args)
    for name in NLL_FLAGS:
        if getattr(args, name) is not None:
            raise UsageError(f"{flag(name)} applies to --nll only")
    cfg, model, schedule = load_run(args.run, device=args.device)
    if cfg.sr_low_res:  # a super-resolution run: FD and PSNR on low-res images (cli/cascade.py)
        return run_sr_eval(args)
    if args.base is not None or args.aug_level is not None:
        raise UsageError(f"{flag('base' if args.base else 'aug_level')} applies to a "
                         "super-resolution run only")
    sampler, steps, eta, n, spacing = sampling_args(args, cfg, cfg.n_eval)
    check_search(args, sampler, steps)
    levels = levels_arg(args, model)
    model = autocast_network(model, args.precision)
    model, labels = guided_from_args(args, cfg, model, schedule, sampler, steps, n)
    from ..runs.draw import model_device
    from ..runs.latent import load_codec

    codec = load_codec(args.run, cfg, model_device(model))  # a latent run: decode
    decode = codec.decode if codec is not None else None
    if is_image(cfg.dataset) and n < 2:
        raise UsageError(f"FD needs at least 2 samples, got -n {n}")
    search = None
    if args.search_levels:  # on x_T and noise of seed + 1, then evaluated as usual at seed
        with torch_threads(cfg.threads):
            search = search_record(model, schedule, cfg, steps=steps, n=n, seed=args.seed + 1,
                                   decode=decode)
        levels = search["levels"]
    if is_image(cfg.dataset):
        from ..runs.evaluate import evaluate_images

        with torch_threads(cfg.threads):
            metrics = evaluate_images(model, schedule, cfg, sampler=sampler, steps=steps, eta=eta,
                                      spacing=spacing, n=n, seed=args.seed,
                                      variance=cfg.variance, progress=show_progress(args),
                                      labels=labels, decode=decode, levels=levels)[0]
        metrics.update(guidance_record(args, cfg))
    else:
        from ..runs.evaluate import evaluate

        with torch_threads(cfg.threads):
            metrics = evaluate(model, schedule, cfg.dataset, sampler=sampler, steps=steps,
                               eta=eta, spacing=spacing, n=n, seed=args.seed,
                               data_seed=cfg.seed, variance=cfg.variance,
                               progress=show_progress(args), levels=levels).metrics
    if search is not None:
        metrics["levels_search"] = search
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def run_nll(args: argparse.Namespace) -> int:
    """``eval RUN --nll``: bits/dim from the VLB and the ODE as JSON (difflab.runs.nll_eval)."""
    from ..runs.load import load_run
    from ..runs.nll_eval import evaluate_nll, nll_data
    from ..training.backend import torch_threads

    for name in (*SAMPLING_FLAGS, *GUIDANCE_FLAGS):
        if getattr(args, name) is not None:
            raise UsageError(f"{flag(name)} does not apply to --nll (it scores test data, it "
                             "does not sample)")
    if args.search_levels:
        raise UsageError("--search-levels does not apply to --nll (it scores test data, it "
                         "does not sample)")
    if args.precision != "fp32":
        raise UsageError("--precision does not apply to --nll (bits/dim are computed in fp32)")
    cfg, model, schedule = load_run(args.run, device=args.device)
    if cfg.autoencoder:
        raise UsageError("--nll is not defined for a latent run: its bound is on the latents z, "
                         "whose density is not one of images (the deterministic decoder "
                         "gives the pixels no density); evaluate FD instead")
    if cfg.method in CONSISTENCY_METHODS:
        raise UsageError("--nll needs an ε-model (a diffusion run or a progressive student); "
                         "this run is a consistency model")
    n = args.n if args.n is not None else NLL_N_IMAGES if is_image(cfg.dataset) else NLL_N_POINTS
    ode_steps = min(NLL_ODE_STEPS, cfg.T) if args.ode_steps is None else args.ode_steps
    if not 1 <= ode_steps <= cfg.T:
        raise UsageError(f"--ode-steps must lie in 1..T (T = {cfg.T} for this run), got "
                         f"{ode_steps}")
    probes = 1 if args.hutchinson_samples is None else args.hutchinson_samples
    if probes < 1:
        raise UsageError(f"--hutchinson-samples must be at least 1, got {probes}")
    with user_errors():  # -n against the size of the test split
        nll_data(cfg, n)
    with torch_threads(cfg.threads):
        metrics = evaluate_nll(model, schedule, cfg, n=n, seed=args.seed, ode_steps=ode_steps,
                               hutchinson_samples=probes)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0
