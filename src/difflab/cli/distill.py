"""``difflab distill``: fewer sampling steps from a trained run (Weng §"Fewer Sampling Steps &
Distillation"), by progressive distillation (Salimans & Ho 2022, Alg. 2) or consistency
distillation (Song et al. 2023, Alg. 2; Weng eq. 31). The algorithms and run directories live
in :mod:`difflab.distill.runs`; this module only turns flags into its arguments.

    difflab distill RUN --method progressive --rounds 4 [--start-steps 8] [--prediction v]
    difflab distill RUN --method consistency [--solver heun] [--N 18] [--distance l2]

Errors follow the rest of the CLI: one line ``difflab: error: …``, exit code 2.
"""

from __future__ import annotations

from pathlib import Path

from . import UsageError, _flag, _progress

METHODS = ("progressive", "consistency")
# flags of one method only: name → method (None = not given)
_ONLY = {"rounds": "progressive", "start_steps": "progressive",
         "steps_per_round": "progressive", "prediction": "progressive",
         "guidance": "progressive",
         "solver": "consistency", "N": "consistency", "distance": "consistency",
         "iters": "consistency", "mu": "consistency"}


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
    p.add_argument("run", metavar="RUN", help="teacher run directory")
    p.add_argument("--method", required=True, choices=METHODS,
                   help="progressive (Salimans & Ho 2022) or consistency (Song et al. 2023)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN-progressive or "
                   "RUN-consistency beside RUN)")
    p.add_argument("--overwrite", action="store_true", help="replace existing run directories")
    p.add_argument("--lr", type=float, help="AdamW peak learning rate, decayed linearly to 0 "
                   "(default: progressive a tenth of the teacher's, consistency 4e-4)")
    p.add_argument("--batch", type=int, help="batch size (default: the teacher's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batches, noise and any "
                   "fresh network (default 0)")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads (0: torch's "
                   "default; default: the teacher run's)")
    p.add_argument("--no-eval", action="store_true", help="skip the SWD / FD evaluation and "
                   "pictures after each run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    p.add_argument("--init", choices=("auto", "copy", "fresh"), help="the (first) student: a "
                   "copy of the teacher's network, a fresh one, or auto (default; progressive: "
                   "a copy when it predicts the same thing; consistency: a copy, read as a "
                   "v-network, where the teacher predicts ε or v with a fixed variance)")
    g = p.add_argument_group("consistency")
    g.add_argument("--solver", choices=("euler", "heun"), help="ODE solver Φ (default heun)")
    g.add_argument("--N", type=int, dest="N", help="discretisation levels (default 18)")
    g.add_argument("--distance", choices=DISTANCES, help="d(·,·) of eq. (31) (default l2; "
                   "features: the FD classifier's features, digits and mnist)")
    g.add_argument("--iters", type=int, help="optimizer updates (default 2000)")
    g.add_argument("--mu", type=float, help="decay of the target network θ⁻ (default 0.95)")


def cmd_distill(args) -> int:
    from ..runs.distill import distill_consistency, distill_progressive

    for name, method in _ONLY.items():
        if getattr(args, name) is not None and method != args.method:
            raise UsageError(f"{_flag(name) if name != 'N' else '--N'} applies to --method "
                             f"{method} only")
    for name in ("batch", "steps_per_round", "iters"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"{_flag(name)} must be at least 1, got {value}")
    if args.lr is not None and not 0 < args.lr < float("inf"):
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if args.mu is not None and not 0 <= args.mu < 1:
        raise UsageError(f"--mu must lie in [0, 1), got {args.mu}")
    run = Path(args.run)
    out = Path(args.out) if args.out else run.with_name(f"{run.name}-{args.method}")
    common = dict(lr=args.lr, batch=args.batch, seed=args.seed, threads=args.threads,
                  overwrite=args.overwrite,
                  progress=_progress(args), evaluate=not args.no_eval)
    if args.method == "progressive":
        if args.rounds is None:
            raise UsageError("--method progressive needs --rounds K")
        dirs = distill_progressive(
            run, out, rounds=args.rounds, start_steps=args.start_steps,
            steps_per_round=args.steps_per_round or 1000, prediction=args.prediction or "v",
            init=args.init or "auto", guidance=args.guidance or 0.0,
            report=lambda d, m: print(_summary(d, m), flush=True),
            **common)
        print(dirs[-1])
        return 0
    out_dir, metrics = distill_consistency(
        run, out, solver=args.solver or "heun", N=18 if args.N is None else args.N,
        distance=args.distance or "l2", iters=args.iters or 2000,
        mu=0.95 if args.mu is None else args.mu, init=args.init or "auto", **common)
    print(_summary(out_dir, metrics))
    print(out_dir)
    return 0


def _summary(run_dir: Path, m: dict) -> str:
    """One line per written run: what it samples with and how well (if evaluated)."""
    what = (f"{m['sampler']} {m['steps']} steps: " if "sampler" in m else "")
    score = (f"FD {m['fd']:.2f} (floor {m['fd_floor']:.2f})" if "fd" in m else
             f"SWD {m['swd']:.4f} (floor {m['swd_floor']:.4f})" if "swd" in m else "not evaluated")
    return f"{run_dir}: {what}{score}; trained {m['train_steps']} steps in " \
           f"{m['train_seconds']:.1f} s"
