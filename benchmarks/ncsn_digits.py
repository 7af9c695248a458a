"""NCSN against DDPM on digits (8×8, 1 channel), same U-Net and training budget, by the Fréchet
distance in the committed classifier's features (Weng, "Connection with noise-conditioned score
networks"; Song & Ermon 2019, 2020; Jolicoeur-Martineau et al. 2021).

Two runs through `difflab.runs.train.train` with the `digits` preset (the U-Net 32 × (1, 2),
batch 128, AdamW 2e-3 cosine, EMA 0.999) for ``--steps`` updates each:

- ``diffusion``: L_simple, linear schedule, T = 1000, sampled with DDIM, 100 steps (the preset's
  evaluation);
- ``dsm``: denoising score matching, λ(σ) = σ², the ladder of techniques 1-2 (σ_1 = the largest
  pairwise distance of the train split, σ_L = 0.01, γ from D = 64), sampled by annealed Langevin
  over all L levels with n_each = 5 and 20 updates a level (technique 4's step size), with and
  without the final denoising step.

FD of n = 180 samples (the test split's size) against the train split, beside the floor (the
180 real test images' FD): `difflab.runs.cascade.fd_evaluator`, as `difflab eval` reports it.

    nice -n 5 .venv/bin/python benchmarks/ncsn_digits.py           # 1500 steps each
    nice -n 5 .venv/bin/python benchmarks/ncsn_digits.py --quick   # smoke test

Writes benchmarks/results/ncsn_digits.{md,json} (…_quick.* with --quick).

Measured with ``--steps 600`` (not the preset's 1500: a busy machine; 2075 s in all): DSM with
Langevin 24 levels × 20 reaches FD 34.9 (35.2 without the denoising step; × 5: 122), DDPM with
DDIM-100 69.6, floor 49.8. FD below the floor means samples closer to the train split than the
real test images — not examined here (see memorisation_digits.py). One seed.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from difflab.config import load_config
from difflab.runs.cascade import fd_evaluator
from difflab.runs.load import load_run
from difflab.runs.train import train
from difflab.samplers import ddim, langevin

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 30 steps, n_each 2")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = 30 if args.quick else args.steps
    eaches = (2,) if args.quick else (5, 20)
    fd = fd_evaluator("digits", 8)
    floor, n = fd.floor(), 180
    out = {"steps": steps, "seed": args.seed, "n": n, "fd_floor": floor, "rows": [],
           "machine": platform.machine(), "torch": torch.__version__}
    t0 = time.perf_counter()
    x_T = lambda: torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed))  # noqa
    g = lambda: torch.Generator().manual_seed(args.seed + 1)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("diffusion", "dsm"):
            extra = {"method": method, "eval_sampler": "langevin"} if method == "dsm" else {}
            cfg = load_config("digits", {"steps": steps, "seed": args.seed, "threads": 1,
                                         **extra})
            t1 = time.perf_counter()
            run = train(cfg, Path(tmp) / method, progress=False, evaluate_after=False)
            seconds = round(time.perf_counter() - t1, 1)
            cfg, model, schedule = load_run(run)
            noise = (f"σ {cfg.sigma_max:.3g} → {cfg.sigma_min:g}, L = {cfg.sigma_levels}"
                     if method == "dsm" else "linear, T = 1000")
            samples = []
            with torch.inference_mode():
                if method == "diffusion":
                    samples.append(("DDIM, 100 steps", 100, ddim(model, schedule, x_T(),
                                                                  steps=100, generator=g())))
                for each in eaches:
                    for denoise in (True, False):
                        x = langevin(model, schedule, x_T(), steps=cfg.sigma_levels or 10,
                                     generator=g(), n_each=each, denoise=denoise)
                        levels = cfg.sigma_levels or 10
                        samples.append((f"langevin {levels} levels × {each}"
                                        f"{', denoised' if denoise else ''}",
                                        levels * each + denoise, x))
            for name, nfe, x in samples:
                value = fd.fd(x.clamp(-1, 1))
                out["rows"].append({"method": method, "noise": noise, "train_seconds": seconds,
                                    "sampler": name, "nfe": nfe, "fd": value,
                                    "fd_ratio": value / floor})
                print(out["rows"][-1], flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    lines = [f"# NCSN vs DDPM on digits ({steps} steps each, n = {n}, seed {args.seed})", "",
             f"FD to the train split (floor {floor:.1f}: the real test images'). Command: "
             f"`nice -n 5 .venv/bin/python benchmarks/ncsn_digits.py"
             f"{' --quick' if args.quick else f' --steps {steps}'}`; {out['seconds']} s in "
             "all.", "",
             "| objective | noise levels | train s | sampler | NFE | FD | ÷ floor |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in out["rows"]:
        lines.append(f"| {r['method']} | {r['noise']} | {r['train_seconds']} | {r['sampler']} | "
                     f"{r['nfe']} | {r['fd']:.1f} | {r['fd_ratio']:.2f} |")
    stem = RESULTS / ("ncsn_digits_quick" if args.quick else "ncsn_digits")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
