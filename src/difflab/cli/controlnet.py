"""``difflab train-controlnet BASE_RUN --hint edges``: a ControlNet on a frozen diffusion run
(Weng, "ControlNet"; Zhang et al. 2023), and the hint flags of ``difflab sample``.

    difflab train-controlnet BASE_RUN --hint edges|edges-thin|mask|file [--steps N] [--out DIR]
    difflab train-controlnet --resume OUT [--stop-after K]
    difflab sample CONTROLNET_RUN --hint FILE.png|FILE.npy [--control-scale S] --out …
    difflab sample CONTROLNET_RUN --hint-from-data N [--control-scale S] --out …

The training lives in :mod:`difflab.runs.controlnet`; this module turns flags into its
arguments. :func:`add_hint_flags` and :func:`hint_from_args` / :func:`bind_hint` give
``sample`` its ``--hint``, ``--hint-from-data`` and ``--control-scale``; a bad hint (missing or
unreadable file, wrong size or channels) is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .common import (
    PROG,
    UsageError,
    add_device_flags,
    add_progress_flag,
    check_output_dir,
    flag,
    training_progress,
    writing_run,
)

# flags that start a training, refused with --resume (which continues one as it was started)
FRESH = ("base", "hint", "steps", "lr", "batch", "seed", "p_uncond", "hint_hidden",
         "init", "threads", "out", "overwrite", "checkpoint_every", "no_eval", "device",
         "precision", "compile")


def add_parser(sub) -> None:
    from ..runs.controlnet import CHECKPOINT_EVERY, HINT_HIDDEN, HINT_KINDS
    from ..training.controlnet import P_UNCOND

    p = sub.add_parser(
        "train-controlnet", help="train a ControlNet on a frozen diffusion run (spatial control)",
        description="Train a ControlNet (Zhang et al. 2023): a trainable copy of the base run's "
        "U-Net encoder, fed with a hint image and joined to the frozen base through zero "
        "convolutions. OUT holds the base (OUT/base), the control branch and metrics.json "
        "(FD and hint adherence on held-out hints). Sample it with 'difflab sample OUT --hint "
        "FILE' or '--hint-from-data N'. The last line of standard output is OUT.")
    p.add_argument("base", metavar="BASE_RUN", nargs="?",
                   help="the base: a run directory of 'difflab train' on images")
    p.add_argument("--hint", choices=HINT_KINDS, help="the control image: edges (Sobel, "
                   "thresholded; edges-thin: one pixel wide, Canny's non-maximum suppression), "
                   "mask (the silhouette of bright objects on a dark background), or file (a "
                   "folder's own control images, listed in its controls.csv; default edges)")
    p.add_argument("--steps", type=int, help="optimizer updates (default 1000)")
    p.add_argument("--lr", type=float, help="AdamW peak learning rate, with the base's warm-up "
                   "and schedule (default: the base's)")
    p.add_argument("--batch", type=int, help="batch size (default: the base's)")
    p.add_argument("--seed", type=int, help="seed of the batches, noise and the hint encoder "
                   "(default 0)")
    p.add_argument("--p-uncond", type=float, help="probability of dropping a class or text "
                   f"base's condition to ∅ (default {P_UNCOND}, as in the paper)")
    p.add_argument("--hint-hidden", type=int, metavar="C", help="width of the hint encoder's "
                   f"first layers (default {HINT_HIDDEN})")
    p.add_argument("--init", choices=("zero", "random"), help="the connecting convolutions: "
                   "zero (default, ControlNet) or random (ordinary initialisation; the paper's "
                   "ablation)")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads (0: torch's "
                   "default; default: the base run's)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: BASE_RUN-controlnet-"
                   "<hint> beside BASE_RUN)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", metavar="OUT", help="continue the interrupted training in OUT "
                   "from its last checkpoint (no BASE_RUN, no other flags but --stop-after)")
    p.add_argument("--stop-after", type=int, metavar="K", help="stop after K total updates with "
                   "a checkpoint (continue later with --resume OUT)")
    p.add_argument("--checkpoint-every", type=int, metavar="K",
                   help=f"updates between checkpoints (default {CHECKPOINT_EVERY})")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation on held-out "
                   "hints (FD, adherence) and samples.png")
    add_device_flags(p, compile=True, what="training")
    add_progress_flag(p, training=True)
    p.set_defaults(run_command=run, fresh_defaults={k: p.get_default(k) for k in FRESH})


def run(args: argparse.Namespace) -> int:
    from ..runs.controlnet import resume_controlnet, train_controlnet

    if args.stop_after is not None and args.stop_after < 1:
        raise UsageError(f"--stop-after must be at least 1, got {args.stop_after}")
    if args.resume is not None:
        changed = [k for k, v in args.fresh_defaults.items() if getattr(args, k) != v]
        if changed:
            what = "BASE_RUN" if changed[0] == "base" else flag(changed[0])
            raise UsageError(f"--resume continues a ControlNet training as it was started; "
                             f"drop {what}")
        out = Path(args.resume)
        if not out.is_dir():
            raise UsageError(f"--resume {out}: no such directory")
        with writing_run(out):
            resume_controlnet(out, progress=training_progress(args), max_steps=args.stop_after)
        return finish(out)
    if args.base is None:
        raise UsageError(f"train-controlnet needs BASE_RUN (or --resume OUT) (see '{PROG} "
                         "train-controlnet --help')")
    base = Path(args.base)
    hint = args.hint or "edges"
    out = Path(args.out) if args.out else base.with_name(f"{base.name}-controlnet-{hint}")
    check_output_dir(out)
    kwargs = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("batch", args.batch),
                                ("seed", args.seed), ("p_uncond", args.p_uncond),
                                ("hidden", args.hint_hidden), ("threads", args.threads),
                                ("checkpoint_every", args.checkpoint_every)) if v is not None}
    with writing_run(out):
        train_controlnet(base, out, hint=hint, zero=args.init != "random",
                         overwrite=args.overwrite, progress=training_progress(args),
                         evaluate=not args.no_eval, device=args.device,
                         precision=args.precision, compile=args.compile,
                         max_steps=args.stop_after, **kwargs)
    return finish(out)


def finish(out: Path) -> int:
    """One summary line (or where to resume), then OUT as the last line."""
    from ..runs import checkpoint as ckpt
    from ..training.backend import world

    if world()[0] != 0:  # one report, from the first process
        return 0
    metrics = out / ckpt.METRICS
    if metrics.is_file():
        m = ckpt.read_json(metrics)
        parts = [f"{k} {m[k]:.3f}" for k in ("edge_f1", "mask_iou", "fd", "fd_floor") if k in m]
        print(f"{out}: trained {m.get('train_steps')} steps"
              + (f" in {m['train_seconds']:.1f} s" if "train_seconds" in m else "")
              + (f"; {', '.join(parts)}" if parts else ""))
    else:
        state = ckpt.load_checkpoint(out)
        print(f"stopped at update {state.step}; continue with '{PROG} train-controlnet --resume "
              f"{out}'")
    print(out)
    return 0


# --- the hint flags of ``difflab sample`` ------------------------------------------------------
def add_hint_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ControlNet runs")
    g.add_argument("--hint", metavar="FILE", help="the control image of every sample: a PNG (or "
                   "any image Pillow reads) of the model's size, grey for a 1-channel hint, in "
                   "0..255 (edges and masks: white = 1); or a .npy of shape (H, W), (C, H, W) or "
                   "(N, C, H, W) in [0, 1], N hints cycled over the samples")
    g.add_argument("--hint-from-data", type=int, metavar="N", help="take the hints of the first "
                   "N held-out images (the run's detector; default -n: N)")
    g.add_argument("--control-scale", type=float, metavar="S", help="multiplies the control "
                   "branch's residuals (default 1; 0: the base alone)")


def default_n(args: argparse.Namespace, n_default: int) -> int:
    """Samples drawn without -n: one per hint with --hint-from-data N, else ``n_default``."""
    return args.hint_from_data or n_default


def hint_from_args(args: argparse.Namespace, cfg, model):
    """The hints (N, C_h, H, W) a ControlNet run's samples cycle through (None for another
    kind of run, which must then have no hint flags); sets ``--control-scale`` on ``model``."""
    from ..runs.controlnet_model import run_config

    kind, _, job = run_config(args.run)
    given = [f for f in ("hint", "hint_from_data", "control_scale")
             if getattr(args, f, None) is not None]
    if kind != "controlnet":
        if given:
            raise UsageError(f"{flag(given[0])} needs a ControlNet run (from 'difflab "
                             f"train-controlnet'); {args.run} is a {kind} run")
        return None
    if (args.hint is None) == (args.hint_from_data is None):
        raise UsageError("a ControlNet run samples from hints: give --hint FILE or "
                         "--hint-from-data N (one of them)")
    scale = 1.0 if args.control_scale is None else args.control_scale
    if not math.isfinite(scale):
        raise UsageError(f"--control-scale must be a finite number, got {args.control_scale}")
    model.conditioning_scale = scale
    from ..build.data import image_shape

    C = job["control"]["hint_channels"]
    _, H, W = image_shape(cfg)
    if args.hint_from_data is not None:
        return hints_from_data(args, cfg, job)
    return read_hints(Path(args.hint), (C, H, W))


def hints_from_data(args, cfg, job):
    from ..build.data import image_split
    from ..runs.controlnet import hints_of

    N = args.hint_from_data
    test = image_split(cfg, "test")
    if not 1 <= N <= len(test):
        raise UsageError(f"--hint-from-data must lie in 1..{len(test)} (the held-out images), "
                         f"got {N}")
    return hints_of(job, cfg, test)[:N]


def read_hints(path: Path, shape: tuple[int, int, int]):
    """Hints from a file: an image (one hint) or a .npy; ConfigError (one line) if missing,
    unreadable or of another shape."""
    import torch

    from ..data.hints import read_hint_image
    from ..errors import ConfigError

    C, H, W = shape
    if path.suffix.lower() != ".npy":
        return read_hint_image(path, (H, W), C)[None]  # (1, C, H, W)
    import numpy as np

    if not path.is_file():
        raise ConfigError(f"hint file {str(path)!r} does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read hint file {str(path)!r} ({' '.join(str(err).split())})"
                          ) from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1:] != (C, H, W) or len(arr) == 0:
        raise ConfigError(f"hint file {str(path)!r} has shape {arr.shape}; this model needs "
                          f"(N, {C}, {H}, {W}), ({C}, {H}, {W}) or ({H}, {W}) hints")
    if arr.dtype.kind not in "fiub":
        raise ConfigError(f"hint file {str(path)!r} holds {arr.dtype}, not numbers")
    x = torch.from_numpy(arr.astype(np.float32))
    if not torch.isfinite(x).all():
        raise ConfigError(f"hint file {str(path)!r} holds NaN or infinite values")
    return x


def bind_hint(model, hints, n: int):
    """``model`` (a plain or bound ε-model) with the ``hints`` cycled over ``n`` samples added
    to its bound conditions, on its device."""
    if hints is None:
        return model
    from ..guidance import Bound
    from ..runs.draw import model_device

    h = hints.repeat(-(-n // len(hints)), 1, 1, 1)[:n].to(model_device(model))  # (n, C_h, H, W)
    if isinstance(model, Bound):
        return Bound(model.model, **model.cond, hint=h)
    return Bound(model, hint=h)
