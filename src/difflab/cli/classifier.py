"""``difflab train-classifier``: the noisy classifier f(y | x_t, t) of classifier guidance (Weng
eq. 24-25; the U-Net's down-sampling half with a pooled head, ADM), written as a run directory
for ``difflab sample --classifier``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import is_image
from .common import (
    UsageError,
    add_progress_flag,
    check_output_dir,
    training_progress,
    writing_run,
)
from .config_flags import add_config_flags, config_from_flags, given_fields

# the TrainConfig fields of `train-classifier`: its data, noise, encoder, optimiser and device
CLASSIFIER_FIELDS = ("dataset", "image_size", "data", "channels", "schedule", "T",
                     "model_channels", "channel_mult", "num_res_blocks", "attention", "dropout",
                     "num_classes", "steps", "batch", "lr", "weight_decay", "seed", "threads",
                     "device", "precision", "compile", "out")


def add_parser(sub) -> None:
    p = sub.add_parser("train-classifier", help="train a noisy classifier f(y | x_t, t) for "
                       "classifier guidance (eq 24-25)",
                       description="Train the noisy classifier of classifier guidance (the "
                       "U-Net's down-sampling half with a pooled head, ADM) on x_t of the "
                       "forward process, and write a run directory to pass to 'difflab sample "
                       "--classifier'. Its schedule and T must match the diffusion run's.")
    p.add_argument("--preset", metavar="NAME_OR_PATH", default="digits",
                   help="TOML preset whose data, schedule and U-Net widths to use "
                   "(default: digits)")
    add_config_flags(p, CLASSIFIER_FIELDS, show_defaults=False)
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    add_progress_flag(p, training=True)
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    from ..runs import checkpoint as ckpt
    from ..runs.classifier import train_classifier_run
    from ..runs.train import default_run_dir

    cfg = config_from_flags(args.preset, given_fields(args, CLASSIFIER_FIELDS))
    if not is_image(cfg.dataset):
        raise UsageError(f"train-classifier needs image data with labels (digits, mnist, "
                         f"folder), not {cfg.dataset!r}")
    if cfg.dataset == "folder" and not Path(cfg.data).is_dir():
        raise UsageError(f"--data {cfg.data}: no such directory")
    if cfg.out:
        run_dir = Path(cfg.out)
    else:
        run_dir = default_run_dir(cfg)
        run_dir = run_dir.with_name(run_dir.name + "-classifier")
    check_output_dir(run_dir)
    with writing_run(run_dir):
        run_dir = train_classifier_run(cfg, run_dir, overwrite=args.overwrite,
                                       progress=training_progress(args))
    m = ckpt.read_json(run_dir / ckpt.METRICS)
    acc = ", ".join(f"t={t}: {a:.2f}" for t, a in sorted(m["test_accuracy_at_t"].items(),
                                                             key=lambda kv: int(kv[0])))
    print(f"trained {m['train_steps']} steps in {m['train_seconds']:.1f} s; test accuracy {acc}")
    print(run_dir)
    return 0
