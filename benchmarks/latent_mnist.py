"""Latent diffusion on MNIST (Rombach et al. 2022; issue 13): the first-stage table, the f
ablation and what the latent space saves.

1. **Autoencoders** (LDM Tab. 8): KL- and VQ-regularised autoencoders at f = 2, 4, 8 (the
   `mnist-ae-kl-f4` recipe: c = 3, widths 16/32/32(/64), L1 + perceptual, 1000 steps of 32):
   test PSNR, rFD (the FD of the 500 test images' reconstructions to those images, in the
   committed MNIST classifier's features; the FD floor of real test vs train images is 7.7),
   codebook usage and perplexity (VQ), latent std and scale, training seconds.
2. **The f ablation at equal training time** (LDM Fig. 6-7): the `mnist` U-Net recipe in pixel
   space (f = 1) and on the KL latents of f = 2, 4, 8 (channel_mult 1,2,2 for 32² and 16², 1,2
   for 8² and 4²); the pixel model trains ``--pixel-steps`` updates and each latent model as
   many as take the same time, by the ratio of step times measured side by side; FD of 500
   DDIM-50 samples (decoded) and sampling throughput (images/s, decoding included). The
   autoencoder's own training time is reported beside it (LDM counts it once per first stage,
   not per diffusion model).
3. **Latent is cheaper** follows from 2: steps/s and images/s of each latent model against the
   pixel model, and the FD each reaches.

Every run goes through `difflab.runs.train.train`; finished run directories under
``--workdir`` are reused, so an interrupted benchmark resumes. One thread each (the machine is
shared), so seconds are comparable within this run only.

    nice -n 19 .venv/bin/python benchmarks/latent_mnist.py             # ~1 h on one core
    nice -n 19 .venv/bin/python benchmarks/latent_mnist.py --quick     # smoke, ~3 min
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent


def metrics_of(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def train_run(cfg, run_dir: Path) -> dict:
    from difflab.runs.train import train

    done = metrics_of(run_dir)
    if done is not None:
        return done
    train(cfg, run_dir, overwrite=True, progress=False)
    return metrics_of(run_dir)


def updater(cfg):
    """A function that runs one update of ``cfg``'s run (its objective, optimiser and data, a
    latent run's codec), to time it."""
    from difflab.build.data import training_set
    from difflab.build.model import build_schedule
    from difflab.runs import latent
    from difflab.training import OBJECTIVES
    from difflab.training.backend import Backend

    x, cfg, conds = training_set(cfg)
    codec = None
    if cfg.autoencoder:
        cfg, weights = latent.attach(cfg)
        codec = latent.codec_from(cfg, weights)
    obj = OBJECTIVES[cfg.method](cfg, build_schedule(cfg), x, conds,
                                 Backend(torch.device("cpu")), codec=codec)
    opt = obj.optimizer()
    g = torch.Generator().manual_seed(0)
    k = [0]

    def update() -> None:
        batch = obj.draw(k[0], g)
        opt.zero_grad()
        obj.loss(obj.net, batch).backward()
        opt.step()
        k[0] += 1
        obj.after_update(k[0])

    return update


def relative_costs(cfgs: dict, rounds: int, per_round: int) -> dict:
    """Median seconds an update of each config, timed interleaved (``rounds`` rounds of
    ``per_round`` updates of each, after one warm-up update), so that a load on the machine
    falls on all alike and their ratios hold even where the seconds do not."""
    updates = {k: updater(c) for k, c in cfgs.items()}
    for u in updates.values():
        u()
    times: dict = {k: [] for k in cfgs}
    for _ in range(rounds):
        for k, u in updates.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                u()
            times[k].append((time.perf_counter() - t0) / per_round)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def main() -> None:
    from difflab.config import load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("runs/bench-latent-mnist"))
    p.add_argument("--pixel-steps", type=int, default=400, help="part 2: the pixel model's "
                   "steps; each latent model gets as many as take the same time")
    p.add_argument("--ae-steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parts", default="1,2", help="1: the autoencoders; 2: the f ablation "
                   "(needs part 1's KL runs in --workdir); a rerun reuses finished runs")
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny budgets")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.pixel_steps, args.ae_steps = 10, 30
        args.workdir = args.workdir.with_name(args.workdir.name + "-quick")
    args.workdir.mkdir(parents=True, exist_ok=True)
    common = {"threads": args.threads, "checkpoint_every": 10_000}
    n_eval = {"n_eval": 50, "eval_steps": 10} if args.quick else {"n_eval": 500, "eval_steps": 50}

    parts = {int(k) for k in args.parts.split(",")}

    # --- 1. the first stages -------------------------------------------------------------------
    ae_rows = []
    for kind in ("kl", "vq"):
        for f in (2, 4, 8):
            cfg = load_config("mnist-ae-kl-f4", {"ae_type": kind, "ae_factor": f,
                                                 "steps": args.ae_steps, **common})
            run_dir = args.workdir / f"ae-{kind}-f{f}"
            if 1 not in parts and (kind == "vq" or metrics_of(run_dir) is None):
                continue  # part 2 alone: the KL runs part 1 wrote
            m = train_run(cfg, run_dir)
            ae_rows.append({"kind": kind, "f": f, **{k: m.get(k) for k in (
                "psnr", "rfd", "codebook_usage", "perplexity", "latent_std", "latent_scale",
                "latent_shape", "train_seconds")}})
            print(json.dumps(ae_rows[-1]), flush=True)

    # --- 2. the f ablation at equal training time ----------------------------------------------
    # each model gets the steps that take as long as --pixel-steps of the pixel model, by the
    # ratio of their step times measured side by side (a shared machine's load changes the
    # seconds, not the ratios)
    rows = []
    cfgs = {}
    for f in (1, 2, 4, 8) if 2 in parts else ():
        over = {**common, **n_eval}
        if f > 1:
            over["autoencoder"] = str(args.workdir / f"ae-kl-f{f}")
        if f >= 4:
            over["channel_mult"] = "1,2"
            over["attention"] = "2"
        cfgs[f] = load_config("mnist", over)
    costs = relative_costs(cfgs, rounds=2 if args.quick else 5, per_round=2 if args.quick else 4)
    for f, cfg in cfgs.items():
        steps = max(10, round(args.pixel_steps * costs[1] / costs[f]))
        cfg = replace(cfg, steps=steps, warmup=min(cfg.warmup, steps // 10))
        m = train_run(cfg, args.workdir / f"diffusion-f{f}")
        ae = next((r for r in ae_rows if r["kind"] == "kl" and r["f"] == f),
                  {"train_seconds": 0.0, "latent_shape": [1, 32, 32]})
        rows.append({"f": f, "shape": ae["latent_shape"], "steps": m["train_steps"],
                     "step_seconds": costs[f], "cost_ratio": costs[f] / costs[1],
                     "train_seconds": m["train_seconds"], "ae_seconds": ae["train_seconds"],
                     "fd": m["fd"], "fd_floor": m["fd_floor"],
                     "images_per_second": m["n_eval"] / m["sample_seconds"],
                     "sample_seconds": m["sample_seconds"]})
        print(json.dumps(rows[-1]), flush=True)

    if parts != {1, 2}:
        print("a part only: no results written (rerun with both parts: it reuses the runs)")
        return
    out = ROOT / "results" / ("latent_mnist_quick" if args.quick else "latent_mnist")
    out.with_suffix(".json").write_text(json.dumps({"autoencoders": ae_rows, "ablation": rows,
                                                    "pixel_steps": args.pixel_steps,
                                                    "threads": args.threads}, indent=2) + "\n")
    lines = ["# Latent diffusion on MNIST 32×32 (benchmarks/latent_mnist.py)", "",
             f"One thread; autoencoders {args.ae_steps} steps of 32; diffusion models: the "
             f"pixel model {args.pixel_steps} steps, each latent one as many steps as take the "
             "same time by the ratio of step times measured side by side (the machine was "
             "shared, so seconds vary; the ratios hold). FD of 500 DDIM-50 samples; FD floor "
             "(real test vs train) 7.7.", "",
             "## 1. Autoencoders (test split, 500 images)", "",
             "| kind | f | latent | PSNR dB | rFD | codebook usage | perplexity | latent std "
             "| scale | train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in ae_rows:
        usage = f"{r['codebook_usage']:.2f}" if r["codebook_usage"] is not None else "–"
        perp = f"{r['perplexity']:.1f}" if r["perplexity"] is not None else "–"
        lines.append(f"| {r['kind']} | {r['f']} | {'×'.join(map(str, r['latent_shape']))} | "
                     f"{r['psnr']:.2f} | {r['rfd']:.2f} | {usage} | {perp} | "
                     f"{r['latent_std']:.3f} | {r['latent_scale']:.3f} | "
                     f"{r['train_seconds']:.0f} |")
    lines += ["", "## 2-3. Pixel space against latent spaces at equal training time", "",
              "| f | diffuses | steps | step cost ÷ pixel | train s | + autoencoder s | FD | "
              "images/s (decoded) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['f']} | {'×'.join(map(str, r['shape']))} | {r['steps']} | "
                     f"{r['cost_ratio']:.3f} | "
                     f"{r['train_seconds']:.0f} | {r['ae_seconds']:.0f} | {r['fd']:.1f} | "
                     f"{r['images_per_second']:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md"))


if __name__ == "__main__":
    main()
