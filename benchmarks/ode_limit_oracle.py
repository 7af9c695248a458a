"""Where the deterministic samplers converge on the exact Gaussian-mixture targets of
benchmarks/samplers_oracle.py, and how much of "error ÷ DDPM-1000" is the draw of x_T.

samplers_oracle.py scores every sampler from ONE x_T (seed 0). An ODE sampler is a
deterministic map x_T → x_0, so even at its limit (every one of the T = 1000 steps) its mode
weights are the counts of that x_T draw falling into each mode's basin: their error does not
average away as NFE grows, while DDPM-1000 redraws noise at every step. This script measures,
for several x_T seeds:

- DDIM and UniPC (bh2, order 2) with 999 steps: the probability-flow ODE's limit (the two agree
  when both have converged);
- DDPM-1000 from the same x_T, and the floor (a second true sample), both metrics of
  samplers_oracle.py (sliced W1 to a true sample, mode weights + per-mode covariance).

    python benchmarks/ode_limit_oracle.py            # ~10 min on 1 thread
    python benchmarks/ode_limit_oracle.py --seeds 2 --targets farlight-2d
    python benchmarks/ode_limit_oracle.py --quick   # smoke test

Writes benchmarks/results/ode_limit_oracle.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from samplers_oracle import HELD_OUT, RESULTS, SCHEDULES, score_cell, targets

from difflab import oracle, samplers


def run(names, seeds: int, n: int) -> dict:
    tg, out = targets(), {}
    for tname in names:
        mix = tg[tname]
        truth = mix.sample(n, torch.Generator().manual_seed(1))
        for sname, make in SCHEDULES.items():
            sched = make(1000)
            model = oracle.ExactDenoiser(mix, sched)
            cells: dict[str, list] = {"ddim-999": [], "unipc-999": [], "ddpm-1000": [],
                                      "floor": []}
            for seed in range(seeds):
                x_T = torch.randn(n, mix.dim, generator=torch.Generator().manual_seed(seed))
                cells["ddim-999"].append(score_cell(mix, samplers.ddim(model, sched, x_T, 999),
                                                    truth))
                cells["unipc-999"].append(score_cell(mix, samplers.unipc(model, sched, x_T, 999),
                                                     truth))
                ref = samplers.ddpm(model, sched, x_T, None,
                                    torch.Generator().manual_seed(100 + seed))
                cells["ddpm-1000"].append(score_cell(mix, ref, truth))
                fl = mix.sample(n, torch.Generator().manual_seed(200 + seed))
                cells["floor"].append(score_cell(mix, fl, truth))
            out[f"{tname} {sname}"] = cells
            print(tname, sname, {k: [round(c["mode"], 4) for c in v] for k, v in cells.items()},
                  flush=True)
    return out


def markdown(res: dict, seeds: int, n: int, seconds: float) -> str:
    lines = ["## The ODE samplers' limit against DDPM-1000 (benchmarks/ode_limit_oracle.py)", "",
             f"n = {n} samples per cell, {seeds} x_T seeds (0…{seeds - 1}); mean ± s.d. over the "
             f"seeds, and the seed-0 value that samplers_oracle.md uses. {seconds:.0f} s.", "",
             "| target | schedule | metric | ddim-999 | unipc-999 | ddpm-1000 | floor | "
             "ODE ÷ DDPM at seed 0 | mean ODE ÷ mean DDPM |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, cells in res.items():
        tname, sname = key.split()
        for metric in ("swd", "mode"):
            def fmt(name, metric=metric, cells=cells):
                v = [c[metric] for c in cells[name]]
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                return f"{statistics.fmean(v):.4f} ± {sd:.4f} ({v[0]:.4f})"
            ode = [c[metric] for c in cells["unipc-999"]]
            ddpm = [c[metric] for c in cells["ddpm-1000"]]
            lines.append(f"| {tname} | {sname} | {metric} | {fmt('ddim-999')} | "
                         f"{fmt('unipc-999')} | {fmt('ddpm-1000')} | {fmt('floor')} | "
                         f"{ode[0] / ddpm[0]:.2f} | "
                         f"{statistics.fmean(ode) / statistics.fmean(ddpm):.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--targets", default=",".join(HELD_OUT))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="ode_limit_oracle")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 seeds, n = 1000, one target")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.n, args.targets, args.name = 2, 1000, "farlight-2d", args.name + "_quick"
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = run(args.targets.split(","), args.seeds, args.n)
    seconds = time.perf_counter() - t0
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"seeds": args.seeds, "n": args.n, "cells": res}, indent=1) + "\n")
    md = markdown(res, args.seeds, args.n, seconds)
    (RESULTS / f"{args.name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
