"""How consistency training's F_θ sees the noise level: c_noise(σ) = s · ln σ for several s, or
the schedule's own timestep t(σ), at an equal number of updates.

F_θ is difflab's network, whose sinusoidal embedding was built for t ∈ 0..1000. The scale s
decides which of its frequencies the levels σ ∈ [σ_1, σ_T] use: s = 10 (difflab's default,
chosen for distillation with an MLP, see :mod:`difflab.distill.consistency`; the digits and
mnist presets set 250 since this benchmark) spans c_noise ∈ [−46, 51] on the linear schedule,
s = 250 (Song et al.'s code: 1000 · ¼ ln σ) [−1151, 1265]; "schedule" feeds t(σ) ∈ [1, 1000],
what a diffusion network of the schedule sees.

Three parts, each improved consistency training from a fresh F_θ under EDM's preconditioning
(σ_d = 0.5), the rest of the recipe as ``difflab train --method consistency-training``:

- **digits** (where the presets' value was chosen): the digits preset's U-Net, ``--steps``
  updates (default 500, about 3 minutes of one core each), one run per (choice, seed); FD of
  the EMA in 1 and 2 steps (n = 180 × 3, the committed digits classifier's features, against
  the train split);
- **mnist16** (held out): the mnist-base16 preset (the same U-Net on MNIST at 16×16, batch 64;
  about 5 minutes a run), FD through the 32×32 MNIST classifier as the cascade's base stage
  (:class:`difflab.runs.cascade.LowResFD`);
- **2d** (held out, another network): the default preset's MLP on exact mixtures of
  ``benchmarks/samplers_oracle.py`` (ring8-2d, aniso-2d), ``--steps-2d`` updates; sliced W1 to
  a true sample (n = 5000) and the mode error (mode weights + per-mode covariance) in 1 and 2
  steps.

The committed results were made one part at a time (``--parts``, ``--out``):

    taskset -c 0 .venv/bin/python benchmarks/ict_noise_input.py --parts digits \
        --out benchmarks/results/ict_noise_input_digits                     # ~40 min
    taskset -c 1 .venv/bin/python benchmarks/ict_noise_input.py --parts mnist16 --seeds 0,1 \
        --out benchmarks/results/ict_noise_input_mnist16                    # ~35 min
    taskset -c 1 .venv/bin/python benchmarks/ict_noise_input.py --parts 2d \
        --out benchmarks/results/ict_noise_input_2d                         # ~6 min
    .venv/bin/python benchmarks/ict_noise_input.py --quick              # smoke test (~1 min)

Writes benchmarks/results/ict_noise_input.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from difflab import samplers
from difflab.build.data import training_set
from difflab.build.model import build_model, build_schedule
from difflab.config import load_config
from difflab.data.fd import FDEvaluator
from difflab.distill.consistency import ConsistencyModel, log_sigma_noise, schedule_time
from difflab.metrics import swd
from difflab.training import SIGMA_DATA
from difflab.training.backend import Backend
from difflab.training.consistency import ImprovedConsistencyTraining
from difflab.training.loop import fit

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from samplers_oracle import mode_error, targets  # noqa: E402

N_FD = 180


def c_noise_of(choice: str, schedule):
    """c_noise for a choice: "schedule" (t(σ)) or a scale s (s · ln σ)."""
    return schedule_time(schedule) if choice == "schedule" else log_sigma_noise(float(choice))


def train(cfg, schedule, data, choice: str, seed: int, steps: int) -> ConsistencyModel:
    """iCT of a fresh F_θ for ``steps`` updates (the recipe of ``ct_objective``); its EMA f_θ."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(cfg)
    c_noise = c_noise_of(choice, schedule)
    model = ConsistencyModel.from_schedule(net, schedule, SIGMA_DATA, c_noise=c_noise)
    obj = ImprovedConsistencyTraining(model, data, ema_decay=cfg.ema_decay, iters=steps,
                                      batch=cfg.batch, lr=cfg.lr, lr_decay=True,
                                      grad_clip=cfg.grad_clip)
    fit(obj, steps=steps, generator=torch.Generator().manual_seed(seed),
        backend=Backend(torch.device("cpu")))
    return ConsistencyModel.from_schedule(obj.modules()["ema"], schedule, SIGMA_DATA,
                                          c_noise=c_noise).eval()


IMAGE_PARTS = {"digits": "digits", "mnist16": "mnist-base16"}  # part → preset


def fd_evaluator(part: str):
    if part == "digits":
        return FDEvaluator.for_dataset("digits", 8)
    from difflab.runs.cascade import LowResFD

    return LowResFD("mnist", 16)  # through the 32×32 classifier, as the cascade's base stage


def fd_scores(f, schedule, x_T, fd, seed: int | None = None) -> dict[int, float]:
    """{S: FD of f_θ's S-step samples from x_T (n, …), the mean over draws of N_FD}, S = 1, 2;
    the re-noising draws from a generator seeded ``seed`` for each S (None: the global RNG)."""
    out = {}
    for S in (1, 2):
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            x = samplers.consistency(f, schedule, x_T, S, g).clamp(-1, 1)
        out[S] = statistics.fmean(fd.fd(c) for c in x.split(N_FD))
    return out


MIXTURES = ("ring8-2d", "aniso-2d")  # the 2-D targets (samplers_oracle.py)


def mixture(name: str):
    """(the exact mixture, 20000 training points, a true sample of 5000) of a 2-D target."""
    mix = targets()[name]
    data = mix.sample(20000, generator=torch.Generator().manual_seed(1)).float()
    truth = mix.sample(5000, generator=torch.Generator().manual_seed(2)).float()
    return mix, data, truth


def mixture_scores(f, schedule, mix, truth, seed: int | None = None) -> dict[str, float]:
    """Sliced W1 to ``truth`` and the mode error of 5000 samples of f_θ in 1 and 2 steps
    (``swd1``, ``mode1``, ``swd2``, ``mode2``); ``seed`` as in :func:`fd_scores`."""
    x_T = torch.randn(5000, mix.dim, generator=torch.Generator().manual_seed(9))
    out = {}
    for S in (1, 2):
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            x = samplers.consistency(f, schedule, x_T, S, g)
        out[f"swd{S}"], out[f"mode{S}"] = swd(x, truth), mode_error(mix, x)
    return out


def images(part: str, choices, seeds, steps: int, draws: int) -> list[dict]:
    cfg = load_config(IMAGE_PARTS[part], {"threads": 1})
    data, cfg, _ = training_set(cfg)
    schedule = build_schedule(cfg)
    fd = fd_evaluator(part)
    rows = []
    for choice in choices:
        for k in seeds:
            t0 = time.perf_counter()
            f = train(cfg, schedule, data, choice, cfg.seed + k, steps)
            row = {"part": part, "choice": choice, "seed": k,
                   "train_s": round(time.perf_counter() - t0)}
            x_T = torch.randn(N_FD * draws, *data.shape[1:],
                              generator=torch.Generator().manual_seed(1234))
            row.update({f"fd{S}": v for S, v in fd_scores(f, schedule, x_T, fd).items()})
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def two_d(choices, seeds, steps: int) -> list[dict]:
    rows = []
    for name in MIXTURES:
        mix, data, truth = mixture(name)
        for choice in choices:
            for k in seeds:
                cfg = load_config(None, {"seed": k})
                schedule = build_schedule(cfg)
                f = train(cfg, schedule, data, choice, k, steps)
                row = {"target": name, "choice": choice, "seed": k,
                       **mixture_scores(f, schedule, mix, truth)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def mean(rows, key, **match) -> float:
    return statistics.fmean(r[key] for r in rows if all(r[k] == v for k, v in match.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--choices", default="10,250,schedule",
                   help="comma-separated: scales s of s · ln σ, or 'schedule'")
    p.add_argument("--seeds", default="0,1,2,3", help="seed offsets of the digits runs")
    p.add_argument("--seeds-2d", default="0,1,2")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--steps-2d", type=int, default=1500)
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--parts", default="digits,mnist16,2d",
                   help="comma-separated: digits, mnist16, 2d")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "ict_noise_input")
    p.add_argument("--quick", action="store_true", help="smoke test: 10 updates, one seed")
    args = p.parse_args()
    if args.quick:
        args.steps, args.steps_2d, args.seeds, args.seeds_2d, args.draws = 10, 10, "0", "0", 1
        args.out = args.out.with_name(args.out.name + "_quick")
    torch.set_num_threads(1)
    choices = args.choices.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    seeds_2d = [int(s) for s in args.seeds_2d.split(",")]
    t_all = time.perf_counter()
    parts = args.parts.split(",")
    rows = [r for part in IMAGE_PARTS if part in parts
            for r in images(part, choices, seeds, args.steps, args.draws)]
    rows_2d = two_d(choices, seeds_2d, args.steps_2d) if "2d" in parts else []
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "digits": rows, "2d": rows_2d,
           "seconds": time.perf_counter() - t_all}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")

    def label(c):
        return "t(σ) of the schedule" if c == "schedule" else f"{c} · ln σ"

    lines = ["## Consistency training's noise input c_noise (benchmarks/ict_noise_input.py)", "",
             "iCT from a fresh F_θ; " + "; ".join(
                 ([f"images: {args.steps} updates per run, seeds {args.seeds}, FD n = {N_FD} × "
                   f"{args.draws}"] if rows else []) +
                 ([f"2-D: {args.steps_2d} updates, seeds {args.seeds_2d}"] if rows_2d else [])) +
             f". {out['seconds']:.0f} s on 1 thread.", ""]
    for part in IMAGE_PARTS:
        mine = [r for r in rows if r["part"] == part]
        if not mine:
            continue
        role = "tuning" if part == "digits" else "held out"
        lines += [f"### {part} ({role}): FD of the EMA, per seed and mean", "",
                  "| c_noise | " + " | ".join(f"seed {k} (1 / 2 steps)" for k in seeds) +
                  " | mean 1 step | mean 2 steps |",
                  "| --- |" + " ---: |" * (len(seeds) + 2)]
        for c in choices:
            cells = [f"{r['fd1']:.0f} / {r['fd2']:.0f}" for r in mine if r["choice"] == c]
            lines.append(f"| {label(c)} | " + " | ".join(cells) + f" | "
                         f"{mean(mine, 'fd1', choice=c):.1f} | {mean(mine, 'fd2', choice=c):.1f} |")
        lines.append("")
    if rows_2d:
        lines += ["### 2-D mixtures (held out): mean over seeds, 1 / 2 steps", "",
                  "| target | c_noise | sliced W1 | mode error |", "| --- | --- | ---: | ---: |"]
        for name in MIXTURES:
            for c in choices:
                m = {k: mean(rows_2d, k, target=name, choice=c)
                     for k in ("swd1", "swd2", "mode1", "mode2")}
                lines.append(f"| {name} | {label(c)} | {m['swd1']:.4f} / {m['swd2']:.4f} | "
                             f"{m['mode1']:.3f} / {m['mode2']:.3f} |")
        lines.append("")
    md = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
