"""Run directories for fast sampling: distilled students and consistency models as runs that
``difflab sample`` and ``difflab eval`` load like any other (Weng §"Fewer Sampling Steps &
Distillation").

- :func:`distill_progressive` — Salimans & Ho 2022, Alg. 2 (Weng Fig. 9-10): rounds N → N/2 →
  … from a run's EMA network; round r is saved as ``OUT/steps-<N_r>``, a run whose config says
  ``method = "progressive"``, ``prediction`` (x0, v) and ``distilled_steps = N_r``, and whose
  sampler defaults are DDIM, N_r steps, trailing spacing (the grid it was distilled on).
- :func:`distill_consistency` — consistency distillation, Song et al. 2023, Alg. 2 (Weng
  eq. 31), into a run of ``method = "consistency-distillation"``.
- :func:`difflab.distill.ct_run.train_consistency` — consistency training, Song et al. 2023,
  Alg. 3 (Weng eq. 32), what ``difflab train --method consistency-training`` runs.

In all three the network is built by :func:`difflab.train.build_model` from the run's config
and its weights are saved bare (safetensors, atomic writes); :func:`sampling_model` is what
:func:`difflab.train.load_run` wraps them in: an ε-model for students (``V.as_eps``,
``X0.as_eps``) and f_θ (:class:`ConsistencyModel`, eq. 30) for consistency runs. A consistency
run's ``ema.safetensors`` holds the target network θ⁻ (the EMA of θ the loss bootstraps
from), ``model.safetensors`` the online θ.

Consistency training checkpoints and resumes exactly as ``difflab train`` does (ct_run.py);
the distilled runs are saved once, at the end.
Conditioning: the loops take per-example ``cond_data`` (:func:`cond_data`); unconditional runs
have none.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from . import checkpoint as ckpt
from ..config import CONSISTENCY_METHODS, TrainConfig
from ..schedules import Schedule
from ..distill.consistency import ConsistencyModel
from ..distill.consistency_training import consistency_distill, euler_step, heun_step
from ..distill.distances import classifier_features, feature_distance, l1, l2, pseudo_huber
from ..distill.progressive import EPS, X0, Prediction, V, progressive_distill

PREDICTIONS: dict[str, Prediction] = {"x0": X0, "eps": EPS, "v": V}
SOLVERS = {"euler": euler_step, "heun": heun_step}
DISTANCES = ("l2", "l1", "pseudo_huber", "features")
SIGMA_DATA = 0.5  # σ_d of f_θ's preconditioning (Song et al. 2023, App. C; data in [−1, 1])
DEFAULT_START_STEPS = 64  # progressive: the first student's N (its teacher takes 128 steps)
# what a distilled or consistency run keeps of its teacher's config, and what it resets
_STUDENT = {"variance": "beta_tilde", "loss": "simple", "t_sampling": "uniform", "eval_eta": 0.0,
            "out": ""}


# --- loading ---------------------------------------------------------------------------------
def sampling_model(cfg: TrainConfig, net: nn.Module, schedule: Schedule) -> nn.Module:
    """The model the samplers see for the network of ``cfg``'s run: x0/v students as ε-models
    (``Prediction.as_eps``), consistency networks F_θ as f_θ (Weng eq. 30), others as they are."""
    if cfg.method == "progressive":
        return PREDICTIONS[cfg.prediction].as_eps(net, schedule)
    if cfg.method in CONSISTENCY_METHODS:
        return consistency_model(cfg, net, schedule)
    return net


def consistency_model(cfg: TrainConfig, net: nn.Module, schedule: Schedule) -> ConsistencyModel:
    """f_θ around the network F_θ of a consistency run: EDM's preconditioning with σ_d = 0.5
    (``prediction = "eps"``, the default: F_θ is a fresh network) or the v-preconditioning in
    the schedule's own coordinates (``prediction = "v"``: F_θ started as the teacher's copy)."""
    if cfg.prediction == "v":
        return ConsistencyModel.v_from_schedule(net, schedule)
    return ConsistencyModel.from_schedule(net, schedule, SIGMA_DATA)


class EpsOnly(nn.Module):
    """ε̂ of a model that may return (ε̂, v) (a learned Σ_θ, Weng eq. 23): distillation targets
    use the deterministic DDIM / ODE path, which needs ε̂ alone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        out = self.model(x_t, t, **cond)
        return out[0] if isinstance(out, tuple) else out


def _teacher(run: str | Path, threads: int | None = None
             ) -> tuple[TrainConfig, nn.Module, Schedule]:
    """The teacher run's config (its torch threads replaced by ``threads`` when given, which the
    students then inherit), its EMA ε-model and schedule."""
    from .load import load_run

    if threads is not None and threads < 0:
        raise ValueError(f"--threads must be at least 0, got {threads}")
    cfg, model, schedule = load_run(run)
    if cfg.method in CONSISTENCY_METHODS:
        raise ValueError(f"{run} is a consistency model; distil a diffusion run or a "
                         "progressive student")
    if threads is not None:
        cfg = dataclasses.replace(cfg, threads=threads)
    return cfg, EpsOnly(model).eval(), schedule


def _raw_net(cfg: TrainConfig, run: str | Path) -> nn.Module:
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
        raise ValueError(f"distilling a {cfg.cond!r}-conditional run is not implemented; "
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
        raise ValueError("--guidance needs a class-conditional teacher (train it with --cond "
                         "class)")
    return ClassifierFree(teacher, guidance, null_cond(cfg))


# --- writing ---------------------------------------------------------------------------------
def check_free(run_dir: Path, overwrite: bool) -> None:
    """RunExistsError now, before any training, where ``prepare_run_dir`` would refuse later."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ckpt.RunExistsError(f"{run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise ckpt.RunExistsError(f"run directory {run_dir} already exists; pass "
                                      "--overwrite to replace it")
        if not (run_dir / ckpt.CONFIG).is_file():
            raise ckpt.RunExistsError(f"refusing to overwrite {run_dir}: it is not empty and "
                                      "not a difflab run directory")


def save_run(run_dir: Path, cfg: TrainConfig, online: nn.Module, ema: nn.Module,
             overwrite: bool) -> None:
    """config.json, then model.safetensors (θ) and ema.safetensors (what sampling loads), each
    written atomically; bare networks (no wrapper prefix in the keys)."""
    ckpt.prepare_run_dir(run_dir, overwrite=overwrite)
    ckpt.write_json(run_dir / ckpt.CONFIG, cfg.to_dict())
    meta = {"format": ckpt.FORMAT, "step": str(cfg.steps), "method": cfg.method}
    ckpt.save_tensors(run_dir / ckpt.MODEL, online.state_dict(), meta)
    ckpt.save_tensors(run_dir / ckpt.EMA, ema.state_dict(), meta)


def _finish(run_dir: Path, cfg: TrainConfig, model: nn.Module, schedule: Schedule,
            losses: list[float], extra: dict, evaluate: bool) -> dict:
    """loss.csv, and (``evaluate``) metrics.json, samples and the reverse process as
    ``difflab train`` writes them; without evaluation metrics.json holds ``extra`` only."""
    from ..training.losslog import LossLog
    from .evaluate import evaluate_after as _evaluate_after

    log = LossLog(cfg.log_every)
    for k, value in enumerate(losses, start=1):
        log.record(k, value)
    log.write_csv(run_dir / ckpt.LOSS_CSV)
    tail = losses[-max(1, len(losses) // 10):]
    extra = {**extra, "loss": sum(tail) / len(tail) if tail else None}
    if evaluate:
        _evaluate_after(cfg, model, schedule, run_dir, extra)
    else:
        ckpt.write_json(run_dir / ckpt.METRICS, extra)
    return ckpt.read_json(run_dir / ckpt.METRICS)


class BarLog(list):
    """A loss log that also advances a tqdm bar (the distillation loops take a ``log`` list)."""

    def __init__(self, total: int, desc: str, progress: bool):
        super().__init__()
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)

    def append(self, value: float) -> None:
        super().append(value)
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- progressive distillation ----------------------------------------------------------------
def round_steps(start_steps: int, rounds: int, T: int) -> list[int]:
    """[N, N/2, …, N/2^(K−1)] for K = ``rounds``; ValueError where a round would need a
    fraction of a step (or fewer than 1) or its teacher more than T steps (2N ≤ T)."""
    if rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {rounds}")
    if start_steps < 1 or 2 * start_steps > T:
        raise ValueError(f"--start-steps must lie in 1..T/2 (its teacher takes twice as many "
                         f"steps; T = {T}), got {start_steps}")
    if start_steps % 2 ** (rounds - 1):
        raise ValueError(f"--rounds {rounds} from --start-steps {start_steps} would go below 1 "
                         f"step ({start_steps} is not divisible by 2^{rounds - 1}); use at most "
                         f"{int(math.log2(start_steps & -start_steps)) + 1} rounds")
    return [start_steps // 2**r for r in range(rounds)]


def distill_progressive(run: str | Path, out: str | Path, *, rounds: int,
                        start_steps: int | None = None, steps_per_round: int = 1000,
                        prediction: str = "v", init: str = "auto", lr: float | None = None,
                        batch: int | None = None, seed: int = 0, overwrite: bool = False,
                        progress: bool = False, evaluate: bool = True, guidance: float = 0.0,
                        threads: int | None = None,
                        report: Callable[[Path, dict], None] | None = None) -> list[Path]:
    """Progressive distillation of ``run``'s EMA network (Salimans & Ho 2022, Alg. 2) for
    ``rounds`` rounds of ``steps_per_round`` updates; returns the round directories
    ``out/steps-<N>``, N = start_steps, start_steps/2, …

    start_steps: the first student's N (default 64; for a progressive teacher, half its steps —
    it is only exact on its own grid). init: the first student — "copy" of the teacher's
    network (Alg. 2; when the teacher predicts ε and the student v or x0, its output is
    reinterpreted: a warm start of the features only), "fresh" (seeded), or "auto": a copy
    when it predicts ``prediction`` already, else fresh (progressive.py). lr: AdamW peak,
    decayed linearly to 0 each round (default a tenth of the teacher's); batch: default the
    teacher's. guidance: w of classifier-free guidance for a class-conditional teacher (see
    :func:`guided_teacher`); the students are then conditional models with the guidance built
    in, sampled with w = 0. threads: torch threads (default the teacher's). ``report(dir,
    metrics)`` after each round.
    """
    t_cfg, teacher, schedule = _teacher(run, threads)
    if not (guidance >= 0 and guidance < float("inf")):
        raise ValueError(f"--guidance must be a number >= 0, got {guidance}")
    teacher = guided_teacher(t_cfg, teacher, guidance)
    if prediction not in ("x0", "v", "eps"):
        raise ValueError(f"--prediction must be v, x0 or eps, got {prediction!r}")
    if init not in ("auto", "copy", "fresh"):
        raise ValueError(f"--init must be auto, copy or fresh, got {init!r}")
    if start_steps is None:
        start_steps = (t_cfg.distilled_steps // 2 if t_cfg.method == "progressive"
                       else DEFAULT_START_STEPS)
    if t_cfg.method == "progressive" and 2 * start_steps != t_cfg.distilled_steps:
        raise ValueError(f"{run} was distilled for {t_cfg.distilled_steps} steps; its student "
                         f"must take half as many (--start-steps {t_cfg.distilled_steps // 2})")
    if steps_per_round < 1:
        raise ValueError(f"--steps-per-round must be at least 1, got {steps_per_round}")
    out = Path(out)
    steps = round_steps(start_steps, rounds, t_cfg.T)
    dirs = [out / f"steps-{n}" for n in steps]
    for d in dirs:
        check_free(d, overwrite)

    lr = t_cfg.lr / 10 if lr is None else lr
    batch = t_cfg.batch if batch is None else batch
    base = dataclasses.replace(t_cfg, **_STUDENT, method="progressive", prediction=prediction,
                               distilled_steps=steps[0], eval_sampler="ddim",
                               eval_steps=steps[0], eval_spacing="trailing",
                               steps=steps_per_round, lr=lr, batch=batch, seed=seed,
                               eval_guidance=0.0)
    if init == "copy" and t_cfg.variance == "learned":
        raise ValueError(f"--init copy needs a teacher with a fixed variance (the same "
                         f"network shape); {run} learns Σ_θ")
    if init == "copy" or (init == "auto" and t_cfg.prediction == prediction
                          and t_cfg.variance != "learned"):
        student = _raw_net(t_cfg, run).requires_grad_(True)  # Alg. 2: init from the teacher
    else:
        from ..build.model import build_model

        student = build_model(base)  # seeded by ``seed``
    data = _training_data(t_cfg)  # (n, …)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    log = BarLog(steps_per_round * rounds, "distill", progress)

    def save_round(r: int, n: int, net: nn.Module) -> None:
        nonlocal t0
        cfg = dataclasses.replace(base, distilled_steps=n, eval_steps=n)
        save_run(dirs[r], cfg, net, net, overwrite)
        extra = {"method": "progressive", "teacher": str(run), "round": r + 1,
                 "rounds": rounds, "distilled_steps": n, "teacher_steps": 2 * n,
                 "prediction": prediction, "train_steps": steps_per_round,
                 "teacher_guidance": guidance,
                 "train_seconds": time.perf_counter() - t0}
        losses = log[-steps_per_round:]
        metrics = _finish(dirs[r], cfg, sampling_model(cfg, net, schedule), schedule, losses,
                          extra, evaluate)
        if report is not None:
            report(dirs[r], metrics)
        t0 = time.perf_counter()

    try:
        with _threads(t_cfg):
            progressive_distill(teacher, student, schedule, data, steps[0], rounds,
                                parameterization=PREDICTIONS[prediction], callback=save_round,
                                iters=steps_per_round, batch=batch, lr=lr,
                                grad_clip=t_cfg.grad_clip, generator=g,
                                cond_data=cond_data(t_cfg), log=log)
    finally:
        log.close()
    return dirs


# --- consistency distillation and training ---------------------------------------------------
def distance_fn(name: str, cfg: TrainConfig) -> Callable[[Tensor, Tensor], Tensor]:
    """d of eq. (31)-(32) by name; "features": the committed FD classifier's features (images
    with a classifier only — the LPIPS stand-in, Weng eq. 31)."""
    if name == "features":
        from ..config import IMAGE_SIZES, image_size

        if cfg.dataset not in IMAGE_SIZES:
            raise ValueError(f"--distance features needs digits or mnist (a committed "
                             f"classifier), not {cfg.dataset}")
        return feature_distance(classifier_features(cfg.dataset, image_size(cfg)))
    fns = {"l2": l2, "l1": l1, "pseudo_huber": pseudo_huber}
    if name not in fns:
        raise ValueError(f"--distance must be one of {', '.join(DISTANCES)}, got {name!r}")
    return fns[name]


def distill_consistency(run: str | Path, out: str | Path, *, solver: str = "heun", N: int = 18,
                        distance: str = "l2", iters: int = 2000, lr: float | None = None,
                        batch: int | None = None, seed: int = 0, mu: float = 0.95,
                        init: str = "auto", overwrite: bool = False, progress: bool = False,
                        evaluate: bool = True, threads: int | None = None
                        ) -> tuple[Path, dict]:
    """Consistency distillation of ``run``'s EMA ε-model into f_θ (Song et al. 2023, Alg. 2;
    Weng eq. 31): N Karras levels snapped to the schedule's steps, Φ = one ``solver`` step of
    the teacher's probability-flow ODE, target decay μ. lr: AdamW, decayed linearly to 0
    (default 4e-4, Song et al.'s CIFAR-10 value); batch: default the teacher's. init: "fresh"
    (a new F_θ, EDM preconditioning), "copy" (F_θ starts as the teacher's network, read as a
    v-network: ``ConsistencyModel.v_from_schedule``; Song et al. also start from the teacher's
    weights) or "auto" (copy where the teacher predicts ε or v with a fixed variance).
    threads: torch threads (default the teacher's). Returns (run directory, metrics)."""
    from ..build.model import build_model

    if solver not in SOLVERS:
        raise ValueError(f"--solver must be euler or heun, got {solver!r}")
    if N < 2:
        raise ValueError(f"--N must be at least 2 (levels of the ODE), got {N}")
    if iters < 1:
        raise ValueError(f"--iters must be at least 1, got {iters}")
    t_cfg, teacher, schedule = _teacher(run, threads)
    copyable = t_cfg.variance != "learned" and t_cfg.prediction in ("eps", "v")
    if init not in ("auto", "fresh", "copy"):
        raise ValueError(f"--init must be auto, fresh or copy, got {init!r}")
    if init == "auto":
        init = "copy" if copyable else "fresh"
    out = Path(out)
    check_free(out, overwrite)
    lr = 4e-4 if lr is None else lr
    batch = t_cfg.batch if batch is None else batch
    if init == "copy" and not copyable:
        raise ValueError("--init copy needs a teacher whose network predicts ε or v with a "
                         f"fixed variance ({run} has variance {t_cfg.variance!r}, prediction "
                         f"{t_cfg.prediction!r}); use --init fresh")
    cfg = dataclasses.replace(t_cfg, **_STUDENT, method="consistency-distillation",
                              prediction="v" if init == "copy" else "eps", distilled_steps=0,
                              eval_sampler="consistency", eval_steps=1, eval_spacing="auto",
                              steps=iters, lr=lr, batch=batch, seed=seed)
    d = distance_fn(distance, cfg)
    net = _raw_net(t_cfg, run).requires_grad_(True) if init == "copy" else build_model(cfg)
    model = consistency_model(cfg, net, schedule)
    target = copy.deepcopy(model).requires_grad_(False)  # θ⁻
    log = BarLog(iters, "consistency distillation", progress)
    t0 = time.perf_counter()
    try:
        with _threads(cfg):
            consistency_distill(model, teacher, schedule, _training_data(t_cfg), N=N,
                                solver=SOLVERS[solver], distance=d, mu=mu, iters=iters,
                                batch=batch, lr=lr, lr_decay=True, grad_clip=cfg.grad_clip,
                                generator=torch.Generator().manual_seed(seed),
                                cond_data=cond_data(t_cfg), target=target, log=log)
    finally:
        log.close()
    save_run(out, cfg, model.net, target.net, overwrite)
    extra = {"method": cfg.method, "teacher": str(run), "solver": solver, "N": N,
             "distance": distance, "mu": mu, "init": init, "train_steps": iters,
             "train_seconds": time.perf_counter() - t0}
    return out, _finish(out, cfg, target.eval(), schedule, log, extra, evaluate)


# --- small helpers ---------------------------------------------------------------------------
def _training_data(cfg: TrainConfig) -> Tensor:
    from ..build.data import training_data

    return training_data(cfg)


def _threads(cfg: TrainConfig):
    from ..training.backend import torch_threads

    return torch_threads(cfg.threads)


__all__ = ["DISTANCES", "PREDICTIONS", "SOLVERS", "EpsOnly", "check_free", "cond_data",
           "consistency_model",
           "distance_fn", "distill_consistency", "distill_progressive", "round_steps",
           "sampling_model", "save_run"]
