"""The solver grids on trained networks: how far each sampler's x_0 lands from the network's own
probability-flow ODE solution, started from the same x_T.

benchmarks/samplers_oracle.py scores the grids with exact denoisers, whose x̂_0 is right at every
noise level. A trained ε-network is least accurate where the signal is weakest, and an ODE
solver in data prediction turns ε̂ into x̂_0 = (x_t − σ_t ε̂)/α_t, which at t = T of the linear
schedule multiplies the error of ε̂ by σ_T/α_T ≈ 157. A grid whose first step is long in λ
carries that error far (the step's weight on x̂_0 grows with α_s/α_T). This script measures it
on real networks: for each run, the reference is UniPC (order 2, corrector) over every
timestep up to the λ clip (:data:`~difflab.samplers.dpm_solver.LAMBDA_MIN`; t ≤ 996 on the
cosine schedule; DDIM over the same steps is printed against it as a check), and each cell
is the RMS of x_0 − reference over n samples (pixels in [−1, 1], or a latent run's z), for
DPM-Solver++ 2M and UniPC (bh2, order 2) on every grid of ``dpm_timesteps``, and DDIM on
linspace (capped at the same t_max), at NFE 5, 10, 20.

Read with care: a grid whose last evaluation is at a high noise level jumps to x_0 = x̂_0 there,
the posterior mean, which is close in RMS to any sample and blurry ("trailing" at 5 steps on
the linear schedule ends at σ ≈ 0.7); compare grids that end at similar σ (the table shows it).

Runs: ``--runs DIR,…`` (any diffusion runs, latent ones included), else two digits U-Nets
(`difflab train --preset digits`, 1500 steps, linear and cosine schedule; trained into
runs/bench-solver-error/ when absent, about 5 minutes each on one thread).

    python benchmarks/solver_error_trained.py                       # ~15-25 min on 1 thread
    python benchmarks/solver_error_trained.py --runs runs/bench-latent-mnist/diffusion-f4
    python benchmarks/solver_error_trained.py --quick               # smoke test (~1 min)

Writes benchmarks/results/solver_error_trained{,_quick}.{md,json}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

import difflab
from difflab import samplers
from difflab.build.data import model_shape
from difflab.config import load_config
from difflab.samplers.dpm_solver import DPM_SPACINGS, auto_spacing, dpm_timesteps
from difflab.samplers.edm import schedule_sigmas

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
GRIDS = tuple(g for g in DPM_SPACINGS if g not in ("linspace", "leading"))
SOLVERS = {"unipc": samplers.unipc, "dpm++": samplers.dpm_solver_pp}


def default_runs(quick: bool) -> list[Path]:
    """The digits U-Nets on both schedules, trained when absent (``quick``: 60 steps)."""
    from difflab.runs.train import train

    steps = 60 if quick else 1500
    out = []
    for sched in ("linear", "cosine"):
        run = ROOT.parent / "runs" / "bench-solver-error" / f"digits-{sched}-{steps}"
        if not (run / "metrics.json").exists():
            cfg = load_config("digits", {"schedule": sched, "steps": steps, "threads": 1})
            train(dataclasses.replace(cfg, n_eval=36), run, overwrite=True)
        out.append(run)
    return out


def grid_of(sampler: str, grid: str, nfe: int) -> str:
    """The grid ``sampler`` visits for ``grid`` at ``nfe`` steps ("auto" resolved)."""
    return auto_spacing(nfe, sampler) if grid == "auto" else grid


def measure(run: Path, n: int, nfes) -> dict:
    cfg, model, schedule = difflab.load_run(run, device="cpu")
    x_T = torch.randn(n, *model_shape(cfg), generator=torch.Generator().manual_seed(7))
    every = dpm_timesteps(schedule, None).tolist()  # every t up to the λ clip, decreasing
    ref = samplers.unipc(model, schedule, x_T, every)  # (n, …): UniPC-2 at every timestep
    sig = schedule_sigmas(schedule)  # (T,), σ_t = √((1−ᾱ_t)/ᾱ_t)

    def rms(x):
        return (x - ref).pow(2).mean().sqrt().item()

    cells = {"ref_rms": ref.pow(2).mean().sqrt().item(), "t_max": every[0],
             "ddim every step": rms(samplers.ddim(model, schedule, x_T, every))}
    for nfe in nfes:
        ts = dpm_timesteps(schedule, nfe, "linspace")
        cells[f"ddim linspace @{nfe}"] = rms(samplers.ddim(model, schedule, x_T, ts.tolist()))
        cells[f"last σ linspace @{nfe}"] = sig[ts[-1] - 1].item()
        for grid in GRIDS:
            if grid == "auto":  # the grid it stands for at this NFE, sampled once
                continue
            ts = dpm_timesteps(schedule, nfe, grid)
            cells[f"last σ {grid} @{nfe}"] = sig[ts[-1] - 1].item()
            for name, fn in SOLVERS.items():
                cells[f"{name} {grid} @{nfe}"] = rms(fn(model, schedule, x_T, nfe, spacing=grid))
        for name in SOLVERS:  # each sampler's own "auto"
            cells[f"{name} auto @{nfe}"] = cells[f"{name} {grid_of(name, 'auto', nfe)} @{nfe}"]
    return {"schedule": cfg.schedule, "dataset": cfg.dataset, "cells": cells}


def markdown(res: dict, n: int, nfes, seconds: float) -> str:
    lines = ["## Solver error on trained networks (benchmarks/solver_error_trained.py)", "",
             f"RMS of x_0 − the network's own ODE solution (UniPC-2 over every t ≤ t_max) from "
             f"the same x_T, n = {n}; {seconds:.0f} s on 1 thread. In brackets: σ of the last "
             "evaluation, from which the last step jumps to x̂_0 (the posterior mean: small RMS, "
             "blurry when σ is large). \"auto\" is \"trailing\" below 10 steps and from 10 on "
             "\"logsnr\" (dpm++) or \"capped-blend\" (unipc).", ""]
    for run, r in res.items():
        c = r["cells"]
        lines += [f"**{run}** ({r['dataset']}, {r['schedule']} schedule, t_max {c['t_max']}; "
                  f"RMS of the reference {c['ref_rms']:.3f}; DDIM over the same steps against "
                  f"it {c['ddim every step']:.4f})", "",
                  "| sampler | grid | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
                  "| --- | --- |" + " ---: |" * len(nfes)]
        lines.append("| ddim | linspace | " + " | ".join(
            f"{c[f'ddim linspace @{k}']:.3f} ({c[f'last σ linspace @{k}']:.2f})" for k in nfes)
            + " |")
        for name in SOLVERS:
            for grid in GRIDS:
                lines.append(f"| {name} | {grid} | " + " | ".join(
                    f"{c[f'{name} {grid} @{k}']:.3f} "
                    f"({c[f'last σ {grid_of(name, grid, k)} @{k}']:.2f})" for k in nfes) + " |")
        best = {k: min((c[f"{s} {g} @{k}"], f"{s} {g}") for s in SOLVERS for g in GRIDS
                       if g != "auto") for k in nfes}
        lines += ["", "Lowest per NFE: " + "; ".join(f"{k}: {b[1]} ({b[0]:.3f})"
                                                    for k, b in best.items()), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", help="comma-separated run directories (default: the digits U-Nets)")
    p.add_argument("-n", type=int, default=256)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny runs, n = 16, NFE 10")
    args = p.parse_args()
    torch.set_num_threads(1)
    n, nfes = (16, (10,)) if args.quick else (args.n, (5, 10, 20))
    t0 = time.perf_counter()
    runs = [Path(r) for r in args.runs.split(",")] if args.runs else default_runs(args.quick)
    res = {}
    for run in runs:
        name = str(run.resolve().relative_to(ROOT.parent)) if run.resolve().is_relative_to(
            ROOT.parent) else str(run)  # as the README would name it
        res[name] = measure(run, n, nfes)
        print(name, {k: round(v, 4) for k, v in res[name]["cells"].items()
                    if isinstance(v, float) and not k.startswith("last") and math.isfinite(v)
                    and "@10" in k}, flush=True)
    seconds = time.perf_counter() - t0
    stem = "solver_error_trained_quick" if args.quick else "solver_error_trained"
    if args.runs and not args.quick:
        stem += "_" + "_".join(r.name for r in runs)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"n": n, "nfes": list(nfes), "runs": res, "seconds": seconds,
         "auto": {name: {k: auto_spacing(k, name) for k in nfes} for name in SOLVERS}},
        indent=1) + "\n")
    md = markdown(res, n, nfes, seconds)
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
