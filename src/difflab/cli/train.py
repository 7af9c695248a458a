"""``difflab train``: train a model and write a run directory (its path is the last line of
standard output). Every TrainConfig field is a flag (``--device``, ``--precision``,
``--compile/--no-compile`` and ``--grad-accum`` among them).

``--processes N`` re-runs the same command under HF Accelerate, N processes on this machine
(torch.distributed: NCCL on GPUs, gloo on CPUs); it only builds that command line::

    python -m accelerate.commands.launch --multi_gpu --num_processes N --num_machines 1 \\
        --mixed_precision no --dynamo_backend no --main_process_port 0 -m difflab train …

(``--multi_gpu`` is Accelerate's torchrun launcher, which also starts CPU processes; its
``--cpu`` would start a single process without MPI.) For several machines call
``accelerate launch`` yourself, as the README shows.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from ..config import builtin_presets
from .common import (
    PROG,
    UsageError,
    add_progress_flag,
    check_output_dir,
    flag,
    listing_skipped_files,
    training_progress,
)
from .config_flags import add_config_flags, config_from_flags, given_fields

# flags that may change when a run is resumed (the others would break exact resume); the
# device, compile and the processes do not change what a checkpoint holds
RESUMABLE = {"steps", "checkpoint_every", "eval_sampler", "eval_steps", "eval_eta",
             "eval_spacing", "n_eval", "eval_guidance", "threads", "device", "compile",
             "log", "lr", "skip_nonfinite"}  # lr: lowered after a NaN stop (the rest follows it)
TRAINED_METHODS = ("diffusion", "consistency-training", "autoencoder", "dsm", "ssm", "clip",
                   "unclip-prior", "unclip-decoder")  # others: 'distill'
AE_PRESET = "mnist-ae-kl-f4"  # what 'difflab train-autoencoder' trains without --preset
CLIP_PRESET = "shapes-clip"  # what 'difflab train-clip' trains without --preset
# the subcommands that train one method: {command: (method, default preset)}
METHOD_COMMANDS = {"train-autoencoder": ("autoencoder", AE_PRESET),
                   "train-clip": ("clip", CLIP_PRESET)}


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on 2-D data or images and evaluate it",
                       description="Train a diffusion model and write a run directory (its path "
                       "is the last line of standard output). With no arguments: the default "
                       "swiss-roll model. Every flag overrides the preset. With --autoencoder "
                       "RUN (a run of train-autoencoder): latent diffusion in its latent space.")
    add_train_flags(p)
    p.set_defaults(run_command=run, method_command=None)
    p = sub.add_parser("train-autoencoder", help="train the autoencoder of latent diffusion",
                       description="Train the first stage of latent diffusion (Rombach et al. "
                       "2022): a KL- or VQ-regularised autoencoder, and write a run directory "
                       "(its path is the last line of standard output) with PSNR, rFD and the "
                       "latent scale in metrics.json. Without --preset: "
                       f"{AE_PRESET}. Then: difflab train --autoencoder RUN.")
    add_train_flags(p)
    p.set_defaults(run_command=run, method_command="train-autoencoder")
    p = sub.add_parser("train-clip", help="train a small CLIP, the first part of unCLIP",
                       description="Train a small CLIP (Radford et al. 2021): an image encoder "
                       "and a text tower over the frozen MiniLM, symmetric InfoNCE with a "
                       "learned temperature; write a run directory (its path is the last line "
                       "of standard output) with zero-shot accuracy and retrieval recall@1 in "
                       f"metrics.json. Without --preset: {CLIP_PRESET}. Then an unCLIP prior "
                       "and decoder: difflab train --preset shapes-unclip-prior --clip RUN.")
    add_train_flags(p)
    p.set_defaults(run_command=run, method_command="train-clip")


def add_train_flags(p) -> None:
    p.add_argument("--preset", metavar="NAME_OR_PATH",
                   help=f"TOML preset: a built-in name ({', '.join(builtin_presets())}) or a path")
    add_config_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its last "
                   "checkpoint")
    p.add_argument("--extend", action="store_true",
                   help="with --resume RUN --steps N: let N differ from the run's steps although "
                   "its schedule (a cosine or linear learning rate, consistency training's "
                   "levels) spans the total steps; the rest of the schedule is then stretched "
                   "to N from the step the run reached (a finished run trains on from there); "
                   "refused without --extend")
    p.add_argument("--stop-after", type=int, metavar="K",
                   help="stop after K total steps with a checkpoint (resume later with --resume)")
    p.add_argument("--processes", type=int, metavar="N",
                   help="train in N processes on this machine through HF Accelerate (default 1; "
                   "the batch is split between them)")
    add_progress_flag(p, training=True)


def run(args: argparse.Namespace) -> int:
    from ..runs.train import default_run_dir, train
    from ..training.backend import world

    given = given_fields(args)
    if args.stop_after is not None and args.stop_after < 1:
        raise UsageError("--stop-after must be at least 1")
    if args.processes is not None and args.processes < 1:
        raise UsageError(f"--processes must be at least 1, got {args.processes}")
    if args.resume:
        from ..runs.load import read_run_config

        if args.overwrite or args.preset:
            raise UsageError("--resume continues a run as it was; drop --overwrite and --preset")
        fixed = sorted(set(given) - RESUMABLE)
        if fixed:
            raise UsageError(f"{flag(fixed[0])} cannot change when resuming (only "
                             f"{', '.join(flag(k) for k in sorted(RESUMABLE))} can)")
        base = read_run_config(args.resume)
        cfg = config_from_flags(None, given, base=base)
        check_extend(args, base, cfg)
        run_dir = Path(args.resume)
    else:
        if args.extend:
            raise UsageError("--extend goes with --resume RUN --steps N")
        preset = args.preset
        command = args.method_command
        if command:
            method, default = METHOD_COMMANDS[command]
            preset = preset or default
            given.setdefault("method", method)
        cfg = config_from_flags(preset, given)
        check_paths(cfg, command)
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
        check_output_dir(run_dir)
    if cfg.eval_eta and cfg.eval_sampler != "ddim":  # (a run saved so still loads)
        raise UsageError(f"--eval-eta is DDIM's η and applies to --eval-sampler ddim only, not "
                         f"{cfg.eval_sampler} (give --eval-eta 0)")
    if (args.processes or 1) > 1:
        return launch(args, cfg, run_dir)
    with listing_skipped_files(run_dir):
        run_dir = train(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite,
                        progress=training_progress(args), max_steps=args.stop_after)
    if world()[0] != 0:  # one of several processes: the first one reports
        return 0
    if args.stop_after is not None and args.stop_after < cfg.steps:
        print(f"stopped after step {args.stop_after}; continue with: "
              f"{PROG} train --resume {run_dir}")
    else:
        print(summary(run_dir))
    print(run_dir)
    return 0


def stretches_with_steps(cfg) -> str | None:
    """What of a run is a function of its total ``steps`` (so that a resumed run given more
    or fewer steps is no longer the run an uninterrupted training of that length gives), or
    None: a cosine or linear learning rate, consistency training's discretisation N(k)."""
    if cfg.method == "consistency-training":
        return "consistency training's schedule of N(k) levels"
    if cfg.lr_schedule != "constant":
        return f"the {cfg.lr_schedule} learning-rate schedule"
    return None


def check_extend(args: argparse.Namespace, base, cfg) -> None:
    """``--resume RUN --steps N`` with N other than the run's steps: refused unless
    ``--extend`` where the run's schedule depends on its total steps."""
    if cfg.steps == base.steps:
        if args.extend:
            raise UsageError(f"--extend needs --steps other than the run's {base.steps}")
        return
    from ..runs.checkpoint import checkpoint_step

    reached = checkpoint_step(args.resume) or 0
    if cfg.steps < reached:
        raise UsageError(f"--steps {cfg.steps} is below the step {args.resume} reached "
                         f"({reached}); give --steps {reached} or more")
    what = stretches_with_steps(cfg)
    if what is None or args.extend:
        return
    raise UsageError(f"--steps {cfg.steps} would change {args.resume}, a {base.steps}-step run: "
                     f"{what} spans the total steps, so it would be stretched to {cfg.steps} "
                     f"from the step the run reached (not the run {cfg.steps} steps from the "
                     "start give); add --extend to continue it so anyway, or train a new run")


def check_paths(cfg, command: str | None = None) -> None:
    """What the library would only find out deep inside: the method and the directories."""
    if cfg.autoencoder and not Path(cfg.autoencoder).is_dir():
        raise UsageError(f"--autoencoder {cfg.autoencoder}: no such run directory")
    if cfg.method not in TRAINED_METHODS:
        raise UsageError(f"--method {cfg.method} runs are written by '{PROG} distill', not "
                         f"'{PROG} train'")
    if command:  # train-autoencoder, train-clip
        method = METHOD_COMMANDS[command][0]
        if cfg.method != method:
            raise UsageError(f"{command} trains method {method}; --method {cfg.method} runs "
                             f"with '{PROG} train'")
    if cfg.method in ("unclip-prior", "unclip-decoder"):
        if not cfg.clip:
            raise UsageError(f"an {cfg.method} run needs --clip RUN (a run of '{PROG} "
                             "train-clip')")
        if not Path(cfg.clip).is_dir():
            raise UsageError(f"--clip {cfg.clip}: no such run directory")
    if cfg.dataset == "folder" and not Path(cfg.data).is_dir():
        raise UsageError(f"--data {cfg.data}: no such directory")


def summary(run_dir: Path) -> str:
    """One line on a finished run from its metrics.json."""
    from ..runs import checkpoint as ckpt

    m = ckpt.read_json(run_dir / ckpt.METRICS)
    head = f"trained {m['train_steps']} steps in {m['train_seconds']:.1f} s"
    if "recall_i2t" in m:  # a CLIP
        at_t = "".join(f", t={t}: {a:.2f}" for t, a in sorted(m.get("zero_shot_at_t", {}).items(),
                                                           key=lambda kv: int(kv[0])))
        return (f"{head}; zero-shot accuracy {m['zero_shot']:.3f}{at_t}, recall@1 image→text "
                f"{m['recall_i2t']:.3f}, text→image {m['recall_t2i']:.3f} (chance "
                f"{m['recall_chance']:.3f})")
    if "prior_cos_true" in m:  # an unCLIP prior
        return (f"{head}; cos(sampled c_i, true c_i) {m['prior_cos_true']:.3f} (random pairs "
                f"{m['prior_cos_random']:.3f})")
    if "decoder_cos" in m:  # an unCLIP decoder
        acc = m.get("prompt_accuracy", m.get("accuracy"))
        acc = f", accuracy {acc:.3f}" if acc is not None else ""
        fd = f"FD {m['fd']:.2f}, " if "fd" in m else ""
        return (f"{head}; test embeddings decoded: {fd}cos(c_i) {m['decoder_cos']:.3f} "
                f"(random pairs {m['random_cos']:.3f}){acc}")
    if "psnr" in m:  # an autoencoder
        rfd = f", rFD {m['rfd']:.2f}" if "rfd" in m else ""
        usage = f", codebook usage {m['codebook_usage']:.2f}" if "codebook_usage" in m else ""
        return (f"{head}; test PSNR {m['psnr']:.2f} dB{rfd}{usage}; latent scale "
                f"{m['latent_scale']:.4g}")
    if "psnr_real" in m:  # a super-resolution run: its test split's low-res images
        fd = f", FD {m['fd_real']:.2f} (floor {m['fd_floor']:.2f})" if "fd_real" in m else ""
        return (f"{head}; {m['sampler']} {m['steps']} steps on the test split's low-res images: "
                f"PSNR {m['psnr_real']:.2f} dB (bilinear {m['psnr_bilinear']:.2f}){fd}")
    steps = f"{m.get('steps')} steps"
    if "sigma_levels" in m:  # a score network: Langevin over (some of) its levels
        steps = f"{min(m['steps'], m['sigma_levels'])} of {m['sigma_levels']} levels"
    if "fd" in m:
        acc = f"; accuracy {m['accuracy']:.2f}" if "accuracy" in m else ""
        return (f"{head}; {m['sampler']} {steps}: FD {m['fd']:.2f}, floor "
                f"{m['fd_floor']:.2f} (ratio {m['fd_ratio']:.2f}){acc}")
    if "swd" in m:
        return (f"{head}; {m['sampler']} {steps}: SWD {m['swd']:.4f}, floor "
                f"{m['swd_floor']:.4f} (ratio {m['swd_ratio']:.2f})")
    return f"{head}; samples in {run_dir / 'samples.png'} (no FD: no classifier for folders)"


# --- several processes --------------------------------------------------------------------------
def launch(args: argparse.Namespace, cfg, run_dir: Path) -> int:
    """Run this same command in ``args.processes`` processes under ``accelerate launch``; its
    exit code. Every process gets the run directory chosen here (the default one has the time
    in its name)."""
    import importlib.util

    from ..training.backend import resolve_device, world

    n = args.processes
    if world()[1] > 1:
        raise UsageError("--processes inside a process that a launcher started; drop it")
    if importlib.util.find_spec("accelerate") is None:
        raise UsageError("--processes needs HF Accelerate: pip install accelerate")
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None:
        import torch

        if n > torch.cuda.device_count():
            raise UsageError(f"--processes {n} needs {n} GPUs; this machine has "
                             f"{torch.cuda.device_count()} (add --device cpu for CPU processes)")
    from ..runs import checkpoint as ckpt
    from ..runs.distill import check_free
    from ..runs.lock import check_unlocked

    if args.resume:  # a refusal here is one line, not a failure report from every process
        ckpt.check_run_dir(run_dir)
    else:
        check_free(run_dir, args.overwrite)
    check_unlocked(run_dir)  # another trainer in it (runs/lock.py)
    argv = without_processes(args.argv)
    if not args.resume and not cfg.out:
        argv += ["--out", str(run_dir)]
    cmd = launch_command(n, argv)
    print(f"{PROG}: running {n} processes: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    return run_forwarding_sigterm(cmd)


def run_forwarding_sigterm(cmd: list[str]) -> int:
    """Run the launcher ``cmd`` and wait for it; a SIGTERM sent to this process alone (a job
    scheduler's, ``kill``) is passed on to the launcher, which passes it to every process: each
    writes its checkpoint and stops (difflab.training.faults) instead of training on, orphaned.
    (Ctrl-C reaches the launcher from the terminal itself.)"""
    import signal

    proc = subprocess.Popen(cmd)
    forwarded = []

    def forward(signum, frame) -> None:
        forwarded.append(signum)
        proc.send_signal(signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, forward)
    try:
        code = proc.wait()
        return 128 + signal.SIGTERM if forwarded and code != 0 else code
    finally:
        signal.signal(signal.SIGTERM, old)
        if proc.poll() is None:  # (an exception here, e.g. a second Ctrl-C): wait a little
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def launch_command(n: int, argv: list[str]) -> list[str]:
    """``python -m accelerate.commands.launch … -m difflab ARGV`` for n processes here."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", "0", "-m", "difflab", *argv]


def without_processes(argv: list[str]) -> list[str]:
    """``argv`` without ``--processes N`` (or ``--processes=N``, or a prefix argparse took for
    it, such as ``--proc N``)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if len(name) >= 5 and "--processes".startswith(name):
            skip = "=" not in token
            continue
        out.append(token)
    return out
