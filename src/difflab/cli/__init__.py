"""The ``difflab`` command: ``train``, ``train-autoencoder``, ``train-clip``, ``sample``, ``eval``,
``train-classifier``, ``distill``, ``train-controlnet``, ``unclip``, ``export`` and ``serve``.

Strings live here and only here: the CLI turns names into objects and passes them to the library.
One module per subcommand (``train``, ``sample``, ``evaluate``, ``classifier``, ``distill``,
``controlnet``, ``unclip``, ``export``, ``serve``),
each with ``add_parser(subparsers)`` and ``run(args) -> exit code``; what they share is in
``common`` (and ``config_flags``, ``guidance_flags``). Imports point one way: common ←
subcommands ← this package.

Errors: a user's mistake — a bad flag, an unknown dataset or sampler, a step count outside
1..T, a missing or corrupt run directory, a malformed preset, an existing run directory, a
device this machine lacks — is one of difflab's own errors (:class:`difflab.errors.DifflabError`,
:class:`~difflab.cli.common.UsageError` among them) and ends as ONE line ``difflab: error: …``
on stderr with exit code 2. Any other exception is a bug: it propagates with its traceback
(exit code 1 from the console script). Python warnings (e.g. the image files a folder dataset
skips) print as one line ``difflab: warning: …``, without a source line.
"""

from __future__ import annotations

import sys
import warnings

from ..errors import DifflabError
from . import classifier, controlnet, distill, evaluate, export, sample, serve, train, unclip
from .common import EXIT_USAGE, PROG, Parser, UsageError, one_line, one_line_warning

SUBCOMMANDS = (train, sample, evaluate, classifier, distill, controlnet, unclip, export,
               serve)  # --help order
COMMAND_NAMES = ("train", "train-autoencoder", "train-clip", "sample", "eval", "train-classifier",
                 "distill", "train-controlnet", "unclip", "export", "serve")
EXIT_INTERRUPTED = 130

__all__ = ["PROG", "UsageError", "build_parser", "main"]


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("difflab")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="Diffusion models as Lilian Weng's post explains them.")
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMAND_NAMES) + "}")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code. difflab's own errors: one
    line and 2; KeyboardInterrupt: 130 (a training stopped by a signal: 128 + the signal, 143
    for SIGTERM; difflab.training.faults); anything else propagates (a bug: its traceback)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    format_warning, warnings.formatwarning = warnings.formatwarning, one_line_warning
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError(f"choose a command: {', '.join(COMMAND_NAMES)} (see '{PROG} "
                             "--help')")
        args.argv = argv  # train --processes re-launches the same command
        return args.run_command(args)
    except DifflabError as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exit_:  # --help and --version
        return exit_.code if isinstance(exit_.code, int) else 0
    except KeyboardInterrupt as err:  # a TrainingInterrupted (training/faults.py) says more
        what = f"{err}; " if str(err) else ""
        print(f"{PROG}: interrupted ({what}a run continues from its last checkpoint with "
              f"'{PROG} train --resume RUN' or '{PROG} distill --resume OUT')", file=sys.stderr)
        return getattr(err, "exit_code", EXIT_INTERRUPTED)
    finally:
        warnings.formatwarning = format_warning
