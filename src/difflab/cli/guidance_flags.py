"""The conditioning flags of ``sample`` and ``eval`` — ``--class``, ``--prompt``,
``--guidance``, ``--classifier``, ``--threshold``, ``--threshold-p`` — turned into the guided
model of :func:`difflab.build.conditioning.guided` (Weng eq. 24-26, Imagen's thresholding)."""

from __future__ import annotations

import argparse
import math

from ..config import SCORE_METHODS, is_image
from .common import UsageError, flag, user_errors

THRESHOLD_NAMES = ("none", "static", "dynamic")
GUIDANCE_FLAGS = ("labels", "prompt", "guidance", "classifier", "clip_guidance", "threshold",
                  "threshold_p")


def add_guidance_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--class", dest="labels", metavar="K[,K…]",
                   help="class labels, cycled over the samples (class-conditional runs, text "
                   "runs on digits via template captions, or with --classifier); default for "
                   "conditional runs: every class in turn")
    p.add_argument("--prompt", help="caption for every sample (text-conditional runs)")
    p.add_argument("--guidance", type=float, metavar="W",
                   help="guidance weight w >= 0: classifier-free (eq 26) on a conditional run, "
                   "or classifier guidance (eq 25) with --classifier (default: the run's "
                   "eval_guidance; 1 with --classifier)")
    p.add_argument("--classifier", metavar="RUN",
                   help="noisy-classifier run from 'difflab train-classifier' for classifier "
                   "guidance")
    p.add_argument("--clip-guidance", metavar="CLIP_RUN",
                   help="noise-aware CLIP run ('difflab train-clip --preset digits-noisy-clip') "
                   "for CLIP guidance of an unconditional run towards --prompt (or the template "
                   "captions of --class): eq 25 with the CLIP logit (GLIDE; default --guidance 1)")
    p.add_argument("--threshold", choices=THRESHOLD_NAMES,
                   help="Imagen's thresholding of x̂_0: static (clip to [-1, 1]) or dynamic "
                   "(default: none)")
    p.add_argument("--threshold-p", type=float, metavar="P",
                   help="percentile of |x̂_0| that dynamic thresholding scales to 1, in (0, 1] "
                   "(default 0.995, Imagen's)")


def _labels(args) -> tuple[int, ...] | None:
    from ..config import int_list

    if args.labels is None:
        return None
    if "" in (part.strip() for part in args.labels.split(",")) and args.labels.strip():
        raise UsageError(f"--class takes one class or several, comma-separated (like 3 or 1,2), "
                         f"got {args.labels!r}")
    with user_errors("--class: "):
        labels = int_list(args.labels)
    if not labels:
        raise UsageError("--class needs at least one label, e.g. --class 7")
    return labels


def _check_flags(args, cfg, given: list[str]) -> None:
    if not is_image(cfg.dataset):
        raise UsageError(f"{flag(given[0])} applies to image runs only")
    if args.threshold_p is not None:
        if args.threshold != "dynamic":
            raise UsageError("--threshold-p applies to --threshold dynamic only")
        if not 0 < args.threshold_p <= 1:
            raise UsageError(f"--threshold-p must lie in (0, 1], got {args.threshold_p}")
    w = args.guidance
    if w is not None and (not math.isfinite(w) or w < 0):
        raise UsageError(f"--guidance must be a number >= 0, got {w}")


def guided_from_args(args, cfg, model, schedule, sampler: str, steps: int, n: int):
    """The run's model with the conditioning flags applied; returns (model, labels (n,) or
    None). The classifier and the conditions go to the model's device."""
    from ..build.conditioning import guided, sample_conditions
    from ..runs.draw import model_device

    given = [f for f in GUIDANCE_FLAGS if getattr(args, f) is not None]
    if cfg.cond == "none" and not given:
        return model, None
    if given and cfg.method in SCORE_METHODS:
        raise UsageError(f"this run is a score network (method {cfg.method}); guidance "
                         "(--class, --guidance, --classifier) is for ε-models")
    if given:
        _check_flags(args, cfg, given)
    labels, w, classifier = _labels(args), args.guidance, None
    device = model_device(model)
    if args.clip_guidance is not None:
        return _clip_guided(args, cfg, model, schedule, sampler, steps, n, labels, device)
    if args.classifier is not None:
        from ..runs.classifier import check_compatible, load_classifier_run

        ccfg, classifier = load_classifier_run(args.classifier)
        with user_errors():
            check_compatible(ccfg, cfg)
        classifier = classifier.to(device)
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
    cond = {k: v.to(device) if hasattr(v, "to") else v for k, v in cond.items()}
    with user_errors():  # argument checks only: guided() builds wrappers, it runs nothing
        model = guided(model, schedule, cfg, cond, w=w, classifier=classifier,
                       threshold=args.threshold or "none",
                       threshold_p=args.threshold_p or 0.995, sampler=sampler, steps=steps,
                       variance=cfg.variance)
    return model, y


def _clip_guided(args, cfg, model, schedule, sampler: str, steps: int, n: int, labels,
                 device):
    """:func:`guided_from_args` with ``--clip-guidance``: GLIDE's CLIP guidance (eq. 25 with
    the noise-aware CLIP's logit) of an unconditional run towards ``--prompt`` or the template
    captions of ``--class``."""
    from ..build.conditioning import clip_conditions, guided
    from ..runs.classifier import check_compatible
    from ..runs.clip import load_noisy_clip

    if args.classifier is not None:
        raise UsageError("--clip-guidance and --classifier are two kinds of guidance; give one")
    if cfg.cond != "none":
        raise UsageError("--clip-guidance guides an unconditional run; this one has cond "
                         f"{cfg.cond!r} (use --guidance alone for classifier-free guidance)")
    ccfg, clip = load_noisy_clip(args.clip_guidance)
    with user_errors():
        check_compatible(ccfg, cfg, what="CLIP", command="train-clip --clip-noisy")
    clip = clip.to(device)
    w = 1.0 if args.guidance is None else args.guidance
    with user_errors():
        cond, y = clip_conditions(cfg, clip, ccfg, n, labels, args.prompt)
        model = guided(model, schedule, cfg, cond, w=w, clip=clip,
                       threshold=args.threshold or "none",
                       threshold_p=args.threshold_p or 0.995, sampler=sampler, steps=steps)
    return model, y


def weight_used(args, cfg) -> float | None:
    """The guidance weight an eval used (None: no guidance applies)."""
    if args.guidance is not None:
        return args.guidance
    if args.classifier is not None or args.clip_guidance is not None:
        return 1.0
    return cfg.eval_guidance if cfg.cond != "none" else None


def guidance_record(args, cfg) -> dict:
    """The conditioning flags an eval used, for its JSON."""
    return {k: v for k, v in (("guidance", weight_used(args, cfg)),
                              ("classifier", args.classifier),
                              ("clip_guidance", args.clip_guidance),
                              ("threshold", args.threshold),
                              ("threshold_p", args.threshold_p), ("prompt", args.prompt),
                              ("class", args.labels)) if v is not None}
