"""Multistep consistency sampling: the re-noising levels a search finds against the default.

Algorithm 1 of Song et al. 2023 re-noises a consistency sample to levels τ_1 > … between its
evaluations; difflab's default puts them at DDIM's trailing timesteps (σ ≈ 3.4 for 2 steps on
the linear schedule). :func:`difflab.samplers.consistency_levels.search_levels` (``difflab eval
--search-levels``) picks them per model by golden-section search of a score, as Song et al.
did with FID. Here each model's levels are searched on draws of their own (x_T and noise of
seeds 99 and 100) and the samples are scored on other draws (seed 1234), so the figures are not
the search's own minimum.

Models: improved consistency training from a fresh F_θ (the recipe of ``difflab train --method
consistency-training``, c_noise = 250 ln σ for images and 10 ln σ for the MLP, as the presets),
the EMA after ``--steps`` updates (images; ``--steps-2d`` for 2-D):

- **digits**: the digits preset's U-Net (8×8), FD against the train split, n = 180 × 3;
- **mnist16**: the mnist-base16 preset's U-Net (16×16), FD through the 32×32 MNIST classifier;
- **2d**: the default preset's MLP on the exact mixtures ring8-2d and aniso-2d of
  ``benchmarks/samplers_oracle.py``; the search minimises sliced W1 to 5000 training points,
  the report is sliced W1 to 5000 fresh points of the truth and the mode error.

1 step, 2 and 3 steps at the default levels, 2 and 3 steps at the searched ones (3 steps:
greedy, the first level kept from the 2-step search as in Song et al.).

    taskset -c 0 .venv/bin/python benchmarks/consistency_levels.py --parts digits
    taskset -c 1 .venv/bin/python benchmarks/consistency_levels.py --parts mnist16,2d
    .venv/bin/python benchmarks/consistency_levels.py --quick       # smoke test (~1 min)

Writes benchmarks/results/consistency_levels[_PARTS].{json,md}.
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
from difflab.samplers.consistency import default_levels
from difflab.samplers.consistency_levels import search_levels

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from ict_noise_input import IMAGE_PARTS, fd_evaluator, train  # noqa: E402
from samplers_oracle import mode_error, targets  # noqa: E402

N_FD, SEARCH_SEED, REPORT_SEED = 180, 99, 1234


@torch.no_grad()
def draw(f, schedule, x_T, levels) -> torch.Tensor:
    """A (len(levels) + 1)-step sample from x_T, re-noised with noise of REPORT_SEED + 1."""
    g = torch.Generator().manual_seed(REPORT_SEED + 1)
    return samplers.consistency(f, schedule, x_T, len(levels) + 1, g, sigmas=levels)


def compare(f, schedule, shape, search_score, report) -> dict:
    """1 step; 2 and 3 steps at the default and the searched levels. ``search_score``: x →
    float minimised by the search (on its own draws); ``report``: x → dict of metrics."""
    n = shape[0]
    x_search = torch.randn(*shape, generator=torch.Generator().manual_seed(SEARCH_SEED))
    x_report = torch.randn(*shape, generator=torch.Generator().manual_seed(REPORT_SEED))
    out = {"n": n, "1": report(draw(f, schedule, x_report, []))}
    for S in (2, 3):
        default = default_levels(f, schedule, S)
        t0 = time.perf_counter()
        found, value, history = search_levels(f, schedule, x_search, search_score, S,
                                              seed=SEARCH_SEED + 1)
        out[f"{S} default"] = {"levels": default, **report(draw(f, schedule, x_report, default))}
        out[f"{S} searched"] = {"levels": found, "search_score": value, "probes": len(history),
                                "search_s": round(time.perf_counter() - t0, 1),
                                **report(draw(f, schedule, x_report, found))}
    return out


def images(part: str, seeds, steps: int, draws: int) -> list[dict]:
    cfg = load_config(IMAGE_PARTS[part], {"threads": 1})
    data, cfg, _ = training_set(cfg)
    schedule = build_schedule(cfg)
    fd = fd_evaluator(part)

    def fd_mean(x):
        return statistics.fmean(fd.fd(c) for c in x.clamp(-1, 1).split(N_FD))

    rows = []
    for k in seeds:
        t0 = time.perf_counter()
        f = train(cfg, schedule, data, str(cfg.ct_noise_scale), cfg.seed + k, steps)
        row = {"part": part, "seed": k, "train_s": round(time.perf_counter() - t0)}
        row.update(compare(f, schedule, (N_FD * draws, *data.shape[1:]), fd_mean,
                           lambda x: {"fd": fd_mean(x)}))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def two_d(seeds, steps: int) -> list[dict]:
    rows = []
    for name in ("ring8-2d", "aniso-2d"):
        mix = targets()[name]
        data = mix.sample(20000, generator=torch.Generator().manual_seed(1)).float()
        ref = data[:5000]  # the search's reference: training points
        truth = mix.sample(5000, generator=torch.Generator().manual_seed(2)).float()
        for k in seeds:
            cfg = load_config(None, {"seed": k})
            schedule = build_schedule(cfg)
            f = train(cfg, schedule, data, str(cfg.ct_noise_scale), k, steps)
            row = {"part": name, "seed": k}
            row.update(compare(f, schedule, (5000, mix.dim),
                               lambda x, ref=ref: swd(x.float(), ref),
                               lambda x, mix=mix, truth=truth: {
                                   "swd": swd(x.float(), truth),
                                   "mode": mode_error(mix, x.float())}))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


COLUMNS = ("1", "2 default", "2 searched", "3 default", "3 searched")


def table(rows, metric: str) -> list[str]:
    lines = [f"| model | seed | {metric}: " + " | ".join(COLUMNS) + " | τ searched (2 steps) | "
             "τ searched (3 steps) |", "| --- | ---: |" + " ---: |" * (len(COLUMNS) + 2)]
    for r in rows:
        cells = [f"{r[c][metric]:.3g}" for c in COLUMNS]
        lv2 = ", ".join(f"{v:.2f}" for v in r["2 searched"]["levels"])
        lv3 = ", ".join(f"{v:.2f}" for v in r["3 searched"]["levels"])
        lines.append(f"| {r['part']} | {r['seed']} | " + " | ".join(cells) + f" | {lv2} | {lv3} |")
    for part in dict.fromkeys(r["part"] for r in rows):
        mine = [r for r in rows if r["part"] == part]
        means = [statistics.fmean(r[c][metric] for r in mine) for c in COLUMNS]
        lines.append(f"| **{part} mean** | {len(mine)} | " + " | ".join(f"{m:.3g}" for m in means)
                     + " | | |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="digits,mnist16,2d",
                   help="comma-separated: digits, mnist16, 2d")
    p.add_argument("--seeds", default="0,1,2", help="seed offsets of the image models")
    p.add_argument("--seeds-2d", default="0,1")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--steps-2d", type=int, default=1500)
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="smoke test: 10 updates, one seed")
    args = p.parse_args()
    parts = args.parts.split(",")
    if args.out is None:
        name = "consistency_levels" + ("" if len(parts) == 3 else "_" + "_".join(parts))
        args.out = ROOT / "results" / name
    if args.quick:
        args.steps, args.steps_2d, args.seeds, args.seeds_2d, args.draws = 10, 10, "0", "0", 1
        args.out = args.out.with_name(args.out.name + "_quick")
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    t_all = time.perf_counter()
    rows = [r for part in IMAGE_PARTS if part in parts
            for r in images(part, seeds, args.steps, args.draws)]
    rows_2d = (two_d([int(s) for s in args.seeds_2d.split(",")], args.steps_2d)
               if "2d" in parts else [])
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "images": rows, "2d": rows_2d,
           "seconds": time.perf_counter() - t_all}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["## Re-noising levels of multistep consistency sampling "
             "(benchmarks/consistency_levels.py)", "",
             f"iCT from a fresh F_θ; levels searched on draws of seed {SEARCH_SEED}, samples "
             f"scored on draws of seed {REPORT_SEED}. {out['seconds']:.0f} s on 1 thread.", ""]
    if rows:
        lines += [f"### Images: FD of the EMA after {args.steps} updates (n = {N_FD} × "
                  f"{args.draws}), lower is better", "", *table(rows, "fd"), ""]
    if rows_2d:
        lines += [f"### 2-D MLP after {args.steps_2d} updates: sliced W1 to the truth (n = 5000)",
                  "", *table(rows_2d, "swd"), "", "Mode error (mode weights + per-mode "
                  "covariance):", "", *table(rows_2d, "mode"), ""]
    md = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
