"""The diffusion transformer on digits: the paper's block designs, its GFLOPs claim, and DiT
against the U-Net (Peebles & Xie 2023; issue 12).

1. **Block designs (Fig. 5)**: in-context, cross-attention, adaLN and adaLN-Zero at equal
   training steps on DiT-T/2 (cheaper than the preset's XS/2), everything else the
   `digits-dit` preset (class-conditional, CFG w = 1).
   Does adaLN-Zero come out best, as in the paper?
2. **FD against forward GFLOPs (Fig. 8 / Table 4)**: a few tiny sizes × patch sizes at equal
   steps; forward GFLOPs per image in closed form (`difflab.nn.dit.dit_flops`, 2 per
   multiply-add, as torch's flop counter counts; tests/test_dit.py checks it against the
   counter). Reports Pearson's r between log10(GFLOPs) and FD, and Spearman's ρ.
3. **DiT against the U-Net at equal training time**: the `digits-cond` U-Net trains for
   `--unet-steps`; the `digits-dit` DiT-XS/2 then trains for as many steps as fit in the
   U-Net's measured training seconds (at the XS/2 step time measured in part 2).

Every run goes through `difflab.runs.train.train` and is scored by the run's own evaluation
(metrics.json): FD of 180 guided DDIM samples (18 per class) in the committed digits
classifier's feature space, beside the FD floor of the 180 real test images. One FD of 180
moves by ±10 between training seeds, so differences below ~15 are noise unless several seeds
agree. Step times on a machine shared with other jobs drift with its load (given in the table).

    nice -n 19 .venv/bin/python benchmarks/dit_digits.py            # ~35-45 min on a busy 2-core
    nice -n 19 .venv/bin/python benchmarks/dit_digits.py --quick                # smoke, ~2 min

A finished run directory is reused (delete `--workdir` to retrain), so an interrupted benchmark
resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent

BLOCKS = ("adaln-zero", "adaln", "cross-attention", "in-context")
SIZES = (("T", 4), ("T", 2), ("XS", 4), ("XS", 2))  # (dit_size, patch_size): 4 or 16 tokens
BLOCK_BASE = {"dit_size": "T", "patch_size": 2}  # part 1's network, the designs aside


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


NO_TRAIN = False  # --report-only: finished runs only


def train_run(name: str, preset: str, keys: dict, workdir: Path) -> dict | None:
    """metrics.json of the run ``name`` (trained unless already finished; None for an
    unfinished run with ``--report-only``)."""
    from difflab.config import load_config
    from difflab.runs.train import train
    from difflab.training.losslog import read_loss_csv

    out = workdir / slug(name)
    if not (out / "metrics.json").exists():
        if NO_TRAIN:
            print(f"[{name}] not finished: left out", flush=True)
            return None
        print(f"[{name}] training into {out}", flush=True)
        train(load_config(preset, keys), out, overwrite=True, progress=False)
    m = json.loads((out / "metrics.json").read_text())
    m["ms_per_step"] = 1000 * m["train_seconds"] / m["train_steps"]
    losses = [v for _, v in read_loss_csv(out / "loss.csv")]
    m["final_loss"] = statistics.fmean(losses[-max(1, len(losses) // 10):])  # last 10 % of rows
    m["load"] = os.getloadavg()[0]
    print(f"[{name}] FD {m['fd']:.1f} (floor {m['fd_floor']:.1f}), final loss "
          f"{m['final_loss']:.4f}, {m['train_steps']} steps, "
          f"{m['ms_per_step']:.0f} ms/step, load {m['load']:.1f}", flush=True)
    return m


def gflops(preset: str, keys: dict) -> tuple[float, int]:
    """Forward GFLOPs per image (closed form) and parameters of the run's DiT (labels on)."""
    from difflab.build.model import build_model
    from difflab.config import load_config
    from difflab.nn.dit import dit_flops

    net = build_model(load_config(preset, {**keys, "num_classes": 10}))
    return dit_flops(net.config) / 1e9, net.param_count()


def ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    for rank, i in enumerate(order):
        r[i] = float(rank)
    return r


def pearson(a: list[float], b: list[float]) -> float:
    if len(a) < 3:
        return float("nan")
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va and vb else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="training steps of every DiT run in "
                   "parts 1-2")
    p.add_argument("--unet-steps", type=int, default=250, help="training steps of the U-Net in "
                   "part 3 (the DiT gets its training time)")
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--eval-steps", type=int, default=20, help="DDIM steps of the evaluation")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--parts", default="1,2,3", help="which parts, in this order")
    p.add_argument("--sizes", default=",".join(f"{a}/{b}" for a, b in SIZES),
                   help="part 2's size/patch pairs")
    p.add_argument("--workdir", type=Path, default=Path("runs/bench-dit-digits"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "dit_digits")
    p.add_argument("--report-only", action="store_true", help="train nothing: tabulate the "
                   "finished runs in --workdir")
    p.add_argument("--quick", action="store_true", help="smoke test: 10 steps, DDIM-5, n = 40")
    args = p.parse_args()
    global NO_TRAIN
    NO_TRAIN = args.report_only
    common = {"batch": args.batch, "eval_steps": args.eval_steps, "threads": args.threads,
              "warmup": min(100, args.steps // 10)}
    if args.quick:
        args.steps, args.unet_steps = 10, 10
        common.update(eval_steps=5, n_eval=40, warmup=2)
        args.workdir = args.workdir.with_name(args.workdir.name + "-quick")
        args.out = args.out.with_name(args.out.name + "_quick")
    common["steps"] = args.steps
    common["checkpoint_every"] = args.steps
    seeds = [int(s) for s in args.seeds.split(",")]
    parts = [int(x) for x in args.parts.split(",")]
    sizes = [(a, int(b)) for a, b in (x.split("/") for x in args.sizes.split(","))]
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    old = args.out.with_suffix(".json")
    kept = json.loads(old.read_text()) if old.exists() else {}  # parts run before
    r: dict = {"steps": args.steps, "batch": args.batch, "seeds": seeds,
               "eval_steps": common["eval_steps"], "cores": os.cpu_count(),
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "load_before": os.getloadavg(), "blocks": {}, "sizes": {}, "vs_unet": {}}
    for part, key in ((1, "blocks"), (2, "sizes"), (3, "vs_unet")):
        if part not in parts and kept.get(key):
            r[key] = kept[key]
            if part == 2 and "pearson_log_gflops_fd" in kept:
                r["pearson_log_gflops_fd"] = kept["pearson_log_gflops_fd"]
                r["spearman_gflops_fd"] = kept["spearman_gflops_fd"]
                r["pearson_log_gflops_loss"] = kept.get("pearson_log_gflops_loss")

    def save() -> None:
        r["load_after"], r["wall_seconds"] = os.getloadavg(), time.time() - t0
        args.out.with_suffix(".json").write_text(json.dumps(r, indent=2))
        args.out.with_suffix(".md").write_text(table(r))

    def part1() -> None:  # the block designs at equal steps
        for block in BLOCKS:
            keys = {**BLOCK_BASE, "dit_block": block}
            runs = [train_run(f"block {block} seed {s}", "digits-dit",
                              {**common, **keys, "seed": s}, args.workdir) for s in seeds]
            runs = [m for m in runs if m is not None]
            if not runs:
                continue
            g, n = gflops("digits-dit", keys)
            r["blocks"][block] = {"gflops": g, "params": n, "fd": [m["fd"] for m in runs],
                                  "final_loss": [m["final_loss"] for m in runs],
                                  "fd_floor": runs[0]["fd_floor"],
                                  "ms_per_step": [m["ms_per_step"] for m in runs]}
            save()
    def part2() -> None:  # sizes × patches at equal steps
        for size, patch in sizes:
            keys = {"dit_size": size, "patch_size": patch}
            name = f"{size}/{patch}"
            # T/2 adaLN-Zero is part 1's first run
            run_name = "block adaln-zero" if (size, patch) == ("T", 2) else \
                f"size {size} patch {patch}"
            runs = [train_run(f"{run_name} seed {s}", "digits-dit",
                              {**common, **keys, "seed": s}, args.workdir) for s in seeds]
            runs = [m for m in runs if m is not None]
            if not runs:
                continue
            g, n = gflops("digits-dit", keys)
            r["sizes"][name] = {"gflops": g, "params": n, "fd": [m["fd"] for m in runs],
                                "final_loss": [m["final_loss"] for m in runs],
                                "fd_floor": runs[0]["fd_floor"],
                                "ms_per_step": [m["ms_per_step"] for m in runs]}
            save()
        names = list(r["sizes"])
        lg = [math.log10(r["sizes"][k]["gflops"]) for k in names]
        fd = [statistics.fmean(r["sizes"][k]["fd"]) for k in names]
        r["pearson_log_gflops_fd"] = pearson(lg, fd)
        r["spearman_gflops_fd"] = pearson(ranks(lg), ranks(fd))
        loss = [statistics.fmean(r["sizes"][k]["final_loss"]) for k in names]
        r["pearson_log_gflops_loss"] = pearson(lg, loss)
        save()

    def part3() -> None:  # DiT against the U-Net at equal training time
        for s in seeds:
            u = args.unet_steps
            unet = train_run(f"unet seed {s}", "digits-cond",
                             {**common, "steps": u, "checkpoint_every": u,
                              "warmup": min(100, u // 10), "seed": s}, args.workdir)
            # the DiT's step time: part 1's adaLN-Zero run (reused, or trained now)
            base = train_run(f"block adaln-zero seed {s}", "digits-dit",
                             {**common, **BLOCK_BASE, "dit_block": "adaln-zero", "seed": s},
                             args.workdir)
            if unet is None or base is None:
                continue
            steps = max(1, round(1000 * unet["train_seconds"] / base["ms_per_step"]))
            dit = train_run(f"dit equal time seed {s}", "digits-dit",
                            {**common, **BLOCK_BASE, "steps": steps, "checkpoint_every": steps,
                             "warmup": min(100, steps // 10), "seed": s}, args.workdir)
            equal = dit is not None  # else (--report-only) part 1's run stands in, marked
            r["vs_unet"][s] = {
                name: {k: m[k] for k in ("fd", "fd_floor", "train_seconds", "train_steps",
                                         "ms_per_step", "final_loss")}
                for name, m in (("unet", unet), ("dit" if equal else "dit (not equal time)",
                                                 dit if equal else base))}
            save()

    for part in parts:  # in the order given
        {1: part1, 2: part2, 3: part3}[part]()
    save()
    print(table(r))


def fmt(xs: list[float]) -> str:
    return " / ".join(f"{x:.1f}" for x in xs)


def table(r: dict) -> str:
    load = "/".join(f"{x:.1f}" for x in r["load_before"])
    after = "/".join(f"{x:.1f}" for x in r.get("load_after", r["load_before"]))
    lines = [f"DiT on digits (8×8, class-conditional, CFG w = 1): {r['steps']} steps at batch "
             f"{r['batch']}, seeds {', '.join(map(str, r['seeds']))}; FD of 180 guided "
             f"DDIM-{r['eval_steps']} samples (metrics.json) against the floor of the 180 real "
             f"test images. {r['threads']} torch threads on {r['cores']} cores; load average "
             f"(1/5/15 min) {load} before, {after} after; {r.get('wall_seconds', 0) / 60:.0f} "
             "min in all. One FD of 180 moves by ±10 between seeds.", ""]
    if r["blocks"]:
        lines += ["## 1. Block designs (Fig. 5), DiT-T/2, equal steps", "",
                  "| block | params | GFLOPs/image | final loss | FD (mean) | FD per seed | "
                  "FD floor | ms/step |", "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
        for name, v in r["blocks"].items():
            lines.append(f"| {name} | {v['params'] / 1e6:.2f} M | {v['gflops']:.4f} | "
                         f"{statistics.fmean(v['final_loss']):.4f} | "
                         f"{statistics.fmean(v['fd']):.1f} | {fmt(v['fd'])} | "
                         f"{v['fd_floor']:.1f} | {statistics.fmean(v['ms_per_step']):.0f} |")
        lines.append("")
    if r["sizes"]:
        lines += ["## 2. FD against forward GFLOPs (Fig. 8), adaLN-Zero, equal steps", "",
                  "| size/patch | params | tokens | GFLOPs/image | final loss | FD (mean) | "
                  "FD per seed | ms/step |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
        for name, v in r["sizes"].items():
            patch = int(name.split("/")[1])
            lines.append(f"| {name} | {v['params'] / 1e6:.2f} M | {(8 // patch) ** 2} | "
                         f"{v['gflops']:.4f} | {statistics.fmean(v['final_loss']):.4f} | "
                         f"{statistics.fmean(v['fd']):.1f} | "
                         f"{fmt(v['fd'])} | {statistics.fmean(v['ms_per_step']):.0f} |")
        if "pearson_log_gflops_fd" in r:
            lines += ["", f"Pearson r(log10 GFLOPs, FD) = {r['pearson_log_gflops_fd']:.2f}; "
                          f"Spearman ρ = {r['spearman_gflops_fd']:.2f} (negative: more "
                          f"compute, lower FD; {len(r['sizes'])} points). Pearson r(log10 "
                          f"GFLOPs, final loss) = {r.get('pearson_log_gflops_loss') or 0:.2f}."]
        lines.append("")
    if r["vs_unet"]:
        lines += ["## 3. DiT-T/2 against the digits-cond U-Net at equal training time", "",
                  "| seed | model | steps | train s | ms/step | final loss | FD | FD floor |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for seed, v in r["vs_unet"].items():
            for name, m in v.items():
                lines.append(f"| {seed} | {name} | {m['train_steps']} | "
                             f"{m['train_seconds']:.0f} | {m['ms_per_step']:.0f} | "
                             f"{m['final_loss']:.4f} | {m['fd']:.1f} | {m['fd_floor']:.1f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
