"""Cascades on the command line (Ho et al. 2021, "Cascaded Diffusion Models"; Saharia et al.
2022, Imagen): ``difflab sample --cascade BASE_RUN,SR_RUN[,SR_RUN2…] [--aug-level S] …`` and
``difflab eval SR_RUN [--base BASE_RUN] [--aug-level S]``; the helpers ``sample`` and
``evaluate`` call (:mod:`difflab.runs.cascade` does the work).

Every stage samples with its run's ``eval_*`` settings unless ``--sampler``, ``--steps``,
``--eta``, ``--spacing``, ``--guidance`` or ``--threshold`` set them for all stages, or
``--stage-sampler``, ``--stage-steps``, ``--stage-guidance`` (comma lists, one entry per stage,
``-`` for the default) for one; ``--class`` and ``--prompt`` are shared by every stage."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import UsageError, check_output_file, flag, user_errors, writing

STAGE_FLAGS = {"stage_sampler": ("sampler", str), "stage_steps": ("steps", int),
               "stage_guidance": ("guidance", float)}
SHARED = ("sampler", "steps", "eta", "spacing", "guidance", "threshold")
NOT_FOR_CASCADES = ("classifier", "threshold_p", "hint", "hint_from_data", "control_scale",
                    "levels")


def add_cascade_flags(p: argparse.ArgumentParser) -> None:
    """``sample``'s cascade flags; RUN becomes optional (``--cascade`` names the runs)."""
    g = p.add_argument_group("cascades (base run → super-resolution runs)")
    g.add_argument("--cascade", metavar="BASE,SR[,SR2…]",
                   help="sample a cascade instead of RUN: a base run, then super-resolution runs "
                   "(sr_low_res = the previous stage's size), each stage conditioned on the "
                   "previous one's samples")
    g.add_argument("--aug-level", metavar="S[,S…]",
                   help="noise-conditioning augmentation level s in 0..T of each "
                   "super-resolution stage, one value or one per stage (gaussian runs: z "
                   "forward-diffused to s; truncated runs: the previous chain stops at step s; "
                   "default: each run's sr_aug_level)")
    g.add_argument("--stage-sampler", metavar="NAMES",
                   help="one sampler per stage, comma-separated ('-': the default)")
    g.add_argument("--stage-steps", metavar="S,S…", help="sampling steps per stage")
    g.add_argument("--stage-guidance", metavar="W,W…", help="guidance weight per stage")
    for action in p._actions:  # argparse has no public way to relax a positional
        if action.dest == "run":
            action.nargs, action.required, action.default = "?", False, None


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    """``eval``'s flags for a super-resolution run."""
    g = p.add_argument_group("super-resolution runs")
    g.add_argument("--base", metavar="BASE_RUN",
                   help="also super-resolve this base run's samples (fd_base, fd_gap)")
    g.add_argument("--aug-level", type=int, metavar="S",
                   help="augmentation level s at sampling (default: the run's sr_aug_level)")


def cascade_requested(args: argparse.Namespace) -> bool:
    """Whether ``sample`` samples a cascade (``--cascade``); UsageError for a RUN given with
    it, or neither given."""
    if args.cascade is None:
        if args.run is None:
            raise UsageError("give a RUN, or a cascade with --cascade BASE_RUN,SR_RUN")
        given = [f for f in ("aug_level", *STAGE_FLAGS) if getattr(args, f) is not None]
        if given:
            raise UsageError(f"{flag(given[0])} applies to --cascade only")
        return False
    if args.run is not None:
        raise UsageError("give either a RUN or --cascade, not both")
    return True


def check_plain_run(args: argparse.Namespace, cfg) -> None:
    """UsageError for a super-resolution run sampled on its own (it needs a low-res image)."""
    if cfg.sr_low_res:
        raise UsageError(f"{args.run} is a super-resolution run ({cfg.sr_low_res} → "
                         f"{cfg.image_size or 'its size'}); sample it in a cascade: --cascade "
                         f"BASE_RUN,{args.run}")


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{what} takes integers like 50 or 50,100, got {text!r}") from None


def stage_options(args: argparse.Namespace, stages: int) -> list[dict]:
    """Each stage's sampler options from the shared flags and the per-stage lists."""
    shared = {k: getattr(args, k) for k in SHARED if getattr(args, k, None) is not None}
    options = [dict(shared) for _ in range(stages)]
    for name, (key, kind) in STAGE_FLAGS.items():
        text = getattr(args, name)
        if text is None:
            continue
        values = text.split(",")
        if len(values) != stages:
            raise UsageError(f"{flag(name)} needs {stages} comma-separated values (one per "
                             f"stage, '-' for the default), got {text!r}")
        for k, v in enumerate(values):
            if v.strip() in ("-", ""):
                continue
            try:
                options[k][key] = kind(v)
            except ValueError:
                raise UsageError(f"{flag(name)}: bad value {v!r}") from None
    return options


def run_cascade(args: argparse.Namespace, write_samples) -> int:
    """``difflab sample --cascade …``: the top stage's images to ``--out`` (.npy or .png)."""
    from ..runs.cascade import sample_cascade

    for name in NOT_FOR_CASCADES:
        if getattr(args, name, None) is not None:
            raise UsageError(f"{flag(name)} does not apply to --cascade")
    out = Path(args.out)
    if out.suffix not in (".npy", ".png"):
        raise UsageError(f"--out of a cascade must end in .npy or .png, got {args.out!r}")
    check_output_file(out)
    runs = [r.strip() for r in args.cascade.split(",") if r.strip()]
    levels = _ints(args.aug_level, "--aug-level")
    if levels is not None and len(levels) == 1:
        levels = levels[0]
    n = 1000 if args.n is None else args.n
    if n < 1:
        raise UsageError(f"-n must be at least 1, got {n}")
    with user_errors():
        images = sample_cascade(runs, n, seed=args.seed, device=args.device, aug_level=levels,
                                stage_options=stage_options(args, len(runs)),
                                labels=_ints(args.labels, "--class"),
                                prompt=args.prompt)[-1]
    with writing(out):
        write_samples(images.float(), out, None, True, title="cascade")
    print(out)
    return 0


def run_sr_eval(args: argparse.Namespace) -> int:
    """``difflab eval SR_RUN [--base BASE_RUN]``: FD and PSNR of the run on the test split's
    low-resolution images (and on the base's samples) as JSON."""
    from ..runs.cascade import evaluate_super_resolution

    for name in ("classifier", "threshold_p", "labels", "prompt", "levels"):
        if getattr(args, name, None) is not None:
            raise UsageError(f"{flag(name)} does not apply to a super-resolution run's eval")
    if getattr(args, "search_levels", False):
        raise UsageError("--search-levels does not apply to a super-resolution run's eval")
    opts = {k: getattr(args, k) for k in SHARED if getattr(args, k, None) is not None}
    with user_errors():
        metrics = evaluate_super_resolution(args.run, base_run=args.base, n=args.n,
                                            seed=args.seed, device=args.device,
                                            aug_level=args.aug_level,
                                            stage_options=[{}, opts])[0]
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0
