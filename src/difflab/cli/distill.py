"""``difflab distill``: fewer sampling steps from a trained run (Weng §"Fewer Sampling Steps &
Distillation"), by progressive distillation (Salimans & Ho 2022, Alg. 2) or consistency
distillation (Song et al. 2023, Alg. 2; Weng eq. 31). The algorithms and run directories live
in :mod:`difflab.runs.distill`; this module turns flags into its arguments, and checks them
against the teacher's config before any training starts.

    difflab distill RUN --method progressive --rounds 4 [--start-steps 8] [--prediction v]
    difflab distill RUN --method consistency [--solver heun] [--N 18] [--distance l2]
    difflab distill --resume OUT [--stop-after K]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..config import CONSISTENCY_METHODS, IMAGE_SIZES
from .common import (
    PROG,
    UsageError,
    add_device_flags,
    add_progress_flag,
    check_output_dir,
    flag,
    training_progress,
    user_errors,
    writing_run,
)

METHODS = ("progressive", "consistency")
# flags of one method only: name → method
ONLY = {"rounds": "progressive", "start_steps": "progressive", "steps_per_round": "progressive",
        "prediction": "progressive", "guidance": "progressive",
        "solver": "consistency", "N": "consistency", "distance": "consistency",
        "iters": "consistency", "mu": "consistency"}
# flags that start a distillation, so that --resume (which continues one as it was) refuses them
FRESH = ("run", "method", "out", "overwrite", "lr", "batch", "seed", "threads", "no_eval",
         "init", "device", "precision", "compile", "checkpoint_every", *ONLY)


def add_parser(sub) -> None:
    """Add the ``distill`` command to the subparsers ``sub`` of ``difflab``."""
    from ..runs.distill import DEFAULT_START_STEPS, DISTANCES

    p = sub.add_parser(
        "distill", help="distil a run into a few-step sampler (progressive or consistency)",
        description="Distil the EMA network of a run written by 'difflab train' (or a "
        "progressive student) into a few-step sampler. Progressive: each round is a run "
        "directory OUT/steps-<N> that 'difflab sample' and 'eval' load (DDIM, N steps, "
        "trailing). Consistency: one run directory sampled with --sampler consistency "
        "--steps 1 or 2. The last line of standard output is the (last) run directory.")
    p.add_argument("run", metavar="RUN", nargs="?", help="teacher run directory")
    p.add_argument("--method", choices=METHODS,
                   help="progressive (Salimans & Ho 2022) or consistency (Song et al. 2023)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN-progressive or "
                   "RUN-consistency beside RUN)")
    p.add_argument("--overwrite", action="store_true", help="replace existing run directories")
    p.add_argument("--resume", metavar="OUT", help="continue the interrupted distillation in OUT "
                   "from its last checkpoint (no RUN, no other flags but --stop-after)")
    p.add_argument("--stop-after", type=int, metavar="K", help="stop after K total updates with "
                   "a checkpoint (continue later with --resume OUT)")
    p.add_argument("--checkpoint-every", type=int, metavar="K",
                   help="updates between checkpoints, also inside a round (default 500)")
    p.add_argument("--lr", type=float, help="AdamW peak learning rate, decayed linearly to 0 "
                   "(default: progressive a tenth of the teacher's, consistency 4e-4)")
    p.add_argument("--batch", type=int, help="batch size (default: the teacher's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batches, noise and any "
                   "fresh network (default 0)")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads (0: torch's "
                   "default; default: the teacher run's)")
    add_device_flags(p, compile=True, what="distillation")
    p.add_argument("--no-eval", action="store_true", help="skip the SWD / FD evaluation and "
                   "pictures after each run")
    add_progress_flag(p, training=True)
    p.add_argument("--init", choices=("auto", "copy", "fresh"), help="the (first) student: a "
                   "copy of the teacher's network, a fresh one, or auto (default; progressive: "
                   "a copy when it predicts the same thing; consistency: a copy, read as a "
                   "v-network, where the teacher predicts ε or v with a fixed variance)")
    g = p.add_argument_group("progressive")
    g.add_argument("--rounds", type=int, metavar="K", help="rounds N → N/2 → … (required)")
    g.add_argument("--start-steps", type=int, metavar="N", help="steps of the first student "
                   f"(its teacher takes 2N; default {DEFAULT_START_STEPS}, or half a "
                   "progressive teacher's)")
    g.add_argument("--steps-per-round", type=int, metavar="S",
                   help="optimizer updates per round (default 1000)")
    g.add_argument("--prediction", choices=("v", "x0", "eps"),
                   help="what the student predicts (default v; eps is unstable, §4)")
    g.add_argument("--guidance", type=float, metavar="W", help="distil the teacher with "
                   "classifier-free guidance of weight W (a class-conditional teacher; "
                   "default 0)")
    g = p.add_argument_group("consistency")
    g.add_argument("--solver", choices=("euler", "heun"), help="ODE solver Φ (default heun)")
    g.add_argument("--N", type=int, dest="N", help="discretisation levels (default 18)")
    g.add_argument("--distance", choices=DISTANCES, help="d(·,·) of eq. (31) (default l2; "
                   "features: the FD classifier's features, digits and mnist)")
    g.add_argument("--iters", type=int, help="optimizer updates (default 2000)")
    g.add_argument("--mu", type=float, help="decay of the target network θ⁻ (default 0.95)")
    p.set_defaults(run_command=run, fresh_defaults={k: p.get_default(k) for k in FRESH})


def run(args: argparse.Namespace) -> int:
    if args.stop_after is not None and args.stop_after < 1:
        raise UsageError(f"--stop-after must be at least 1, got {args.stop_after}")
    if args.resume is not None:
        return resume(args)
    if args.run is None or args.method is None:
        raise UsageError(f"distill needs RUN and --method (or --resume OUT) (see '{PROG} "
                         "distill --help')")
    check_flags(args)
    from ..runs.load import read_run_config

    run_dir = Path(args.run)
    check_teacher(args, read_run_config(run_dir))
    out = Path(args.out) if args.out else run_dir.with_name(f"{run_dir.name}-{args.method}")
    check_output_dir(out)
    common = dict(lr=args.lr, batch=args.batch, seed=args.seed, threads=args.threads,
                  overwrite=args.overwrite, progress=training_progress(args),
                  evaluate=not args.no_eval, init=args.init or "auto", device=args.device,
                  precision=args.precision, compile=args.compile, max_steps=args.stop_after)
    if args.checkpoint_every is not None:
        common["checkpoint_every"] = args.checkpoint_every
    with writing_run(out):
        return distill(args, run_dir, out, common)


def distill(args: argparse.Namespace, run_dir: Path, out: Path, common: dict) -> int:
    from ..runs.distill import distill_consistency, distill_progressive

    if args.method == "progressive":
        per_round = args.steps_per_round or 1000
        dirs = distill_progressive(
            run_dir, out, rounds=args.rounds, start_steps=args.start_steps,
            steps_per_round=per_round, prediction=args.prediction or "v",
            guidance=args.guidance or 0.0, report=report, **common)
        # no round finished yet when --stop-after stops inside the first: OUT is the last word
        return finish(args, out, dirs[-1] if dirs else out, args.rounds * per_round)
    out_dir, metrics = distill_consistency(
        run_dir, out, solver=args.solver or "heun", N=18 if args.N is None else args.N,
        distance=args.distance or "l2", iters=args.iters or 2000,
        mu=0.95 if args.mu is None else args.mu, **common)
    return finish(args, out, out_dir, args.iters or 2000, metrics)


def resume(args: argparse.Namespace) -> int:
    """``distill --resume OUT``: continue the distillation in OUT as it was started."""
    from ..runs.distill import resume_distillation

    changed = [k for k, v in args.fresh_defaults.items() if getattr(args, k) != v]
    if changed:
        what = "RUN" if changed[0] == "run" else flag(changed[0])
        raise UsageError(f"--resume continues a distillation as it was started; drop {what}")
    out = Path(args.resume)
    if not out.is_dir():
        raise UsageError(f"--resume {out}: no such directory")
    with writing_run(out):
        result = resume_distillation(out, progress=training_progress(args),
                                     max_steps=args.stop_after, report=report)
    if isinstance(result, tuple):  # consistency: (run directory, metrics)
        return finish(args, out, result[0], None, result[1])
    return finish(args, out, result[-1] if result else out, None)


def finish(args, out: Path, last: Path, total: int | None, metrics: dict | None = None) -> int:
    """Print the outcome; the last line is the last run directory, or OUT if stopped early.
    ``total``: the updates of the whole distillation (None when resumed: then it is finished
    when its last run directory has its metrics)."""
    from ..runs import checkpoint as ckpt

    if args.stop_after is None:
        stopped = False
    elif total is not None:
        stopped = args.stop_after < total
    else:
        stopped = not (Path(last) / ckpt.METRICS).is_file()
    if stopped:
        print(f"stopped after update {args.stop_after}; continue with: {PROG} distill "
              f"--resume {out}")
        print(out)
        return 0
    if metrics is not None:
        print(summary(last, metrics))
    print(last)
    return 0


def report(run_dir: Path, metrics: dict) -> None:
    print(summary(run_dir, metrics), flush=True)


def check_flags(args: argparse.Namespace) -> None:
    """The flags on their own: method-specific flags, ranges."""
    for name, method in ONLY.items():
        if getattr(args, name) is not None and method != args.method:
            raise UsageError(f"{flag(name)} applies to --method {method} only")
    if args.method == "progressive" and args.rounds is None:
        raise UsageError("--method progressive needs --rounds K")
    for name, low in (("batch", 1), ("steps_per_round", 1), ("iters", 1), ("rounds", 1),
                      ("checkpoint_every", 1), ("threads", 0), ("N", 2)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise UsageError(f"{flag(name)} must be at least {low}, got {value}")
    if args.lr is not None and not 0 < args.lr < math.inf:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if args.mu is not None and not 0 <= args.mu < 1:
        raise UsageError(f"--mu must lie in [0, 1), got {args.mu}")
    if args.guidance is not None and not 0 <= args.guidance < math.inf:
        raise UsageError(f"--guidance must be a number >= 0, got {args.guidance}")


def check_teacher(args: argparse.Namespace, t) -> None:
    """The flags against the teacher's config ``t``, before any weights are loaded."""
    from ..runs.distill import DEFAULT_START_STEPS, round_steps

    if t.method in CONSISTENCY_METHODS:
        raise UsageError(f"{args.run} is a consistency model; distil a diffusion run or a "
                         "progressive student")
    if t.cond not in ("none", "class"):
        raise UsageError(f"distilling a {t.cond!r}-conditional run is not implemented; distil "
                         "an unconditional or class-conditional run")
    copy = args.init == "copy"
    if args.method == "progressive":
        start = args.start_steps
        if start is None:
            start = t.distilled_steps // 2 if t.method == "progressive" else DEFAULT_START_STEPS
        if t.method == "progressive" and 2 * start != t.distilled_steps:
            raise UsageError(f"{args.run} was distilled for {t.distilled_steps} steps; its "
                             f"student must take half as many (--start-steps "
                             f"{t.distilled_steps // 2})")
        with user_errors():
            round_steps(start, args.rounds, t.T)
        if args.guidance and t.cond != "class":
            raise UsageError("--guidance needs a class-conditional teacher (train it with "
                             "--cond class)")
        if copy and t.variance == "learned":
            raise UsageError(f"--init copy needs a teacher with a fixed variance (the same "
                             f"network shape); {args.run} learns Σ_θ")
        return
    if args.distance == "features" and t.dataset not in IMAGE_SIZES:
        raise UsageError(f"--distance features needs digits or mnist (a committed "
                         f"classifier), not {t.dataset}")
    if copy and not (t.variance != "learned" and t.prediction in ("eps", "v")):
        raise UsageError("--init copy needs a teacher whose network predicts ε or v with a "
                         f"fixed variance ({args.run} has variance {t.variance!r}, prediction "
                         f"{t.prediction!r}); use --init fresh")


def summary(run_dir: Path, m: dict) -> str:
    """One line per written run: what it samples with and how well (if evaluated)."""
    what = f"{m['sampler']} {m['steps']} steps: " if "sampler" in m else ""
    score = (f"FD {m['fd']:.2f} (floor {m['fd_floor']:.2f})" if "fd" in m else
             f"SWD {m['swd']:.4f} (floor {m['swd_floor']:.4f})" if "swd" in m else "not evaluated")
    trained = f"; trained {m['train_steps']} steps" if "train_steps" in m else ""
    if trained and "train_seconds" in m:
        trained += f" in {m['train_seconds']:.1f} s"
    return f"{run_dir}: {what}{score}{trained}"
