"""Improved consistency training (Song & Dhariwal 2023) on sklearn digits, against a diffusion
model trained for the same wall time.

Three models of the digits preset's U-Net (`difflab train --preset digits`: 8×8, 32 channels,
batch 128, lr 2e-3), each given the same training wall time W (``--minutes``):

- **diffusion**: L_simple, the preset's cosine lr and EMA, sampled with DDIM-50 (and 10, 2);
- **iCT**: :class:`difflab.training.consistency.ImprovedConsistencyTraining` from a fresh F_θ
  (EDM preconditioning, σ_d = 0.5, c_noise = s · ln σ with the preset's s = 250, or
  ``--ct-noise-scale``): no EMA target, pseudo-Huber (c = 0.00054·√64), lognormal
  levels, N doubling 10 → 1280 in 8 equal stages of the run, weight 1/(σ_{n+1} − σ_n); its
  EMA (decay 0.999, warmed up) is sampled in 1 and 2 steps, the 2-step sample re-noised to
  the default level (σ ≈ 3.4, DDIM's midpoint) and to the level that a search finds
  (:func:`difflab.samplers.consistency_levels.search_levels`, as ``difflab eval
  --search-levels``: FD to the train split on draws of its own, not the reported ones;
  ``--no-search`` skips it);
- **original CT** (Song et al. 2023 Alg. 3; ``--no-original`` skips it) at the same budget;
- **iCT warm**: half of W diffusion, then half of W iCT from that network (read as a v-network,
  `--ct-init-from`), so the pair costs W too (``--no-warm`` skips it);
- with ``--s1 1280,160,…``, one iCT run per final number of levels s1 (the paper's 1280 was
  chosen for 400k updates; a run of a few hundred spends most stages at N in the hundreds).

The steps of each are planned from the fastest of three timings of a few updates (its lr
schedule and curriculum are laid out for them), and training stops when the clock reaches W if
the plan has not ended (on a shared machine the timing drifts); the steps made and seconds are
reported. Before 2026-11-30 the plan came from one timing, and a run timed at a slow moment
could end well before W (the diffusion model of ``ict_digits_batch64_seed*.md`` trained 201-208
s of 240).
FD as benchmarks/distill_digits.py:
Fréchet distance in the committed digits classifier's features against the train split, n = 180
per draw, mean ± s.e. over ``--draws`` draws; the FD curve of iCT (1 step) is measured at the
end of each curriculum stage (the evaluation time is not counted in W). Consistency distillation
(CD) and the original CT from benchmarks/results/distill_digits.json are printed beside it.

``--preset mnist-base16`` runs the same comparison on MNIST at 16×16 (that preset's U-Net, batch
64), as a held-out check on data harder to memorise: on digits (1,617 training images of 8×8)
the diffusion model's FD falls below the floor within minutes (results/memorisation_digits.md);
MNIST-5k has 4,500 of 16×16 (difflab.data.images.mnist). Its FD goes through the 32×32 MNIST
classifier (ict_noise_input.fd_evaluator), n = 500 per draw: the size of the test split behind
its floor.

    nice -n 19 .venv/bin/python benchmarks/ict_digits.py   # ~15 min on 1 thread (4 × 3 min)
    .venv/bin/python benchmarks/ict_digits.py --quick    # smoke test (~2 min: the timings)
    taskset -c 0 .venv/bin/python benchmarks/ict_digits.py --preset mnist-base16 --minutes 12 \
        --no-original --no-warm --no-search --seed 0 --out benchmarks/results/ict_mnist16_seed0
        # (--minutes 45 … --out …/ict_mnist16_45min_seedK: ~95 min a seed)

Writes benchmarks/results/ict_digits.{json,md} (or ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from ict_noise_input import IMAGE_PARTS, fd_evaluator

from difflab import samplers
from difflab.build.data import training_set
from difflab.build.model import build_model, build_schedule
from difflab.config import load_config
from difflab.data.fd import FDEvaluator
from difflab.distill.consistency_training import ict_num_stages
from difflab.samplers.consistency_levels import search_levels
from difflab.training import OBJECTIVES, consistency_model
from difflab.training.backend import Backend
from difflab.training.consistency import ConsistencyTraining, ImprovedConsistencyTraining
from difflab.training.loop import fit

ROOT = Path(__file__).resolve().parent
PART = {preset: part for part, preset in IMAGE_PARTS.items()}  # preset → fd_evaluator's part


class Clock:
    """Training wall time, less the time spent in evaluations."""

    def __init__(self):
        self.start, self.paused = time.perf_counter(), 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused


class OutOfTimeError(Exception):
    """Raised by an ``on_update`` hook when the wall-time budget is spent."""


def fit_for(obj, seconds: float, steps: int, clock: Clock, backend, seed: int, hook=None) -> int:
    """Train ``obj`` (planned for ``steps`` updates: its lr schedule and curriculum) until the
    clock passes ``seconds`` or the steps are done; returns the updates made."""
    done = [0]

    def on(step, loss):
        done[0] = step
        if hook is not None:
            hook(step, loss)
        if clock.seconds() >= seconds and step < steps:
            raise OutOfTimeError

    with contextlib.suppress(OutOfTimeError):
        fit(obj, steps=steps, generator=torch.Generator().manual_seed(seed), backend=backend,
            on_update=on)
    return done[0]


@dataclasses.dataclass
class Scorer:
    """FD to the train split over ``draws`` draws of ``n`` images of ``shape`` each (``n``: the
    size of the test split behind the floor, 180 digits or 500 MNIST)."""

    fd: FDEvaluator
    n: int
    draws: int
    shape: tuple[int, ...]

    def noise(self, seed: int) -> torch.Tensor:
        """x_T for every draw, (n · draws, *shape)."""
        return torch.randn(self.n * self.draws, *self.shape,
                           generator=torch.Generator().manual_seed(seed))

    def __call__(self, x: torch.Tensor) -> tuple[float, float]:
        """Mean FD over the draws of x and its standard error."""
        vals = [self.fd.fd(c.clamp(-1, 1)) for c in x.split(self.n)]
        se = statistics.stdev(vals) / len(vals) ** 0.5 if len(vals) > 1 else 0.0
        return statistics.fmean(vals), se


@torch.no_grad()
def sample(model, schedule, sampler: str, steps: int, scorer: Scorer, levels=None,
           seed: int = 1234) -> torch.Tensor:
    x_T = scorer.noise(seed)
    if sampler == "consistency":
        return samplers.consistency(model, schedule, x_T, steps,
                                    torch.Generator().manual_seed(seed + 1), sigmas=levels)
    return samplers.SAMPLERS[sampler](model, schedule, x_T, steps)


SEARCH_SEED = 99  # the level search's x_T and noise: not the reported draws' (1234)


def searched_levels(f, schedule, scorer: Scorer) -> tuple[list[float], float]:
    """The 2-step re-noising level that minimises FD to the train split
    (:func:`difflab.samplers.consistency_levels.search_levels`, as ``difflab eval
    --search-levels``), on draws of its own; the reported FD is then measured on the usual
    ones."""
    levels, value, _ = search_levels(f, schedule, scorer.noise(SEARCH_SEED),
                                     lambda x: scorer(x)[0], 2,
                                     seed=SEARCH_SEED + 1)
    return levels, value


def per_step(objective, backend, n: int = 6, repeats: int = 3) -> float:
    """Seconds an update of ``objective`` takes: the fastest of ``repeats`` timings of ``n``
    updates of a throw-away copy, each after one warm-up. The fastest, because a plan made from
    a slow moment ends before W (the model then trains for less time than its rival), while a
    plan too long is cut at W with its cosine lr nearly at its floor."""
    import copy

    times = []
    for _ in range(repeats):
        obj = copy.deepcopy(objective)
        t0 = [0.0]

        def on(step, _, t0=t0):
            if step == 1:
                t0[0] = time.perf_counter()

        fit(obj, steps=n + 1, generator=torch.Generator().manual_seed(0), backend=backend,
            on_update=on)
        times.append((time.perf_counter() - t0[0]) / n)
    return min(times)


def diffusion(cfg, schedule, data, backend, seconds: float):
    obj0 = OBJECTIVES["diffusion"](cfg, schedule, data, None, backend)
    steps = max(int(seconds / per_step(obj0, backend)), 10)
    cfg = load_config(None, {**cfg.to_dict(), "steps": steps, "warmup": min(100, steps // 10)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        obj = OBJECTIVES["diffusion"](cfg, schedule, data, None, backend)
    clock = Clock()
    done = fit_for(obj, seconds, steps, clock, backend, cfg.seed)
    return obj.modules()["ema"].eval(), done, clock.seconds()


def consistency(kind, cfg, schedule, data, backend, seconds: float, scorer: Scorer,
                init=None, s1: int = 1280, batch: int | None = None):
    """iCT (or the original CT) for ``seconds``; FD (1 step) at each stage's end. ``s1``: iCT's
    final number of levels (the curriculum doubles N from 10 to s1 in equal stages)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_model(cfg)
    if init is not None:
        net.load_state_dict(init.state_dict())

    # f_θ around F_θ as `difflab train --method consistency-training [--ct-init-from RUN]` builds
    # it (the warm start's RUN is the in-memory diffusion model, so any non-empty name will do)
    ct_cfg = dataclasses.replace(cfg, method="consistency-training", eval_sampler="consistency",
                                 ct_init_from="" if init is None else "<diffusion (W/2)>")

    def wrap(net):
        return consistency_model(ct_cfg, net, schedule)

    model = wrap(net)
    kw = dict(batch=batch or cfg.batch, lr=cfg.lr, lr_decay=True, grad_clip=cfg.grad_clip)

    def make(iters):
        if kind == "original":
            from difflab.training import ct_final_levels

            return ConsistencyTraining(model, data, s1=ct_final_levels(iters), iters=iters, **kw)
        return ImprovedConsistencyTraining(model, data, ema_decay=cfg.ema_decay, iters=iters,
                                           s1=s1, **kw)

    steps = max(int(seconds / per_step(make(100), backend)), 16)
    obj = make(steps)
    stages = 8 if kind == "original" else ict_num_stages(10, s1)
    marks = {max(steps * k // stages, 1) for k in range(1, stages + 1)}
    curve, clock = [], Clock()

    def on(step, _):
        if step in marks:
            t0 = time.perf_counter()
            ema = obj.modules()["ema"]
            f = wrap(ema).eval()
            v, se = scorer(sample(f, schedule, "consistency", 1, scorer))
            curve.append({"step": step, "seconds": round(clock.seconds(), 1), "fd_1step": v,
                          "fd_se": se})
            print(f"  [{kind}{' warm' if init is not None else ''}] step {step}/{steps} "
                  f"{clock.seconds():.0f}s FD(1) {v:.1f} ± {se:.1f}", flush=True)
            clock.paused += time.perf_counter() - t0

    done = fit_for(obj, seconds, steps, clock, backend, cfg.seed, hook=on)
    ema = obj.modules()["ema"]
    f = wrap(ema).eval()
    return f, done, clock.seconds(), curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0, help="training wall time W per model")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-original", action="store_true", help="skip the original CT at W")
    p.add_argument("--no-warm", action="store_true", help="skip iCT warm-started at W/2")
    p.add_argument("--ict-batch", type=int, default=None,
                   help="iCT's batch (default: the preset's, as the diffusion model's: 128 on "
                        "digits, 64 on mnist-base16)")
    p.add_argument("--no-search", action="store_true",
                   help="skip the 2-step rows at the searched re-noising level")
    p.add_argument("--s1", default="1280",
                   help="iCT's final numbers of levels, comma-separated: one iCT run at W each")
    p.add_argument("--ct-noise-scale", type=float, default=None,
                   help="iCT's c_noise(σ) = s · ln σ (default: the preset's, 250; the "
                        "results before ct_noise_scale existed used 10)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of every model's initialisation and draws (default: the preset's, 0)")
    p.add_argument("--preset", choices=sorted(PART), default="digits",
                   help="the data and U-Net: digits (8×8, the issue's), or mnist-base16 "
                        "(MNIST-5k at 16×16, held out: 4,500 training images, harder to "
                        "memorise)")
    p.add_argument("--out", type=Path, default=None,
                   help="results stem (default: results/ict_digits, or results/ict_mnist16)")
    p.add_argument("--quick", action="store_true", help="smoke test: W = 6 s, 1 draw")
    args = p.parse_args()
    if args.out is None:
        args.out = ROOT / "results" / f"ict_{PART[args.preset]}"
    if args.quick:
        args.minutes, args.draws = 0.1, 1
        args.out = args.out.with_name(args.out.name + "_quick")
    torch.set_num_threads(args.threads)
    over = {} if args.ct_noise_scale is None else {"ct_noise_scale": args.ct_noise_scale}
    if args.seed is not None:
        over["seed"] = args.seed
    cfg = load_config(args.preset, {"threads": args.threads, **over})
    backend = Backend(torch.device("cpu"))
    data, cfg, _ = training_set(cfg)
    schedule = build_schedule(cfg)
    fd = fd_evaluator(PART[args.preset])
    scorer = Scorer(fd, 180 if args.preset == "digits" else 500, args.draws,
                    tuple(data.shape[1:]))
    W = 60 * args.minutes
    t_all = time.perf_counter()
    rows, curves = [], {}

    def row(label, model, sampler, steps, train_steps, seconds, levels=None):
        t0 = time.perf_counter()
        v, se = scorer(sample(model, schedule, sampler, steps, scorer, levels))
        rows.append({"label": label, "sampler": sampler, "steps": steps, "fd": v, "fd_se": se,
                     "train_steps": train_steps, "train_seconds": round(seconds, 1),
                     "sample_seconds": round(time.perf_counter() - t0, 1), "levels": levels})
        print(f"[{label}] {sampler} {steps}: FD {v:.1f} ± {se:.1f}", flush=True)

    def consistency_rows(label, f, train_steps, seconds):
        for s in (1, 2):
            row(label, f, "consistency", s, train_steps, seconds)
        if not args.no_search:
            levels, _ = searched_levels(f, schedule, scorer)
            row(f"{label}, searched τ = {levels[0]:.2f}", f, "consistency", 2, train_steps,
                seconds, levels)

    print(f"diffusion, {W:.0f} s", flush=True)
    eps, d_steps, d_sec = diffusion(cfg, schedule, data, backend, W)
    for s in (50, 10, 2):
        row("diffusion", eps, "ddim", s, d_steps, d_sec)
    for s1 in (int(v) for v in args.s1.split(",")):
        name, label = ("ict", "iCT") if s1 == 1280 else (f"ict_s1_{s1}", f"iCT (s1 = {s1})")
        print(f"{label}, {W:.0f} s", flush=True)
        f, c_steps, c_sec, curves[name] = consistency("improved", cfg, schedule, data, backend,
                                                      W, scorer, s1=s1,
                                                      batch=args.ict_batch)
        consistency_rows(label, f, c_steps, c_sec)
    if not args.no_original:
        f, o_steps, o_sec, curves["ct"] = consistency("original", cfg, schedule, data, backend,
                                                      W, scorer)
        consistency_rows("CT (original)", f, o_steps, o_sec)
    if not args.no_warm:
        print(f"iCT warm: diffusion {W / 2:.0f} s + iCT {W / 2:.0f} s", flush=True)
        eps_half, h_steps, h_sec = diffusion(cfg, schedule, data, backend, W / 2)
        row("diffusion (W/2)", eps_half, "ddim", 50, h_steps, h_sec)
        f, w_steps, w_sec, curves["ict_warm"] = consistency("improved", cfg, schedule, data,
                                                            backend, W / 2, scorer,
                                                            init=eps_half)
        consistency_rows("iCT warm (W/2 + W/2)", f, w_steps, h_sec + w_sec)
    prior = {}
    old = ROOT / "results" / "distill_digits.json"
    if old.exists() and args.preset == "digits":
        for r in json.loads(old.read_text()).get("rows", []):
            if r.get("label", "").startswith(("cd", "ct", "CD", "CT", "consistency")):
                prior[f"{r['label']} {r['sampler']} {r['steps']}"] = r.get("fd")
    out = {"minutes": args.minutes, "seed": cfg.seed, "ct_noise_scale": cfg.ct_noise_scale,
           "preset": args.preset, "n_per_draw": scorer.n,
           "draws": args.draws, "threads": args.threads, "s1": args.s1,
           "ict_batch": args.ict_batch or cfg.batch,
           "floor": fd.floor(), "rows": rows, "curves": curves, "distill_digits": prior,
           "seconds": time.perf_counter() - t_all}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    ddim50 = next(r["fd"] for r in rows if r["label"] == "diffusion" and r["steps"] == 50)
    lines = [f"## Improved consistency training on {args.preset} (benchmarks/ict_digits.py)",
             "",
             f"Training wall time W = {W:.0f} s per model on {args.threads} thread(s) (shared "
             f"machine), seed {cfg.seed}; FD floor {fd.floor():.1f}; n = {scorer.n} × {args.draws} "
             f"draws; iCT from scratch with c_noise = {cfg.ct_noise_scale:g} ln σ, batch "
             f"{out['ict_batch']}. Total "
             f"{out['seconds']:.0f} s.",
             "",
             "| model | sampler | NFE | FD | ÷ DDIM-50 FD | train steps | train s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['sampler']} | {r['steps']} | {r['fd']:.1f} ± "
                     f"{r['fd_se']:.1f} | {r['fd'] / ddim50:.2f} | {r['train_steps']} | "
                     f"{r['train_seconds']:.0f} |")
    lines += ["", "FD (1 step) against training steps, at the end of each curriculum stage:", ""]
    for name, c in curves.items():
        lines.append(f"- {name}: " + ", ".join(f"{x['step']}: {x['fd_1step']:.0f}" for x in c))
    if prior:
        lines += ["", "From benchmarks/results/distill_digits.json (CD 2000 updates from a "
                  "1500-step teacher; CT 3000 steps): " +
                  ", ".join(f"{k}: {v:.1f}" for k, v in prior.items() if v is not None)]
    md = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
