"""What every ``difflab`` subcommand shares: the parser class, :class:`UsageError`, flag names,
the progress, device and precision flags, the sampling flags of ``sample`` and ``eval``, and
the one-line error format.

Error policy (applied by :func:`difflab.cli.main`): difflab's own errors
(:class:`difflab.errors.DifflabError`: config, checkpoint, backend errors and the
:class:`UsageError` of this package) and argparse's errors end as one line
``difflab: error: …`` and exit code 2. Any other exception is a bug and keeps its traceback.
Where the library reports a user's mistake with a plain ``ValueError``, the subcommand wraps
that one call in :func:`user_errors`; paths are checked before the library sees them.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ..config import CONSISTENCY_METHODS, DEVICES, NO_SPACING, PRECISIONS, SCORE_METHODS
from ..errors import DifflabError
from ..samplers import SAMPLERS, SPACING_NAMES, grids_of

PROG = "difflab"
EXIT_USAGE = 2
SAMPLER_NAMES = tuple(SAMPLERS)  # every sampler registered in difflab.samplers


class UsageError(DifflabError):
    """Bad command-line input; printed as one line (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors raised as :class:`UsageError` (one line, no usage block)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def flag(name: str) -> str:
    """The flag of a config field or argument name: ``eval_steps`` → ``--eval-steps``."""
    if name in ("T", "N"):
        return f"--{name}"
    if name == "n":
        return "-n"
    return "--" + {"labels": "class"}.get(name, name).replace("_", "-")


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (an OSError: its reason and its file)."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.strerror or err}: {err.filename}"
    return " ".join(str(err).split()) or type(err).__name__


@contextmanager
def user_errors(prefix: str = "") -> Iterator[None]:
    """Turn the ``ValueError`` (or an ``OSError`` naming a file) of the library call inside the
    block into a :class:`UsageError`. Wrap only calls whose ValueErrors are the user's
    mistakes (argument checks, config parsing), never a whole computation: a bug must keep its
    traceback."""
    try:
        yield
    except DifflabError:
        raise
    except ValueError as err:
        raise UsageError(prefix + one_line(err)) from None
    except OSError as err:
        if err.filename is None:
            raise
        raise UsageError(prefix + one_line(err)) from None


@contextmanager
def writing(path, what: str = "--out") -> Iterator[None]:
    """An OSError while writing the user's output file becomes a one-line UsageError."""
    try:
        yield
    except OSError as err:
        raise UsageError(f"cannot write {what} {path}: {err.strerror or one_line(err)}") from None


def check_output_file(path, what: str = "--out") -> None:
    """UsageError unless ``path`` can be created: its directory exists, it is not one."""
    from pathlib import Path

    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(f"the directory of {what}, {path.parent}, does not exist")
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory; give a file name")


def check_output_dir(path, what: str = "--out") -> None:
    """UsageError unless directory ``path`` exists or can be made: its nearest existing
    ancestor is a directory this process may write to."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{what} {path} exists and is not a directory")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{what} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: cannot create it in {parent} (permission denied)")


# --- warnings and skipped files -----------------------------------------------------------------
SKIPPED_FILES = "skipped_files.txt"


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` of the command: ``difflab: warning: …`` on one line, without
    the source line Python adds (the category is named unless it is a plain UserWarning)."""
    kind = "" if category is UserWarning else f"{category.__name__}: "
    return f"{PROG}: warning: {kind}{' '.join(str(message).split())}\n"


@contextmanager
def listing_skipped_files(run_dir) -> Iterator[None]:
    """Around a command that writes ``run_dir``: the image files a folder dataset skipped (each
    also reported in one warning line) are listed in ``run_dir/skipped_files.txt``, one path
    per line (``folder/relative path``), and one line on stderr says so."""
    from pathlib import Path

    from ..data.images import collect_skipped
    from ..training.backend import world

    with collect_skipped() as found:
        try:
            yield
        finally:
            run_dir = Path(run_dir)
            if found and run_dir.is_dir() and world()[0] == 0:
                from ..runs.checkpoint import atomic_write_bytes

                paths = [str(Path(root) / f) for root, files in found.items() for f in files]
                atomic_write_bytes(run_dir / SKIPPED_FILES, ("\n".join(paths) + "\n").encode())
                print(f"{PROG}: {len(paths)} unreadable image file(s) were skipped; listed in "
                      f"{run_dir / SKIPPED_FILES}", file=sys.stderr)


@contextmanager
def writing_run(run_dir) -> Iterator[None]:
    """Around a command that writes the run directory ``run_dir``: its lock (one trainer per
    run directory, :mod:`difflab.runs.lock`; taken by the first process) and the list of the
    image files skipped (:func:`listing_skipped_files`)."""
    from ..runs.lock import run_lock
    from ..training.backend import world

    with run_lock(run_dir, world()[0] == 0), listing_skipped_files(run_dir):
        yield


# --- progress, device, precision ----------------------------------------------------------------
def add_progress_flag(p: argparse.ArgumentParser, training: bool = False) -> None:
    what = ("no progress bar on a terminal, and no periodic progress line (step, loss, steps/s, "
            "ETA) on stderr without one" if training else "no progress bar")
    p.add_argument("--no-progress", action="store_true", help=what)


def show_progress(args: argparse.Namespace) -> bool:
    """A progress bar on a terminal, unless --no-progress, and only on the first process
    (sampling: a bar or nothing)."""
    from ..training.backend import world

    return not args.no_progress and sys.stderr.isatty() and world()[0] == 0


def training_progress(args: argparse.Namespace) -> bool:
    """The ``progress`` of a training or distillation: on unless --no-progress, on the first
    process only. The loop draws a bar on a terminal and otherwise prints a one-line record
    every 30 s (``difflab.training.loop.ProgressRecord``), so a run under ``nohup`` or with
    its output redirected still reports."""
    from ..training.backend import world

    return not args.no_progress and world()[0] == 0


def device_name(text: str) -> str:
    """argparse type of --device: auto, cpu, cuda, cuda:K or mps."""
    if text.split(":")[0] not in DEVICES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(DEVICES)} (or cuda:K), "
                                         f"got {text!r}")
    return text


def add_device_flags(p: argparse.ArgumentParser, *, compile: bool = False,
                     what: str = "sampling") -> None:
    """--device and --precision (and --compile/--no-compile) for a command that is not driven
    by a TrainConfig (``train`` gets them from its config fields)."""
    p.add_argument("--device", type=device_name, default="auto", metavar="DEVICE",
                   help=f"where {what} runs: {', '.join(DEVICES)} (auto: CUDA if present, else "
                   "the CPU; default auto)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help=f"autocast precision of the network in {what} (fp16: CUDA only; "
                   "default fp32)")
    if compile:
        p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                       help="torch.compile the network (default: off)")


def autocast_network(model, precision: str):
    """``model`` with its forward under autocast in ``precision`` (fp32: unchanged) and its
    output cast back to float32, so a sampler's own arithmetic stays in float32. The object
    and its type are kept (samplers recognise consistency models by their class)."""
    import torch

    from ..runs.draw import model_device
    from ..training.backend import autocast_dtype, check_precision

    device = model_device(model)
    check_precision(precision, device)
    dtype = autocast_dtype(precision)
    if dtype is None:
        return model
    inner = model.forward

    def forward(*args, **kwargs):
        with torch.autocast(device.type, dtype=dtype):
            out = inner(*args, **kwargs)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

    model.forward = forward
    return model


# --- the sampling flags of sample and eval -----------------------------------------------------
def add_sampling_flags(p: argparse.ArgumentParser, n_help: str) -> None:
    p.add_argument("run", metavar="RUN", help="run directory written by 'difflab train'")
    p.add_argument("--sampler", help=f"one of {', '.join(SAMPLER_NAMES)} "
                   "(default: the run's eval_sampler)")
    p.add_argument("--steps", type=int, help="sampling steps, 1..T (default: the run's "
                   "eval_steps)")
    p.add_argument("--eta", type=float, help="DDIM η >= 0 (default 0: deterministic)")
    p.add_argument("--spacing", choices=("auto", *SPACING_NAMES), metavar="GRID",
                   help="timestep grid: linspace, leading or trailing (every sampler; "
                   "difflab.samplers.timesteps); for dpm++, dpm++sde and unipc also logsnr, "
                   "karras, angle, blend or capped-blend (difflab.samplers.dpm_solver."
                   "dpm_timesteps); karras "
                   "for edm-heun (its default) and geometric for langevin (its default); auto: "
                   "leading on the cosine schedule for the samplers without a default of their "
                   "own, else the sampler's default (for dpm++, dpm++sde and unipc trailing "
                   "below 10 steps; from 10 logsnr, or capped-blend for unipc); default: the "
                   "run's eval_spacing")
    p.add_argument("-n", type=int, help=n_help)
    p.add_argument("--seed", type=int, default=0, help="seed of x_T and sampler noise")
    add_levels_flag(p)
    add_progress_flag(p)
    add_device_flags(p)


SAMPLING_FLAGS = ("sampler", "steps", "eta", "spacing", "levels")


# --- --levels: a consistency sample's re-noising levels (eval --search-levels: cli/levels.py) ---
def add_levels_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--levels", metavar="SIGMAS",
                   help="consistency sampler: the re-noising levels σ of a multistep sample, "
                   "comma-separated and decreasing, one fewer than --steps (which they set "
                   "when it is not given); default: σ at DDIM's trailing timesteps (σ ≈ 3.4 "
                   "for 2 steps on the linear schedule); 'difflab eval --search-levels' "
                   "searches for better ones")


def parse_levels(text: str | None) -> list[float] | None:
    """--levels "3.0,0.8" → [3.0, 0.8]; UsageError unless positive, finite and decreasing."""
    if text is None:
        return None
    try:
        levels = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--levels must be comma-separated numbers (σ's), got {text!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in levels):
        raise UsageError(f"--levels must be positive σ's, got {text!r}")
    if any(b >= a for a, b in zip(levels, levels[1:], strict=False)):
        raise UsageError(f"--levels must decrease (Song et al.'s τ_1 > τ_2 > …), got {text!r}")
    return levels


def levels_for(args, sampler: str, steps: int | None) -> tuple[list[float] | None, int | None]:
    """(levels, steps) from --levels and --steps: the levels set the steps when --steps is not
    given; UsageError for another sampler or a count that does not fit."""
    levels = parse_levels(getattr(args, "levels", None))
    if levels is None:
        return None, steps
    if sampler != "consistency":
        raise UsageError(f"--levels applies to --sampler consistency only, not {sampler}")
    if steps is None:
        return levels, len(levels) + 1
    if steps != len(levels) + 1:
        raise UsageError(f"--steps {steps} re-noises {steps - 1} times; --levels gives "
                         f"{len(levels)} level(s): give {steps - 1}, or leave --steps out")
    return levels, steps


def sampling_args(args, cfg, n_default: int) -> tuple[str, int, float, int, str | None]:
    """Check the sampling flags against the run's config; return
    (sampler, steps, eta, n, spacing)."""
    from ..config import spacing_for

    sampler = args.sampler or cfg.eval_sampler
    if sampler not in SAMPLER_NAMES:
        raise UsageError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    consistency = cfg.method in CONSISTENCY_METHODS
    if consistency and sampler != "consistency":
        raise UsageError(f"this run is a consistency model; sample it with --sampler "
                         f"consistency (1 or a few steps), not {sampler!r}")
    if sampler == "consistency" and not consistency:
        raise UsageError("--sampler consistency needs a consistency model (a run of 'difflab "
                         "distill --method consistency' or 'train --method "
                         "consistency-training'); this run is an ε-model")
    if cfg.method in SCORE_METHODS and sampler != "langevin":
        raise UsageError(f"this run is a score network (method {cfg.method}); sample it with "
                         f"--sampler langevin, not {sampler!r}")
    steps = levels_for(args, sampler, args.steps)[1]  # --levels imply --steps
    steps = cfg.eval_steps if steps is None else steps
    if not 1 <= steps <= cfg.T:
        raise UsageError(f"--steps must lie in 1..T (T = {cfg.T} for this run), got {steps}")
    eta = (cfg.eval_eta if sampler == cfg.eval_sampler else 0.0) if args.eta is None else args.eta
    if not (eta >= 0 and math.isfinite(eta)):
        raise UsageError(f"--eta must be >= 0, got {args.eta}")
    if sampler != "ddim" and args.eta:
        raise UsageError(f"--eta applies to --sampler ddim only, not {sampler}")
    n = n_default if args.n is None else args.n
    if n < 1:
        raise UsageError(f"-n must be at least 1, got {n}")
    if sampler in NO_SPACING and args.spacing is not None:
        raise UsageError(f"--spacing does not apply to --sampler {sampler}")
    if args.spacing not in (None, "auto", *grids_of(sampler)):
        raise UsageError(f"--spacing {args.spacing} is not a grid of --sampler {sampler}; "
                         f"choose one of {', '.join(grids_of(sampler))}")
    with user_errors():
        spacing = spacing_for(cfg, sampler, args.spacing)
    return sampler, steps, eta, n, spacing
