"""The ``difflab`` command: ``train``, ``sample``, ``eval``, ``train-classifier`` and ``distill``.

Strings live here and only here: the CLI turns names into objects and passes them to the library.
Every user error — a bad flag, an unknown dataset or sampler, a step count outside 1..T, a
missing or corrupt run directory, a malformed preset, an existing run directory — ends as ONE
line ``difflab: error: …`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import fields
from pathlib import Path

from .. import __version__
from ..config import TrainConfig, builtin_presets, is_image, load_config, spacing_for
from ..runs import checkpoint as ckpt
from ..samplers import SAMPLERS

PROG = "difflab"
EXIT_USAGE = 2
# flags that may change when a run is resumed (the others would break exact resume)
RESUMABLE = {"steps", "checkpoint_every", "eval_sampler", "eval_steps", "eval_eta",
             "eval_spacing", "n_eval", "eval_guidance",
             "threads"}
SAMPLER_NAMES = tuple(SAMPLERS)  # every sampler registered in difflab.samplers
SPACING_NAMES = ("linspace", "leading", "trailing")
OUT_SUFFIXES = (".npy", ".png", ".gif")
THRESHOLD_NAMES = ("none", "static", "dynamic")
GIF_MAX_FRAMES, GIF_IMAGES, GIF_POINTS = 40, 64, 10_000  # sample --out x.gif
NLL_N_IMAGES, NLL_N_POINTS, NLL_ODE_STEPS = 64, 1000, 100  # eval --nll defaults


class UsageError(Exception):
    """Bad command-line input; printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the usage too: keep to one line
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --- parser --------------------------------------------------------------------------------------
_HELP = {
    "dataset": "2-D: swiss_roll, moons, 8gaussians, checkerboard; images: digits, mnist, "
               "folder (with --data)",
    "image_size": "image side in pixels (digits 8, 16, 32; mnist 28, 32; 0: the dataset's own)",
    "model": "auto (MLP for 2-D data, U-Net for images), mlp or unet",
    "model_channels": "U-Net base width",
    "channel_mult": "U-Net width multipliers, one per resolution level, e.g. 1,2",
    "num_res_blocks": "U-Net residual blocks per level",
    "attention": "U-Net self-attention at these downsampling factors, e.g. 2 ('' for none)",
    "dropout": "U-Net dropout",
    "data": "image directory for --dataset folder",
    "channels": "image channels for --dataset folder: 1 (grey) or 3 (RGB)",
    "schedule": "noise schedule: linear or cosine",
    "T": "number of diffusion steps",
    "steps": "training steps (optimizer updates)",
    "lr": "peak learning rate (AdamW)",
    "batch": "batch size",
    "seed": "seed of initialisation, batches and noise",
    "hidden": "MLP width",
    "depth": "number of residual MLP blocks",
    "out": "run directory (default: runs/<dataset>-<date>-<time>)",
    "eval_sampler": "sampler for the evaluation after training: " + ", ".join(SAMPLER_NAMES),
    "eval_steps": "sampler steps for the evaluation after training",
    "n_eval": "samples (and held-out points) for the evaluation (images: FD sample size)",
    "threads": "torch threads (0: torch's default)",
    "n_train": "size of the fixed 2-D training set (images: the whole train split)",
    "t_dim": "width of the sinusoidal time embedding",
    "lr_schedule": "constant or cosine (decay after warm-up)",
    "warmup": "linear learning-rate warm-up steps",
    "lr_min_ratio": "final learning rate of the cosine decay, as a fraction of --lr",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "clip the gradient norm to this (0: off)",
    "ema_decay": "decay of the exponential moving average of the weights",
    "checkpoint_every": "steps between checkpoints",
    "eval_eta": "DDIM eta for the evaluation after training",
    "eval_spacing": "timestep spacing for the evaluation: auto (leading on the cosine schedule), "
                    "linspace, leading or trailing",
    "variance": "Σ_θ of the reverse process: beta_tilde or beta (fixed), or learned (eq 23: "
                "the network outputs [ε, v]; needs --loss hybrid)",
    "loss": "simple (L_simple, eq 19) or hybrid (L_simple + λ L_vlb with the stop-gradient on "
            "μ_θ; needs --variance learned)",
    "hybrid_lambda": "λ of L_hybrid",
    "t_sampling": "uniform, or importance (p_t ∝ √E[L_t²] from the history of the bound's terms; "
                  "needs --loss hybrid)",
    "log_every": "steps per row of loss.csv (the mean loss of those steps)",
    "cond": "none, class (label embedding) or text (captions through the frozen MiniLM and "
            "cross-attention, eq 33); images only",
    "p_uncond": "probability of dropping the condition to ∅ in training (classifier-free "
                "guidance)",
    "num_classes": "number of classes (0: the dataset's own)",
    "text_tokens": "caption tokens kept by the text encoder",
    "eval_guidance": "classifier-free guidance w for the evaluation of a conditional run",
    "method": "diffusion, or consistency-training (Weng eq. 32: a consistency model, sampled "
              "with --sampler consistency)",
    "prediction": "what the network outputs: eps (x0 and v: students of 'difflab distill')",
    "distilled_steps": "set by 'difflab distill' (the steps a progressive student takes)",
}


def _flag(name: str) -> str:
    return "--" + (name if name == "T" else name.replace("_", "-"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Diffusion models as Lilian Weng's post explains them.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command",
                                metavar="{train,sample,eval,train-classifier,distill}")

    defaults = TrainConfig()
    tr = sub.add_parser("train", help="train a model on 2-D data or images and evaluate it",
                        description="Train a diffusion model and write a run directory (its path "
                        "is the last line of standard output). With no arguments: the default "
                        "swiss-roll model. Every flag overrides the preset.")
    tr.add_argument("--preset", metavar="NAME_OR_PATH",
                    help=f"TOML preset: a built-in name ({', '.join(builtin_presets())}) or a path")
    for f in fields(TrainConfig):
        if str(f.type) == "bool":
            tr.add_argument(_flag(f.name), dest=f.name, default=None,
                            action=argparse.BooleanOptionalAction,
                            help=f"{_HELP.get(f.name, f.name.replace('_', ' '))} "
                                 f"(default: {getattr(defaults, f.name)!r})")
            continue
        kind = {"int": int, "float": float, "str": str}[str(f.type)]
        tr.add_argument(_flag(f.name), dest=f.name, type=kind, default=None,
                        metavar=f.name.upper() if f.name != "T" else "T",
                        help=f"{_HELP.get(f.name, f.name.replace('_', ' '))} "
                             f"(default: {getattr(defaults, f.name)!r})")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace an existing run directory")
    tr.add_argument("--resume", metavar="RUN",
                    help="continue the run in RUN from its last checkpoint")
    tr.add_argument("--stop-after", type=int, metavar="K",
                    help="stop after K total steps with a checkpoint (resume later with --resume)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    from .cond import add_parser as add_train_classifier

    add_train_classifier(sub)
    for name, what in (("sample", "draw samples from a trained run"),
                       ("eval", "print SWD (2-D) or FD (images) and its floor for a sampler, "
                                "or with --nll test-set bits/dim (JSON)")):
        p = sub.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".")
        p.add_argument("run", metavar="RUN", help="run directory written by 'difflab train'")
        p.add_argument("--sampler", help=f"one of {', '.join(SAMPLER_NAMES)} "
                       "(default: the run's eval_sampler)")
        p.add_argument("--steps", type=int, help="sampling steps, 1..T (default: the run's "
                       "eval_steps)")
        p.add_argument("--eta", type=float, help="DDIM η >= 0 (default 0: deterministic)")
        p.add_argument("--spacing", choices=SPACING_NAMES, help="timestep spacing of strided "
                       "sampling (default: the run's eval_spacing; see difflab.samplers.timesteps)")
        p.add_argument("-n", type=int, help="number of samples (default: 1000 for sample, the "
                       "run's n_eval for eval)")
        p.add_argument("--seed", type=int, default=0, help="seed of x_T and sampler noise")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--class", dest="labels", metavar="K[,K…]",
                       help="class labels, cycled over the samples (class-conditional runs, "
                       "text runs on digits via template captions, or with --classifier); "
                       "default for conditional runs: every class in turn")
        p.add_argument("--prompt", help="caption for every sample (text-conditional runs)")
        p.add_argument("--guidance", type=float, metavar="W",
                       help="guidance weight w >= 0: classifier-free (eq 26) on a conditional "
                       "run, or classifier guidance (eq 25) with --classifier (default: the "
                       "run's eval_guidance; 1 with --classifier)")
        p.add_argument("--classifier", metavar="RUN",
                       help="noisy-classifier run from 'difflab train-classifier' for "
                       "classifier guidance")
        p.add_argument("--threshold", choices=THRESHOLD_NAMES,
                       help="Imagen's thresholding of x̂_0: static (clip to [-1, 1]) or dynamic "
                       "(default: none)")
        p.add_argument("--threshold-p", type=float, metavar="P",
                       help="percentile of |x̂_0| that dynamic thresholding scales to 1, in "
                       "(0, 1] (default 0.995, Imagen's)")
        if name == "sample":
            p.add_argument("--out", required=True, metavar="FILE",
                           help="output file: .npy (float32 array (n, 2) or (n, C, H, W)), "
                           ".png (scatter plot, or a grid of images) or .gif (the reverse "
                           f"process x_T → x_0 in 1 + min(steps, {GIF_MAX_FRAMES}) frames: "
                           f"all n points, or the first {GIF_IMAGES} images)")
        else:
            p.add_argument("--nll", action="store_true",
                           help="instead of sampling, print test-set bits/dim from the full "
                           "VLB (all T terms) and from the probability-flow ODE (Hutchinson), "
                           f"with standard errors, on -n test images (default {NLL_N_IMAGES}) "
                           f"or, for 2-D runs, held-out points (default {NLL_N_POINTS}; "
                           "bits/dim of a density)")
            p.add_argument("--ode-steps", type=int, metavar="S",
                           help=f"with --nll: timesteps of the ODE's grid, 1..T (default "
                           f"{NLL_ODE_STEPS})")
            p.add_argument("--hutchinson-samples", type=int, metavar="K",
                           help="with --nll: Hutchinson probes per item (default 1)")
    from .distill import add_parser as add_distill

    add_distill(sub)
    return parser


# --- commands ------------------------------------------------------------------------------------
def _progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def cmd_train(args) -> int:
    from ..runs.load import read_run_config
    from ..runs.train import default_run_dir, train

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    given = {k: v for k, v in overrides.items() if v is not None}
    if args.stop_after is not None and args.stop_after < 1:
        raise UsageError("--stop-after must be at least 1")
    if args.resume:
        if args.overwrite or args.preset:
            raise UsageError("--resume continues a run as it was; drop --overwrite and --preset")
        fixed = sorted(set(given) - RESUMABLE)
        if fixed:
            raise UsageError(f"{_flag(fixed[0])} cannot change when resuming (only "
                             f"{', '.join(_flag(k) for k in sorted(RESUMABLE))} can)")
        cfg = load_config(None, {**read_run_config(args.resume).to_dict(), **given})
        run_dir = Path(args.resume)
    else:
        try:
            cfg = load_config(args.preset, overrides)
        except ValueError as err:  # name the flag rather than the config key when it was a flag
            msg = str(err)
            for f in fields(TrainConfig):  # "config key 'loss' = 'hybrid'" → "--loss 'hybrid'"
                msg = msg.replace(f"config key {f.name!r} = ", f"{_flag(f.name)} ")
            for key in given:
                msg = msg.replace(f"config key {key!r}", _flag(key))
            raise UsageError(msg) from None
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    run_dir = train(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite,
                    progress=_progress(args), max_steps=args.stop_after)
    metrics_path = run_dir / ckpt.METRICS
    if args.stop_after is None or args.stop_after >= cfg.steps:
        m = ckpt.read_json(metrics_path)
        if "fd" not in m and "swd" not in m:  # an image folder: no classifier, no FD
            print(f"trained {m['train_steps']} steps in {m['train_seconds']:.1f} s; "
                  f"samples in {run_dir / 'samples.png'} (no FD: no classifier for folders)")
            print(run_dir)
            return 0
        if "fd" in m:
            acc = f"; accuracy {m['accuracy']:.2f}" if "accuracy" in m else ""
            print(f"trained {m['train_steps']} steps in {m['train_seconds']:.1f} s; "
                  f"{m['sampler']} {m['steps']} steps: FD {m['fd']:.2f}, floor "
                  f"{m['fd_floor']:.2f} (ratio {m['fd_ratio']:.2f}){acc}")
            print(run_dir)
            return 0
        print(f"trained {m['train_steps']} steps in {m['train_seconds']:.1f} s; "
              f"{m['sampler']} {m['steps']} steps: SWD {m['swd']:.4f}, floor {m['swd_floor']:.4f}"
              f" (ratio {m['swd_ratio']:.2f})")
    else:
        print(f"stopped after step {args.stop_after}; continue with: "
              f"{PROG} train --resume {run_dir}")
    print(run_dir)
    return 0


def _sampling_args(args, cfg, n_default: int) -> tuple[str, int, float, int]:
    """Check the sampler flags against the run's config; return (sampler, steps, eta, n)."""
    sampler = args.sampler or cfg.eval_sampler
    if sampler not in SAMPLER_NAMES:
        raise UsageError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    steps = cfg.eval_steps if args.steps is None else args.steps
    if not 1 <= steps <= cfg.T:
        raise UsageError(f"--steps must lie in 1..T (T = {cfg.T} for this run), got {steps}")
    eta = (cfg.eval_eta if sampler == cfg.eval_sampler else 0.0) if args.eta is None else args.eta
    if eta < 0 or eta != eta:
        raise UsageError(f"--eta must be >= 0, got {args.eta}")
    if sampler != "ddim" and args.eta:
        raise UsageError(f"--eta applies to --sampler ddim only, not {sampler}")
    n = n_default if args.n is None else args.n
    if n < 1:
        raise UsageError(f"-n must be at least 1, got {n}")
    return sampler, steps, eta, n


def cmd_sample(args) -> int:
    import numpy as np

    from ..build.data import image_shape
    from ..runs.draw import Frames, draw
    from ..runs.load import load_run
    from ..training.backend import torch_threads

    out = Path(args.out)
    if out.suffix not in OUT_SUFFIXES:
        raise UsageError(f"--out must end in {', '.join(OUT_SUFFIXES)}, got {args.out!r}")
    if not out.parent.is_dir():
        raise UsageError(f"the directory of --out, {out.parent}, does not exist")
    cfg, model, schedule = load_run(args.run)
    sampler, steps, eta, n = _sampling_args(args, cfg, 1000)
    image = is_image(cfg.dataset)
    shape = image_shape(cfg) if image else (2,)
    from .cond import guided_from_args

    model = guided_from_args(args, cfg, model, schedule, sampler, steps, n)[0]
    frames = None
    if out.suffix == ".gif":
        frames = Frames(keep=min(n, GIF_IMAGES if image else GIF_POINTS),
                        max_frames=GIF_MAX_FRAMES)
    with torch_threads(cfg.threads):
        x0 = draw(model, schedule, (n, *shape), sampler=sampler, steps=steps, eta=eta,
                  spacing=spacing_for(cfg, sampler, args.spacing), seed=args.seed,
                  variance=cfg.variance, frames=frames,
                  progress=_progress(args))[0]  # (n, 2) or (n, C, H, W)
    if frames is not None:
        from ..runs.plots import save_reverse_process_gif

        save_reverse_process_gif(frames.frames, out)
    elif out.suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, x0.numpy().astype(np.float32))
        ckpt.atomic_write_bytes(out, buf.getvalue())
    elif image:
        from ..runs.plots import save_image_grid

        save_image_grid(x0, out)
    else:
        from ..runs.plots import plot_points

        plot_points(x0, out, title=f"{cfg.dataset}: {sampler}, {steps} steps (n = {n})")
    print(out)
    return 0


def cmd_eval(args) -> int:
    from ..runs.evaluate import evaluate
    from ..runs.load import load_run
    from ..training.backend import torch_threads

    if args.nll:
        return _eval_nll(args)
    for flag in ("ode_steps", "hutchinson_samples"):
        if getattr(args, flag) is not None:
            raise UsageError(f"{_flag(flag)} applies to --nll only")
    cfg, model, schedule = load_run(args.run)
    sampler, steps, eta, n = _sampling_args(args, cfg, cfg.n_eval)
    from .cond import guided_from_args, weight_used

    model, labels = guided_from_args(args, cfg, model, schedule, sampler, steps, n)
    if is_image(cfg.dataset):
        from ..runs.evaluate import evaluate_images

        with torch_threads(cfg.threads):
            metrics = evaluate_images(model, schedule, cfg, sampler=sampler, steps=steps, eta=eta,
                                      spacing=spacing_for(cfg, sampler, args.spacing), n=n,
                                      seed=args.seed, variance=cfg.variance,
                                      progress=_progress(args), labels=labels)[0]
        metrics.update({k: v for k, v in (("guidance", weight_used(args, cfg)),
                                           ("classifier", args.classifier),
                                           ("threshold", args.threshold),
                                           ("threshold_p", args.threshold_p),
                                           ("prompt", args.prompt), ("class", args.labels))
                        if v is not None})
        print(json.dumps(metrics, indent=2, sort_keys=True))
        return 0
    with torch_threads(cfg.threads):
        result = evaluate(model, schedule, cfg.dataset, sampler=sampler, steps=steps, eta=eta,
                          spacing=spacing_for(cfg, sampler, args.spacing), n=n,
                          seed=args.seed, data_seed=cfg.seed, variance=cfg.variance,
                          progress=_progress(args))
    print(json.dumps(result.metrics, indent=2, sort_keys=True))
    return 0


def _eval_nll(args) -> int:
    """``eval RUN --nll``: bits/dim from the VLB and the ODE as JSON (see difflab.nll_eval)."""
    from ..runs.load import load_run
    from ..runs.nll_eval import evaluate_nll
    from ..training.backend import torch_threads

    for flag in ("sampler", "steps", "eta", "spacing", "labels", "prompt", "guidance",
                 "classifier", "threshold", "threshold_p"):
        if getattr(args, flag) is not None:
            raise UsageError(f"{_flag(flag)} does not apply to --nll (it scores test data, "
                             "it does not sample)")
    cfg, model, schedule = load_run(args.run)
    n = args.n if args.n is not None else NLL_N_IMAGES if is_image(cfg.dataset) else NLL_N_POINTS
    with torch_threads(cfg.threads):
        metrics = evaluate_nll(
            model, schedule, cfg, n=n, seed=args.seed,
            ode_steps=min(NLL_ODE_STEPS, cfg.T) if args.ode_steps is None else args.ode_steps,
            hutchinson_samples=1 if args.hutchinson_samples is None else args.hutchinson_samples)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def cmd_distill(args) -> int:
    from .distill import cmd_distill as distill

    return distill(args)


def cmd_train_classifier(args) -> int:
    from .cond import cmd_train_classifier as train_classifier

    return train_classifier(args)


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval,
            "train-classifier": cmd_train_classifier, "distill": cmd_distill}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError(f"choose a command: {', '.join(COMMANDS)} (see '{PROG} --help')")
        return COMMANDS[args.command](args)
    except (UsageError, ValueError, ckpt.CheckpointError, ckpt.RunExistsError, OSError) as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exit_:  # --help and --version
        return exit_.code if isinstance(exit_.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (a run continues from its last checkpoint with "
              f"'{PROG} train --resume RUN')", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.strerror or err}: {err.filename}"
    return " ".join(str(err).split()) or type(err).__name__
