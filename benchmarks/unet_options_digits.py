"""The U-Net's options on digits: FD and training-step time of each beside the default network.

The options (config keys, `difflab train --help`), each alone on the `digits` preset:

- **BigGAN up/down** (`resblock_updown`): residual blocks that down/up-sample instead of a
  strided conv and nearest-neighbour + conv (Dhariwal & Nichol 2021, §3).
- **1/√2 skips** (`rescale_skip`): residual sums and skip connections scaled by 1/√2 (Dhariwal &
  Nichol 2021, §3; Saharia et al. 2022, App. F).
- **head width 32** (`num_head_channels = 32`): heads of 32 channels (ADM uses 64) instead of 4
  heads; at digits' attention (the middle block, 64 channels) that is 2 heads of 32 against 4 of
  16 (Dhariwal & Nichol 2021, §3).
- **efficient** (`efficient`): Imagen's Efficient U-Net, one skip per level and the
  convolutions at the lower resolution (Saharia et al. 2022, App. F).

Every variant trains with the same budget (the preset's 1500 steps, batch 128, or `--steps`)
through `difflab.runs.train.train`, and is scored by the run's own evaluation (metrics.json):
FD of 180 DDIM-100 samples in the committed digits classifier's feature space, beside the FD
floor of the 180 real test images. One FD of 180 moves by ±10 or more between training seeds
(the preset's note: 34 at seed 0, 53 at seed 1), so each variant trains at every seed of
`--seeds` and the table gives the mean and each seed's value. Step time: the whole run's
`train_seconds` over its steps, and (less exposed to a shared machine's drifting load) the
median of `--repeats` short runs of 30 steps with the variants interleaved.

    nice -n 19 .venv/bin/python benchmarks/unet_options_digits.py           # ~1 h on 2 cores
    nice -n 19 .venv/bin/python benchmarks/unet_options_digits.py --quick   # smoke test, ~1 min

A finished run directory is reused (delete `--workdir` to retrain), so an interrupted benchmark
resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent

# name → config keys over the `digits` preset
VARIANTS = {
    "default": {},
    "BigGAN up/down": {"resblock_updown": True},
    "1/√2 skips": {"rescale_skip": True},
    "head width 32": {"num_head_channels": 32},
    "efficient": {"efficient": True},
}
TIMING_STEPS = 30


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def config(name: str, seed: int, steps: int | None, extra: dict | None = None):
    from difflab.config import load_config

    over = {**VARIANTS[name], "seed": seed, **(extra or {})}
    if steps is not None:
        over["steps"] = steps
    return load_config("digits", over)


def train_run(name: str, seed: int, steps: int | None, workdir: Path, extra: dict) -> dict:
    """metrics.json of the variant's run at ``seed`` (trained unless already finished)."""
    from difflab.runs.train import train

    out = workdir / f"{slug(name)}-seed{seed}"
    if not (out / "metrics.json").exists():
        print(f"[{name} seed {seed}] training into {out}", flush=True)
        train(config(name, seed, steps, extra), out, overwrite=True, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"[{name} seed {seed}] FD {metrics['fd']:.1f} (floor {metrics['fd_floor']:.1f}), "
          f"{1000 * metrics['train_seconds'] / metrics['train_steps']:.0f} ms/step", flush=True)
    return metrics


def timing(repeats: int, steps: int, workdir: Path, extra: dict) -> dict[str, list[float]]:
    """ms per step of short runs, the variants interleaved (order reversed every other
    repeat) so that a change in the machine's load falls on all of them alike."""
    from difflab.runs.train import train

    ms: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for r in range(repeats + 1):  # the first round warms up (imports, caches, data)
        for name in names if r % 2 else names[::-1]:
            cfg = config(name, 0, steps, {**extra, "eval_steps": 5,
                                          "checkpoint_every": 10 * steps})
            run = train(cfg, workdir / f"timing-{slug(name)}", overwrite=True, progress=False)
            m = json.loads((Path(run) / "metrics.json").read_text())
            if r:
                ms[name].append(1000 * m["train_seconds"] / m["train_steps"])
    return ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the "
                   "preset's 1500)")
    p.add_argument("--seeds", default="0,1", help="training seeds, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=0, help="torch threads of every run (default "
                   "0: the preset's, all cores; 1 is steadier on a machine shared with others)")
    p.add_argument("--workdir", type=Path, default=Path("runs/bench-unet-options"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "unet_options_digits")
    p.add_argument("--quick", action="store_true", help="smoke test: 20 steps, 1 seed, DDIM-5")
    args = p.parse_args()
    timing_steps, extra = TIMING_STEPS, {}
    if args.quick:  # and a 5-step evaluation sampler
        args.steps, args.seeds, args.repeats, timing_steps = 20, "0", 1, 5
        extra = {"eval_steps": 5}
        args.workdir = args.workdir.with_name(args.workdir.name + "-quick")
        args.out = args.out.with_name(args.out.name + "_quick")
    seeds = [int(s) for s in args.seeds.split(",")]
    extra["threads"] = args.threads
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from difflab.build.model import build_model

    results: dict = {"preset": "digits", "steps": config("default", 0, args.steps).steps,
                     "seeds": seeds, "cores": os.cpu_count(), "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "load_before": os.getloadavg(),
                     "variants": {}}
    for name, keys in VARIANTS.items():
        runs = [train_run(name, s, args.steps, args.workdir, extra) for s in seeds]
        net = build_model(config(name, 0, args.steps))
        results["variants"][name] = {
            "keys": keys, "params": sum(q.numel() for q in net.parameters()),
            "fd": [m["fd"] for m in runs], "fd_floor": runs[0]["fd_floor"],
            "run_ms_per_step": [1000 * m["train_seconds"] / m["train_steps"] for m in runs]}
    for name, ms in timing(args.repeats, timing_steps, args.workdir, extra).items():
        results["variants"][name]["ms_per_step"] = ms
    results["load_after"] = os.getloadavg()  # 1, 5, 15-minute load averages of the machine
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(table(results))
    print(table(results))


def fmt_load(load: list[float]) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def table(r: dict) -> str:
    seeds = ", ".join(map(str, r["seeds"]))
    lines = [f"U-Net options on digits ({r['preset']} preset, {r['steps']} steps each, seeds "
             f"{seeds}; {r['threads']} torch threads on {r['cores']} cores). FD of 180 DDIM-100 "
             "samples (metrics.json), mean over seeds and each seed; ms/step: median of "
             "interleaved short runs, and its ratio to the default (the whole runs' own step "
             "times, exposed to the machine's changing load, are in the JSON). Load average "
             f"(1/5/15 min) {fmt_load(r['load_before'])} before, {fmt_load(r['load_after'])} "
             "after.", "",
             "| variant | config keys | params | FD (mean) | FD per seed | FD floor | ms/step | "
             "× default |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    base = statistics.median(r["variants"]["default"]["ms_per_step"])
    for name, v in r["variants"].items():
        keys = ", ".join(f"`{k} = {json.dumps(x)}`" for k, x in v["keys"].items()) or "—"
        ms = statistics.median(v["ms_per_step"])
        lines.append(
            f"| {name} | {keys} | {v['params'] / 1e3:.0f}k | {statistics.fmean(v['fd']):.1f} | "
            f"{' / '.join(f'{x:.1f}' for x in v['fd'])} | {v['fd_floor']:.1f} | "
            f"{ms:.0f} | {ms / base:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
