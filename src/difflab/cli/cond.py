"""``difflab train-classifier`` and the conditioning flags of ``sample`` and ``eval``
(``--class``, ``--prompt``, ``--guidance``, ``--classifier``, ``--threshold``): flags into the
arguments of :mod:`difflab.conditioning` and :mod:`difflab.classifier_run` (Weng eq. 24-26).

Errors follow the rest of the CLI: one line ``difflab: error: …``, exit code 2.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from ..config import TrainConfig, is_image, load_config
from ..runs import checkpoint as ckpt
from . import _HELP, UsageError, _flag, _progress

# the TrainConfig fields of `train-classifier`: its data, noise, encoder and optimiser
CLASSIFIER_FIELDS = ("dataset", "image_size", "data", "channels", "schedule", "T",
                     "model_channels", "channel_mult", "num_res_blocks", "attention", "dropout",
                     "num_classes", "steps", "batch", "lr", "weight_decay", "seed", "threads",
                     "out")


def add_parser(sub) -> None:
    """The ``train-classifier`` subcommand."""
    tc = sub.add_parser("train-classifier", help="train a noisy classifier f(y | x_t, t) for "
                        "classifier guidance (eq 24-25)",
                        description="Train the noisy classifier of classifier guidance (the "
                        "U-Net's down-sampling half with a pooled head, ADM) on x_t of the "
                        "forward process, and write a run directory to pass to 'difflab sample "
                        "--classifier'. Its schedule and T must match the diffusion run's.")
    tc.add_argument("--preset", metavar="NAME_OR_PATH", default="digits",
                    help="TOML preset whose data, schedule and U-Net widths to use "
                    "(default: digits)")
    for f in fields(TrainConfig):
        if f.name in CLASSIFIER_FIELDS:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            tc.add_argument(_flag(f.name), dest=f.name, type=kind, default=None,
                            metavar=f.name.upper() if f.name != "T" else "T",
                            help=_HELP.get(f.name, f.name.replace("_", " ")))
    tc.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    tc.add_argument("--no-progress", action="store_true", help="no progress bar")


def guided_from_args(args, cfg, model, schedule, sampler: str, steps: int, n: int):
    """The run's model with the --class/--prompt/--guidance/--classifier/--threshold flags
    applied (see difflab.conditioning.guided); returns (model, labels (n,) or None)."""
    import math

    from ..build.conditioning import guided, sample_conditions
    from ..config import int_list

    given = [f for f in ("labels", "prompt", "guidance", "classifier", "threshold",
                         "threshold_p") if getattr(args, f) is not None]
    if cfg.cond == "none" and not given:
        return model, None
    if not is_image(cfg.dataset):
        raise UsageError(f"{_flag(given[0]).replace('labels', 'class')} applies to image runs "
                         "only")
    if args.threshold_p is not None:
        if args.threshold != "dynamic":
            raise UsageError("--threshold-p applies to --threshold dynamic only")
        if not 0 < args.threshold_p <= 1:
            raise UsageError(f"--threshold-p must lie in (0, 1], got {args.threshold_p}")
    w = args.guidance
    if w is not None and (not math.isfinite(w) or w < 0):
        raise UsageError(f"--guidance must be a number >= 0, got {w}")
    labels = None
    if args.labels is not None:
        try:
            labels = int_list(args.labels)
        except ValueError as err:
            raise UsageError(f"--class: {err}") from None
        if not labels:
            raise UsageError("--class needs at least one label, e.g. --class 7")
    classifier = None
    if args.classifier is not None:
        from ..runs.classifier import check_compatible, load_classifier_run

        ccfg, classifier = load_classifier_run(args.classifier)
        check_compatible(ccfg, cfg)
        if labels is None:
            labels = tuple(range(ccfg.num_classes))
        if any(not 0 <= k < ccfg.num_classes for k in labels):
            raise UsageError(f"--class labels must lie in 0..{ccfg.num_classes - 1} for this "
                             f"classifier, got {args.labels}")
        w = 1.0 if w is None else w
    elif cfg.cond == "none" and (labels is not None or w):
        raise UsageError("this run is unconditional: --class and --guidance need a conditional "
                         "run (train with --cond class or text) or a --classifier")
    elif w is None:
        w = cfg.eval_guidance
    if cfg.cond == "text" and args.prompt is None and cfg.dataset == "folder":
        raise UsageError("a text-conditional folder run needs --prompt")
    try:
        cond, y = sample_conditions(cfg, n, labels, args.prompt)
    except ValueError as err:
        raise UsageError(str(err).replace("class labels", "--class labels")) from None
    return guided(model, schedule, cfg, cond, w=w, classifier=classifier,
                  threshold=args.threshold or "none", threshold_p=args.threshold_p or 0.995,
                  sampler=sampler, steps=steps,
                  variance=cfg.variance), y


def weight_used(args, cfg) -> float | None:
    """The guidance weight an eval used (None: no guidance applies)."""
    if args.guidance is not None:
        return args.guidance
    if args.classifier is not None:
        return 1.0
    return cfg.eval_guidance if cfg.cond != "none" else None


def cmd_train_classifier(args) -> int:
    from ..runs.classifier import train_classifier_run

    overrides = {k: getattr(args, k) for k in CLASSIFIER_FIELDS}
    try:
        cfg = load_config(args.preset, overrides)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if not is_image(cfg.dataset):
        raise UsageError(f"train-classifier needs image data with labels (digits, mnist, "
                         f"folder), not {cfg.dataset!r}")
    from ..runs.train import default_run_dir

    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg).with_name(
        default_run_dir(cfg).name + "-classifier")
    run_dir = train_classifier_run(cfg, run_dir, overwrite=args.overwrite,
                                   progress=_progress(args))
    m = ckpt.read_json(run_dir / ckpt.METRICS)
    acc = ", ".join(f"t={t}: {a:.2f}" for t, a in sorted(m["test_accuracy_at_t"].items(),
                                                             key=lambda kv: int(kv[0])))
    print(f"trained {m['train_steps']} steps in {m['train_seconds']:.1f} s; test accuracy {acc}")
    print(run_dir)
    return 0
