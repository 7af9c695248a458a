"""AdamW's β2 for improved consistency training, at an equal number of updates.

Improved consistency training doubles its number of levels N every K/8 updates (Song &
Dhariwal 2023, eq. 8) and weights the loss by 1/(σ_{n+1} − σ_n), which doubles with N. The
gradient norm before clipping doubles with it, stage after stage (this script records its median
per stage). The run's gradient clip at 1 then binds in every stage. AdamW's second moment
remembers about 1/(1 − β2) updates: 1000 at the usual 0.999, more than a whole run of 800
updates (100 a stage); 100 at 0.99. This script compares the two (``--betas``) on runs built as
``difflab train --method consistency-training --adam-beta2 B`` builds them (the objective from
``difflab.training.OBJECTIVES``, on the preset's config):

- **digits** (where 0.99 was chosen): the digits preset's U-Net, ``--steps`` updates (default
  800, the updates iCT makes in the 4 minutes of one core of ``ict_digits.py``), seeds 0-3;
  FD of the EMA (sampled by the library) and of the raw weights, in 1 step and in 2 steps
  re-noised to the default level (n = 180 × 3, the committed digits classifier, against the
  train split);
- **mnist16** (held out): the mnist-base16 preset (MNIST at 16×16, batch 64), ``--steps-mnist``
  updates, FD through the 32×32 MNIST classifier as the cascade's base stage;
- **2d** (held out, another network): the default preset's MLP on two exact mixtures of
  ``samplers_oracle.py`` (ring8-2d, aniso-2d), ``--steps-2d`` updates; sliced W1 to a true
  sample and the mode error in 1 and 2 steps.

The committed results (``benchmarks/results/ict_adam_beta2.md``) were made one part per core:

    taskset -c 0 .venv/bin/python benchmarks/ict_adam_beta2.py --parts digits \
        --out benchmarks/results/ict_adam_beta2_digits                        # ~40 min
    taskset -c 1 .venv/bin/python benchmarks/ict_adam_beta2.py --parts mnist16,2d \
        --out benchmarks/results/ict_adam_beta2_heldout                       # ~40 min
    .venv/bin/python benchmarks/ict_adam_beta2.py --quick             # smoke test (~1 min)
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
from difflab.build.model import build_schedule
from difflab.config import load_config
from difflab.metrics import swd
from difflab.training import OBJECTIVES, consistency_model
from difflab.training.backend import Backend
from difflab.training.loop import fit

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from ict_noise_input import fd_evaluator  # noqa: E402
from samplers_oracle import mode_error, targets  # noqa: E402

N_FD = 180
PRESETS = {"digits": "digits", "mnist16": "mnist-base16"}  # part → preset


class StageNorms:
    """A loop logger that keeps each update's gradient norm before clipping."""

    def __init__(self):
        self.norms: list[tuple[int, float]] = []

    def update(self, step, loss, lr, grad_norm, batch) -> None:
        self.norms.append((step, float(grad_norm)))

    def evaluation(self, run_dir, step) -> None:
        pass

    def close(self) -> None:
        pass

    def medians(self, steps: int, stages: int = 8) -> list[float]:
        size = max(steps // stages, 1)
        parts = [[v for s, v in self.norms if k * size < s <= (k + 1) * size]
                 for k in range(stages)]
        return [round(statistics.median(p), 3) for p in parts if p]


def train(cfg, schedule, data, beta2: float, seed: int, steps: int):
    """iCT as ``difflab train --method consistency-training --adam-beta2 beta2 --steps steps
    --seed seed`` builds it; returns (f_θ of the EMA, f_θ of the raw weights, stage norms)."""
    cfg = load_config(None, {**cfg.to_dict(), "method": "consistency-training", "steps": steps,
                             "seed": seed, "adam_beta2": beta2, "eval_sampler": "consistency",
                             "eval_steps": 1})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        obj = OBJECTIVES["consistency-training"](cfg, schedule, data, None, None)
    assert obj.betas == (0.9, beta2)
    norms = StageNorms()
    fit(obj, steps=steps, generator=torch.Generator().manual_seed(seed),
        backend=Backend(torch.device("cpu")), logger=norms)
    return (consistency_model(cfg, obj.modules()["ema"], schedule).eval(),
            consistency_model(cfg, obj.modules()["model"], schedule).eval(), norms.medians(steps))


def images(part: str, betas, seeds, steps: int, draws: int) -> list[dict]:
    cfg = load_config(PRESETS[part], {"threads": 1})
    data, cfg, _ = training_set(cfg)
    schedule = build_schedule(cfg)
    fd = fd_evaluator(part)
    rows = []
    for beta2 in betas:
        for k in seeds:
            t0 = time.perf_counter()
            ema, raw, norms = train(cfg, schedule, data, beta2, cfg.seed + k, steps)
            row = {"part": part, "beta2": beta2, "seed": k, "steps": steps,
                   "train_s": round(time.perf_counter() - t0), "grad_norm_stages": norms}
            x_T = torch.randn(N_FD * draws, *data.shape[1:],
                              generator=torch.Generator().manual_seed(1234))
            for which, f in (("ema", ema), ("raw", raw)):
                for S in (1, 2):
                    with torch.no_grad():
                        x = samplers.consistency(f, schedule, x_T, S,
                                                 torch.Generator().manual_seed(1235)).clamp(-1, 1)
                    row[f"fd{S}_{which}"] = statistics.fmean(fd.fd(c) for c in x.split(N_FD))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def two_d(betas, seeds, steps: int) -> list[dict]:
    rows = []
    for name in ("ring8-2d", "aniso-2d"):
        mix = targets()[name]
        data = mix.sample(20000, generator=torch.Generator().manual_seed(1)).float()
        truth = mix.sample(5000, generator=torch.Generator().manual_seed(2)).float()
        for beta2 in betas:
            for k in seeds:
                cfg = load_config(None, {"threads": 1})
                ema, _, norms = train(cfg, build_schedule(cfg), data, beta2, k, steps)
                row = {"target": name, "beta2": beta2, "seed": k, "grad_norm_stages": norms}
                x_T = torch.randn(5000, mix.dim, generator=torch.Generator().manual_seed(9))
                for S in (1, 2):
                    with torch.no_grad():
                        x = samplers.consistency(ema, build_schedule(cfg), x_T, S,
                                                 torch.Generator().manual_seed(10))
                    row[f"swd{S}"], row[f"mode{S}"] = swd(x, truth), mode_error(mix, x)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def mean(rows, key, **match) -> float:
    return statistics.fmean(r[key] for r in rows if all(r[k] == v for k, v in match.items()))


def report(args, rows, rows_2d, seconds: float) -> str:
    betas = [float(b) for b in args.betas.split(",")]
    lines = ["## AdamW's β2 for improved consistency training (benchmarks/ict_adam_beta2.py)", "",
             "iCT from a fresh F_θ as `difflab train --method consistency-training --adam-beta2 "
             "B` builds it, at equal updates. " + "; ".join(
                 [f"{p}: {r[0]['steps']} updates, seeds "
                  f"{', '.join(str(x['seed']) for x in r if x['beta2'] == betas[0])}"
                  for p in PRESETS if (r := [x for x in rows if x["part"] == p])] +
                 ([f"2-D: {args.steps_2d} updates, seeds {args.seeds_2d}"] if rows_2d else [])) +
             f". FD n = {N_FD} × {args.draws}, 2 steps re-noised to the default level. "
             f"{seconds:.0f} s on 1 thread.", ""]
    for part in PRESETS:
        mine = [r for r in rows if r["part"] == part]
        if not mine:
            continue
        role = "tuning" if part == "digits" else "held out"
        seeds = sorted({r["seed"] for r in mine})
        lines += [f"### {part} ({role}): FD, EMA (raw weights), 1 step / 2 steps", "",
                  "| β2 | " + " | ".join(f"seed {k}" for k in seeds) +
                  " | mean 1 step EMA (raw) | mean 2 steps EMA (raw) |",
                  "| --- |" + " ---: |" * (len(seeds) + 2)]
        for b in betas:
            cells = [f"{r['fd1_ema']:.0f} ({r['fd1_raw']:.0f}) / {r['fd2_ema']:.0f} "
                     f"({r['fd2_raw']:.0f})" for r in mine if r["beta2"] == b]
            m = {k: mean(mine, k, beta2=b) for k in ("fd1_ema", "fd1_raw", "fd2_ema", "fd2_raw")}
            lines.append(f"| {b} | " + " | ".join(cells) + f" | {m['fd1_ema']:.1f} "
                         f"({m['fd1_raw']:.1f}) | {m['fd2_ema']:.1f} ({m['fd2_raw']:.1f}) |")
        first = next(r for r in mine if r["beta2"] == betas[0])
        lines += ["", f"Median gradient norm before clipping per curriculum stage (β2 = "
                  f"{betas[0]}, seed {first['seed']}): {first['grad_norm_stages']}", ""]
    if rows_2d:
        lines += ["### 2-D mixtures (held out): mean over seeds, 1 / 2 steps", "",
                  "| target | β2 | sliced W1 | mode error |", "| --- | --- | ---: | ---: |"]
        for name in ("ring8-2d", "aniso-2d"):
            for b in betas:
                m = {k: mean(rows_2d, k, target=name, beta2=b)
                     for k in ("swd1", "swd2", "mode1", "mode2")}
                lines.append(f"| {name} | {b} | {m['swd1']:.4f} / {m['swd2']:.4f} | "
                             f"{m['mode1']:.3f} / {m['mode2']:.3f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--betas", default="0.999,0.99", help="comma-separated β2 values")
    p.add_argument("--seeds", default="0,1,2,3", help="seed offsets of the digits runs")
    p.add_argument("--seeds-mnist", default="0,1,2")
    p.add_argument("--seeds-2d", default="0,1,2")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--steps-mnist", type=int, default=500)
    p.add_argument("--steps-2d", type=int, default=1500)
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--parts", default="digits,mnist16,2d",
                   help="comma-separated: digits, mnist16, 2d")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "ict_adam_beta2")
    p.add_argument("--quick", action="store_true", help="smoke test: 16 updates, one seed")
    args = p.parse_args()
    if args.quick:
        args.steps = args.steps_mnist = args.steps_2d = 16
        args.seeds = args.seeds_mnist = args.seeds_2d = "0"
        args.draws = 1
        args.out = args.out.with_name(args.out.name + "_quick")
    torch.set_num_threads(1)
    betas = [float(b) for b in args.betas.split(",")]
    parts = args.parts.split(",")
    t_all = time.perf_counter()
    rows = []
    if "digits" in parts:
        rows += images("digits", betas, [int(s) for s in args.seeds.split(",")], args.steps,
                       args.draws)
    if "mnist16" in parts:
        rows += images("mnist16", betas, [int(s) for s in args.seeds_mnist.split(",")],
                       args.steps_mnist, args.draws)
    rows_2d = (two_d(betas, [int(s) for s in args.seeds_2d.split(",")], args.steps_2d)
               if "2d" in parts else [])
    seconds = time.perf_counter() - t_all
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "images": rows, "2d": rows_2d,
           "seconds": seconds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    md = report(args, rows, rows_2d, seconds)
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
