"""DPM-Solver++ at 10 model evaluations on the exact 8-Gaussian ring, on other time grids: is
issue 5's target (SWD within 1.25× of DDPM-1000's) a matter of where the 10 evaluations go?

Same target, model (the exact ε-denoiser, difflab.oracle) and SWD as benchmarks/samplers_2d.py.
Grids: the default "trailing" (time-uniform from T, then the jump to x_0), "logsnr" (uniform in
λ, Lu et al. 2022a), and power grids t_i = round(t_max · ((S − i)/S)^p), i = 0..S−1, each then
followed by the jump to x_0 — p = 1 is "trailing", p = 2 the "time-quadratic" selection of Song
et al. 2020 (§D.2) and of DPM-Solver's code. t_max = the largest t above λ_min (the solver's
clip: 1000 linear, 996 cosine). Each cell: SWD mean over 4 draws of n = 5000 (one batch, split)
for each of --seeds starting noises x_T; DDPM (β̃) with 1000 steps from the same x_T is the
reference.

    python benchmarks/dpm_grids_2d.py          # ≈ 2-4 min on 1 thread
    python benchmarks/dpm_grids_2d.py --quick  # smoke test, ≈ 10 s

Writes benchmarks/results/dpm_grids_2d.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from samplers_2d import MIX, RESULTS, truth

from difflab import metrics, oracle, samplers, schedules
from difflab.samplers.dpm_solver import LAMBDA_MIN, dpm_timesteps

N, DRAWS, NFE = 5000, 4, 10
POWERS = (1.5, 2.0, 2.5, 3.0)


def power_grid(t_max: int, steps: int, p: float) -> list[int]:
    """round(t_max · ((S − i)/S)^p) for i = 0..S−1, made strictly decreasing and ≥ 1."""
    out: list[int] = []
    for i in range(steps):
        t = max(1, round(t_max * ((steps - i) / steps) ** p))
        out.append(min(t, out[-1] - 1) if out else t)
    return out


def swd(x: torch.Tensor, refs: list[torch.Tensor]) -> float:
    return statistics.fmean(metrics.swd(a, b) for a, b in zip(x.split(N), refs, strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 7, 13], help="x_T seeds")
    p.add_argument("--quick", action="store_true", help="smoke test: one seed, n = 500, "
                   "writes dpm_grids_2d_quick.*")
    args = p.parse_args()
    global N
    if args.quick:
        N, args.seeds = 500, args.seeds[:1]
    torch.set_num_threads(1)
    refs = [truth(N, 1000 + r) for r in range(DRAWS)]  # samplers_2d's references
    result = {"n": N, "draws": DRAWS, "nfe": NFE, "seeds": args.seeds, "schedules": {}}
    for sname in ("linear", "cosine"):
        sched = getattr(schedules, sname)(T=1000)
        t_max = int(dpm_timesteps(sched, 1)[0])
        grids = {"trailing": "trailing", "logsnr": "logsnr",
                 **{f"power {q:g}": power_grid(t_max, NFE, q) for q in POWERS}}
        xs = [torch.randn(DRAWS * N, 2, generator=torch.Generator().manual_seed(s))
              for s in args.seeds]
        model = oracle.ExactDenoiser(MIX, sched)
        ddpm = [swd(samplers.ddpm(model, sched, x, 1000, torch.Generator().manual_seed(1),
                                  variance="beta_tilde"), refs) for x in xs]
        rows = {}
        for name, grid in grids.items():
            for order in (2, 3):
                kw = {"spacing": grid} if isinstance(grid, str) else {}
                steps = NFE if isinstance(grid, str) else grid
                vals = [swd(samplers.dpm_solver_pp(model, sched, x, steps, order=order, **kw),
                            refs) for x in xs]
                ratios = [v / d for v, d in zip(vals, ddpm, strict=True)]
                visited = dpm_timesteps(sched, NFE, grid, LAMBDA_MIN).tolist() \
                    if isinstance(grid, str) else grid
                rows[f"{name}, {order}M"] = {"swd": vals, "ratio": ratios, "grid": visited}
                print(f"{sname} {name} {order}M: SWD {statistics.fmean(vals):.4f}, "
                      f"× DDPM-1000 {min(ratios):.2f}-{max(ratios):.2f}", flush=True)
        result["schedules"][sname] = {"ddpm_1000": ddpm, "rows": rows}
    out = RESULTS / ("dpm_grids_2d_quick" if args.quick else "dpm_grids_2d")
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(table(result))
    print(table(result))


def table(r: dict) -> str:
    lines = [f"## DPM-Solver++ at {r['nfe']} NFE on the exact 8-Gaussian ring: time grids", "",
             f"SWD: mean of {r['draws']} draws of n = {r['n']} per x_T seed ({r['seeds']}); "
             "ratio to DDPM (β̃, 1000 steps) from the same x_T, min-max over the seeds. "
             "Target: ≤ 1.25.", "",
             "| schedule | grid, order | SWD (mean over seeds) | × DDPM-1000 | timesteps |",
             "| --- | --- | ---: | --- | --- |"]
    for sname, res in r["schedules"].items():
        lines.append(f"| {sname} | DDPM (β̃), 1000 steps | "
                     f"{statistics.fmean(res['ddpm_1000']):.4f} | 1 | all |")
        for name, row in res["rows"].items():
            lines.append(f"| {sname} | {name} | {statistics.fmean(row['swd']):.4f} | "
                         f"{min(row['ratio']):.2f}-{max(row['ratio']):.2f} | "
                         f"{', '.join(map(str, row['grid']))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
