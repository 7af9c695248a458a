"""Run directories for fast sampling: distilled students and consistency models as runs that
``difflab sample`` and ``difflab eval`` load like any other (Weng §"Fewer Sampling Steps &
Distillation"), trained by the one loop (:func:`difflab.training.fit`) with its checkpoints.

- :func:`distill_progressive` — Salimans & Ho 2022, Alg. 2 (Weng Fig. 9-10): rounds N → N/2 →
  … from a run's EMA network. OUT is the job's directory (kind "progressive-distillation": the
  job's settings and ONE checkpoint, written every ``checkpoint_every`` updates, inside rounds
  too); round r is saved as ``OUT/steps-<N_r>``, a run of kind "progressive" whose config says
  ``prediction`` (x0, v) and ``distilled_steps = N_r``, and whose sampler defaults are DDIM,
  N_r steps, trailing spacing (the grid it was distilled on).
- :func:`distill_consistency` — consistency distillation, Song et al. 2023, Alg. 2 (Weng
  eq. 31), into a run of kind "consistency-distillation" (its checkpoint in the run directory).
- :func:`resume_distillation` continues either from its checkpoint, exactly.

The network is built by :func:`difflab.build.model.build_model` from the run's config; a
consistency run's EMA weights hold the target network θ⁻, its raw weights the online θ.
Conditioning: the loops take per-example ``cond_data`` (:func:`cond_data`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..build.data import training_data
from ..build.model import build_model
from ..config import CONSISTENCY_METHODS, SCORE_METHODS, TrainConfig
from ..distill.consistency_training import euler_step, heun_step
from ..distill.distances import classifier_features, feature_distance, l1, l2, pseudo_huber
from ..errors import ConfigError
from ..schedules import Schedule
from ..training import fit
from ..training.backend import Backend, torch_threads
from ..training.consistency import ConsistencyDistillation
from ..training.faults import NonFiniteError
from ..training.losslog import LossLog
from ..training.progressive import ProgressiveDistillation
from . import checkpoint as ckpt
from . import latent
from .evaluate import evaluate_after
from .load import PREDICTIONS, config_to_json, consistency_model, read_run, sampling_model
from .lock import LOCK_FILE
from .train import saver

SOLVERS = {"euler": euler_step, "heun": heun_step}
DISTANCES = ("l2", "l1", "pseudo_huber", "features")
DEFAULT_START_STEPS = 64  # progressive: the first student's N (its teacher takes 128 steps)
CHECKPOINT_EVERY = 500  # updates between checkpoints of a distillation
# what a distilled or consistency run keeps of its teacher's config, and what it resets
STUDENT_RESET = {"variance": "beta_tilde", "loss": "simple", "t_sampling": "uniform",
                 "eval_eta": 0.0, "out": ""}


class EpsOnly(nn.Module):
    """ε̂ of a model that may return (ε̂, v) (a learned Σ_θ, Weng eq. 23): distillation targets
    use the deterministic DDIM / ODE path, which needs ε̂ alone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        out = self.model(x_t, t, **cond)
        return out[0] if isinstance(out, tuple) else out


DISTILL_NONFINITE_HINT = ("distill --resume cannot change --lr: start the distillation again "
                          "with a lower --lr (--overwrite replaces OUT)")


def fit_distill(*args, **kw):
    """``training.loop.fit``, its stop on a non-finite update naming what distill can do."""
    try:
        return fit(*args, **kw)
    except NonFiniteError as err:
        raise err.with_hint(DISTILL_NONFINITE_HINT) from None

def load_teacher(run: str | Path, threads: int | None = None
             ) -> tuple[TrainConfig, nn.Module, Schedule]:
    """The teacher run's config (its torch threads replaced by ``threads`` when given, which the
    students then inherit), its EMA ε-model and schedule."""
    from .load import load_run

    if threads is not None and threads < 0:
        raise ConfigError(f"--threads must be at least 0, got {threads}")
    cfg, model, schedule = load_run(run)
    if cfg.sr_low_res:
        raise ConfigError(f"{run} is a super-resolution run; distilling one (with its "
                          "low-resolution input) is not implemented")
    if cfg.method in CONSISTENCY_METHODS:
        raise ConfigError(f"{run} is a consistency model; distil a diffusion run or a "
                         "progressive student")
    if cfg.method in SCORE_METHODS:
        raise ConfigError(f"{run} is a score network (method {cfg.method}), sampled by Langevin "
                          "dynamics only; distil a diffusion run or a progressive student")
    if threads is not None:
        cfg = dataclasses.replace(cfg, threads=threads)
    return cfg, EpsOnly(model).eval(), schedule


def distill_data(t_cfg: TrainConfig, job: dict[str, Any]) -> Tensor:
    """The x_0 the students learn from: the teacher's training images, or for a latent teacher
    their latents (:func:`~difflab.runs.latent.encoded_training_data`)."""
    x = training_data(t_cfg)
    if not t_cfg.autoencoder:
        return x
    return latent.encoded_training_data(t_cfg, job["teacher"], x, job["seed"])


def decoder(cfg: TrainConfig, run_dir: Path) -> Callable[[Tensor], Tensor] | None:
    """A latent student's decoder (None in pixel space)."""
    codec = latent.load_codec(run_dir, cfg)
    return codec.decode if codec is not None else None


def raw_network(cfg: TrainConfig, run: str | Path) -> nn.Module:
    """The run's bare EMA network (what its config's ``prediction`` says it outputs)."""
    from ..build.model import build_model

    net = build_model(cfg)
    net.load_state_dict(ckpt.load_weights(run, "ema"))
    return net


def cond_data(cfg: TrainConfig) -> dict[str, Tensor] | None:
    """Per-example conditioning of the run's training data, passed to teacher and student
    (progressive.py, consistency_training.py): {"y": labels (N,)} of ``training_data(cfg)``
    for a class-conditional run, None for an unconditional one."""
    if cfg.cond == "none":
        return None
    if cfg.cond != "class":
        raise ConfigError(f"distilling a {cfg.cond!r}-conditional run is not implemented; "
                         "distil an unconditional or class-conditional run")
    from ..build.data import image_split

    return {"y": image_split(cfg, "train").y}


def guided_teacher(cfg: TrainConfig, teacher: nn.Module, guidance: float) -> nn.Module:
    """The teacher a student learns: ``teacher`` itself, or with classifier-free guidance of
    weight w (Weng eq. 26) on a class-conditional run — the student, always given the label,
    then learns the guided model (Meng et al. 2023 distil guidance the same way, w fixed)."""
    if guidance == 0:
        return teacher
    from ..build.conditioning import null_cond
    from ..guidance import ClassifierFree

    if cfg.cond != "class":
        raise ConfigError("--guidance needs a class-conditional teacher (train it with --cond "
                         "class)")
    return ClassifierFree(teacher, guidance, null_cond(cfg))


def check_free(run_dir: Path, overwrite: bool) -> None:
    """RunExistsError now, before any training, where ``prepare_run_dir`` would refuse later."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ckpt.RunExistsError(f"{run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        if not overwrite:
            raise ckpt.RunExistsError(f"run directory {run_dir} already exists; pass "
                                      "--overwrite to replace it")
        if not (run_dir / ckpt.CONFIG).is_file():
            raise ckpt.RunExistsError(f"refusing to overwrite {run_dir}: it is not empty and "
                                      "not a difflab run directory")


def round_steps(start_steps: int, rounds: int, T: int) -> list[int]:
    """[N, N/2, …, N/2^(K−1)] for K = ``rounds``; ValueError where a round would need a
    fraction of a step (or fewer than 1) or its teacher more than T steps (2N ≤ T)."""
    if rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {rounds}")
    if start_steps < 1 or 2 * start_steps > T:
        raise ConfigError(f"--start-steps must lie in 1..T/2 (its teacher takes twice as many "
                         f"steps; T = {T}), got {start_steps}")
    if start_steps % 2 ** (rounds - 1):
        raise ConfigError(f"--rounds {rounds} from --start-steps {start_steps} would go below 1 "
                         f"step ({start_steps} is not divisible by 2^{rounds - 1}); use at most "
                         f"{int(math.log2(start_steps & -start_steps)) + 1} rounds")
    return [start_steps // 2**r for r in range(rounds)]


def distance_fn(name: str, cfg: TrainConfig) -> Callable[[Tensor, Tensor], Tensor]:
    """d of eq. (31)-(32) by name; "features": the committed FD classifier's features (images
    with a classifier only — the LPIPS stand-in, Weng eq. 31)."""
    if name == "features":
        from ..config import IMAGE_SIZES, image_size

        if cfg.dataset not in IMAGE_SIZES:
            raise ConfigError(f"--distance features needs digits or mnist (a committed "
                             f"classifier), not {cfg.dataset}")
        if cfg.autoencoder:
            raise ConfigError("--distance features compares images; a latent run's student "
                              "outputs latents (use l2, l1 or pseudo_huber)")
        return feature_distance(classifier_features(cfg.dataset, image_size(cfg)))
    fns = {"l2": l2, "l1": l1, "pseudo_huber": pseudo_huber}
    if name not in fns:
        raise ConfigError(f"--distance must be one of {', '.join(DISTANCES)}, got {name!r}")
    return fns[name]


def _backend(job: dict[str, Any]) -> Backend:
    return Backend.create(job["device"], job["precision"], job["compile"])


def _round_loss(log: LossLog, start: int, end: int) -> float | None:
    """The mean of the last tenth of a round's loss-log rows (steps start+1 … end)."""
    rows = [v for s, v in log.rows if start < s <= end]
    tail = rows[-max(1, len(rows) // 10):]
    return sum(tail) / len(tail) if tail else None


# --- progressive distillation ----------------------------------------------------------------
def distill_progressive(run: str | Path, out: str | Path, *, rounds: int,
                        start_steps: int | None = None, steps_per_round: int = 1000,
                        prediction: str = "v", init: str = "auto", lr: float | None = None,
                        batch: int | None = None, seed: int = 0, overwrite: bool = False,
                        progress: bool = False, evaluate: bool = True, guidance: float = 0.0,
                        threads: int | None = None,
                        report: Callable[[Path, dict], None] | None = None,
                        device: str = "auto", precision: str = "fp32", compile: bool = False,
                        checkpoint_every: int = CHECKPOINT_EVERY,
                        max_steps: int | None = None) -> list[Path]:
    """Progressive distillation of ``run``'s EMA network (Salimans & Ho 2022, Alg. 2) for
    ``rounds`` rounds of ``steps_per_round`` updates; returns the round directories
    ``out/steps-<N>``, N = start_steps, start_steps/2, … (only those finished when
    ``max_steps`` stops it early; continue with :func:`resume_distillation`).

    start_steps: the first student's N (default 64; for a progressive teacher, half its steps —
    it is only exact on its own grid). init: the first student — "copy" of the teacher's
    network (Alg. 2; when the teacher predicts ε and the student v or x0, its output is
    reinterpreted: a warm start of the features only), "fresh" (seeded), or "auto": a copy
    when it predicts ``prediction`` already, else fresh. lr: AdamW peak, decayed linearly to 0
    each round (default a tenth of the teacher's); batch: default the teacher's. guidance: w of
    classifier-free guidance for a class-conditional teacher (see :func:`guided_teacher`); the
    students are then conditional models with the guidance built in, sampled with w = 0.
    threads: torch threads (default the teacher's). device, precision, compile: as for
    training. ``report(dir, metrics)`` after each round.
    """
    t_cfg, _, _ = load_teacher(run, threads)
    if not (guidance >= 0 and guidance < float("inf")):
        raise ConfigError(f"--guidance must be a number >= 0, got {guidance}")
    if prediction not in ("x0", "v", "eps"):
        raise ConfigError(f"--prediction must be v, x0 or eps, got {prediction!r}")
    if init not in ("auto", "copy", "fresh"):
        raise ConfigError(f"--init must be auto, copy or fresh, got {init!r}")
    if start_steps is None:
        start_steps = (t_cfg.distilled_steps // 2 if t_cfg.method == "progressive"
                       else DEFAULT_START_STEPS)
    if t_cfg.method == "progressive" and 2 * start_steps != t_cfg.distilled_steps:
        raise ConfigError(f"{run} was distilled for {t_cfg.distilled_steps} steps; its student "
                         f"must take half as many (--start-steps {t_cfg.distilled_steps // 2})")
    if steps_per_round < 1:
        raise ConfigError(f"--steps-per-round must be at least 1, got {steps_per_round}")
    if checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be at least 1, got {checkpoint_every}")
    if init == "copy" and t_cfg.variance == "learned":
        raise ConfigError(f"--init copy needs a teacher with a fixed variance (the same "
                         f"network shape); {run} learns Σ_θ")
    Backend.create(device, precision, compile)  # a device this machine lacks fails here
    out = Path(out)
    steps = round_steps(start_steps, rounds, t_cfg.T)
    check_free(out, overwrite)
    for n in steps:
        check_free(out / f"steps-{n}", overwrite)
    copy = init == "copy" or (init == "auto" and t_cfg.prediction == prediction
                              and t_cfg.variance != "learned")
    job = {"method": "progressive", "teacher": str(run), "rounds": rounds,
           "start_steps": start_steps, "steps_per_round": steps_per_round,
           "prediction": prediction, "init": "copy" if copy else "fresh",
           "lr": t_cfg.lr / 10 if lr is None else lr,
           "batch": t_cfg.batch if batch is None else batch, "seed": seed,
           "evaluate": evaluate, "guidance": guidance, "threads": threads, "device": device,
           "precision": precision, "compile": compile, "checkpoint_every": checkpoint_every}
    base = _student_config(t_cfg, job)
    ckpt.prepare_run_dir(out, overwrite=overwrite)
    ckpt.write_run_config(out, "progressive-distillation", config_to_json(base), job)
    return _run_progressive(out, job, resume=False, progress=progress, max_steps=max_steps,
                            report=report)


def _student_config(t_cfg: TrainConfig, job: dict[str, Any]) -> TrainConfig:
    """The first round's student config: the teacher's, reset (:data:`STUDENT_RESET`)."""
    n = job["start_steps"]
    return dataclasses.replace(
        t_cfg, **STUDENT_RESET, method="progressive", prediction=job["prediction"],
        distilled_steps=n, eval_sampler="ddim", eval_steps=n, eval_spacing="trailing",
        steps=job["steps_per_round"], lr=job["lr"], batch=job["batch"], seed=job["seed"],
        eval_guidance=0.0, device=job["device"], precision=job["precision"],
        compile=job["compile"])


def _run_progressive(out: Path, job: dict[str, Any], *, resume: bool, progress: bool,
                     max_steps: int | None, report) -> list[Path]:
    t_cfg, teacher, schedule = load_teacher(job["teacher"], job["threads"])
    teacher = guided_teacher(t_cfg, teacher, job["guidance"])
    base = _student_config(t_cfg, job)
    steps = round_steps(job["start_steps"], job["rounds"], t_cfg.T)
    dirs = [out / f"steps-{n}" for n in steps]
    backend = _backend(job)
    spr = job["steps_per_round"]
    log = LossLog(base.log_every)

    clock = [time.perf_counter()]  # when this round (or this session of it) began

    def save_round(r: int, n: int, net: nn.Module) -> None:
        if not backend.is_main or (dirs[r] / ckpt.METRICS).is_file():
            return  # written before an interruption
        cfg = dataclasses.replace(base, distilled_steps=n, eval_steps=n)
        ckpt.prepare_run_dir(dirs[r], overwrite=True)
        ckpt.write_run_config(dirs[r], "progressive", config_to_json(cfg))
        meta = {"format": ckpt.FORMAT, "step": str(spr), "method": "progressive"}
        ckpt.save_tensors(dirs[r] / ckpt.weight_file("denoiser", False), net.state_dict(), meta)
        if cfg.autoencoder:  # a latent student: its own copy of the teacher's autoencoder
            latent.copy_autoencoder(job["teacher"], dirs[r])
        extra = {"method": "progressive", "teacher": job["teacher"], "round": r + 1,
                 "rounds": job["rounds"], "distilled_steps": n, "teacher_steps": 2 * n,
                 "prediction": job["prediction"], "train_steps": spr,
                 "teacher_guidance": job["guidance"],
                 "loss": _round_loss(log, r * spr, (r + 1) * spr),
                 "train_seconds": time.perf_counter() - clock[0]}
        rows = [(s - r * spr, v) for s, v in log.rows if r * spr < s <= (r + 1) * spr]
        ckpt.atomic_write_bytes(dirs[r] / ckpt.LOSS_CSV, LossLog(base.log_every).csv().encode()
                                if not rows else
                                ("step,loss\n" + "".join(f"{s},{v!r}\n" for s, v in rows))
                                .encode())
        if job["evaluate"]:
            evaluate_after(cfg, sampling_model(cfg, net, schedule), schedule, dirs[r], extra,
                           decode=decoder(cfg, dirs[r]))
        else:
            ckpt.write_json(dirs[r] / ckpt.METRICS, extra)
        if report is not None:
            report(dirs[r], ckpt.read_json(dirs[r] / ckpt.METRICS))
        clock[0] = time.perf_counter()

    with torch_threads(base.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(base.seed)
        if job["init"] == "copy":
            student = raw_network(t_cfg, job["teacher"]).requires_grad_(True)  # Alg. 2
        else:
            student = build_model(base)  # seeded by ``seed``
        objective = ProgressiveDistillation(
            teacher, student, schedule, distill_data(t_cfg, job), steps[0], job["rounds"],
            parameterization=PREDICTIONS[job["prediction"]], steps_per_round=spr,
            batch=job["batch"], lr=job["lr"], grad_clip=t_cfg.grad_clip,
            cond_data=cond_data(t_cfg), on_round=save_round)
        state = ckpt.load_checkpoint(out) if resume else None
        g = torch.Generator().manual_seed(job["seed"])
        result = fit_distill(objective, steps=objective.steps, generator=g, backend=backend,
                             log=log, resume=state, max_steps=max_steps,
                             checkpoint_every=job["checkpoint_every"],
                             save=saver(out, "progressive-distillation", log),
                             progress=progress, desc="distill")
    return [d for d, r in zip(dirs, range(len(dirs)), strict=True)
            if (r + 1) * spr <= result.step]


# --- consistency distillation ----------------------------------------------------------------
def distill_consistency(run: str | Path, out: str | Path, *, solver: str = "heun", N: int = 18,
                        distance: str = "l2", iters: int = 2000, lr: float | None = None,
                        batch: int | None = None, seed: int = 0, mu: float = 0.95,
                        init: str = "auto", overwrite: bool = False, progress: bool = False,
                        evaluate: bool = True, threads: int | None = None,
                        device: str = "auto", precision: str = "fp32", compile: bool = False,
                        checkpoint_every: int = CHECKPOINT_EVERY,
                        max_steps: int | None = None) -> tuple[Path, dict]:
    """Consistency distillation of ``run``'s EMA ε-model into f_θ (Song et al. 2023, Alg. 2;
    Weng eq. 31): N Karras levels snapped to the schedule's steps, Φ = one ``solver`` step of
    the teacher's probability-flow ODE, target decay μ. lr: AdamW, decayed linearly to 0
    (default 4e-4, Song et al.'s CIFAR-10 value); batch: default the teacher's. init: "fresh"
    (a new F_θ, EDM preconditioning), "copy" (F_θ starts as the teacher's network, read as a
    v-network: ``ConsistencyModel.v_from_schedule``; Song et al. also start from the teacher's
    weights) or "auto" (copy where the teacher predicts ε or v with a fixed variance).
    threads: torch threads (default the teacher's). Returns (run directory, metrics); metrics
    are empty when ``max_steps`` stopped it early (continue with :func:`resume_distillation`).
    """
    if solver not in SOLVERS:
        raise ConfigError(f"--solver must be euler or heun, got {solver!r}")
    if N < 2:
        raise ConfigError(f"--N must be at least 2 (levels of the ODE), got {N}")
    if iters < 1:
        raise ConfigError(f"--iters must be at least 1, got {iters}")
    if checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be at least 1, got {checkpoint_every}")
    t_cfg, _, _ = load_teacher(run, threads)
    copyable = t_cfg.variance != "learned" and t_cfg.prediction in ("eps", "v")
    if init not in ("auto", "fresh", "copy"):
        raise ConfigError(f"--init must be auto, fresh or copy, got {init!r}")
    if init == "auto":
        init = "copy" if copyable else "fresh"
    if init == "copy" and not copyable:
        raise ConfigError("--init copy needs a teacher whose network predicts ε or v with a "
                         f"fixed variance ({run} has variance {t_cfg.variance!r}, prediction "
                         f"{t_cfg.prediction!r}); use --init fresh")
    Backend.create(device, precision, compile)
    out = Path(out)
    check_free(out, overwrite)
    job = {"method": "consistency", "teacher": str(run), "solver": solver, "N": N,
           "distance": distance, "iters": iters, "lr": 4e-4 if lr is None else lr,
           "batch": t_cfg.batch if batch is None else batch, "seed": seed, "mu": mu,
           "init": init, "evaluate": evaluate, "threads": threads, "device": device,
           "precision": precision, "compile": compile, "checkpoint_every": checkpoint_every}
    cfg = _consistency_config(t_cfg, job)
    distance_fn(distance, cfg)  # a bad distance fails before any writing
    ckpt.prepare_run_dir(out, overwrite=overwrite)
    ckpt.write_run_config(out, "consistency-distillation", config_to_json(cfg), job)
    return _run_consistency(out, job, resume=False, progress=progress, max_steps=max_steps)


def _consistency_config(t_cfg: TrainConfig, job: dict[str, Any]) -> TrainConfig:
    return dataclasses.replace(
        t_cfg, **STUDENT_RESET, method="consistency-distillation",
        prediction="v" if job["init"] == "copy" else "eps", distilled_steps=0,
        eval_sampler="consistency", eval_steps=1, eval_spacing="auto", steps=job["iters"],
        lr=job["lr"], batch=job["batch"], seed=job["seed"], device=job["device"],
        precision=job["precision"], compile=job["compile"])


def _run_consistency(out: Path, job: dict[str, Any], *, resume: bool, progress: bool,
                     max_steps: int | None) -> tuple[Path, dict]:
    t_cfg, teacher, schedule = load_teacher(job["teacher"], job["threads"])
    cfg = _consistency_config(t_cfg, job)
    backend = _backend(job)
    log = LossLog(cfg.log_every)
    with torch_threads(cfg.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = (raw_network(t_cfg, job["teacher"]).requires_grad_(True) if job["init"] == "copy"
               else build_model(cfg))
        objective = ConsistencyDistillation(
            consistency_model(cfg, net, schedule), teacher, schedule, distill_data(t_cfg, job),
            N=job["N"], solver=SOLVERS[job["solver"]], mu=job["mu"], batch=job["batch"],
            iters=job["iters"], lr=job["lr"], lr_decay=True, grad_clip=cfg.grad_clip,
            cond_data=cond_data(t_cfg), distance=distance_fn(job["distance"], cfg))
        state = ckpt.load_checkpoint(out) if resume else None
        result = fit_distill(objective, steps=job["iters"],
                             generator=torch.Generator().manual_seed(job["seed"]),
                             backend=backend, log=log, resume=state, max_steps=max_steps,
                             checkpoint_every=job["checkpoint_every"],
                             save=saver(out, "consistency-distillation", log),
                             progress=progress, desc="consistency distillation")
    if result.step < job["iters"] or not backend.is_main:
        return out, {}
    extra = {"method": cfg.method, "teacher": job["teacher"], "solver": job["solver"],
             "N": job["N"], "distance": job["distance"], "mu": job["mu"], "init": job["init"],
             "train_steps": result.step, "train_seconds": result.seconds, "loss": result.loss}
    target = objective.target.eval()
    if cfg.autoencoder:  # a latent student: its own copy of the teacher's autoencoder
        latent.copy_autoencoder(job["teacher"], out)
    if job["evaluate"]:
        evaluate_after(cfg, target, schedule, out, extra, decode=decoder(cfg, out))
    else:
        ckpt.write_json(out / ckpt.METRICS, extra)
    return out, ckpt.read_json(out / ckpt.METRICS)


def resume_distillation(out: str | Path, *, progress: bool = False,
                        max_steps: int | None = None,
                        report: Callable[[Path, dict], None] | None = None):
    """Continue an interrupted ``difflab distill`` from the checkpoint in ``out``, exactly:
    the round directories (progressive) or (run directory, metrics) (consistency)."""
    out = Path(out)
    kind, _, job = read_run(out)
    ckpt.remove_stale_temps(out)  # of writes a killed run left half done
    if kind == "progressive-distillation":
        return _run_progressive(out, job, resume=True, progress=progress, max_steps=max_steps,
                                report=report)
    if kind == "consistency-distillation" and job:
        return _run_consistency(out, job, resume=True, progress=progress, max_steps=max_steps)
    raise ckpt.CheckpointError(f"{out} is not a distillation to resume (its kind is {kind!r}); "
                               "give the OUT directory of 'difflab distill'")


__all__ = ["DISTANCES", "SOLVERS", "EpsOnly", "check_free", "cond_data", "distance_fn",
           "distill_consistency", "distill_progressive", "guided_teacher", "load_teacher",
           "raw_network", "resume_distillation", "round_steps"]
