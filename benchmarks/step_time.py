"""Milliseconds per training step of a preset on each (device, precision, compile) asked for:
the one loop (``difflab.training.fit``) on the preset's data and network, the first
``--warmup`` steps (compilation, cuDNN autotuning) left out of the timing.

    python benchmarks/step_time.py --preset digits --steps 60 --configs cpu:fp32 cpu:bf16
    python benchmarks/step_time.py --preset digits --configs cuda:fp32 cuda:bf16:compile
    python benchmarks/step_time.py --preset digits --processes 2 --configs cuda:fp32
    python benchmarks/step_time.py --preset mnist-latent --autoencoder runs/ae --configs cuda:bf16

Each config is DEVICE:PRECISION[:compile]. With ``--processes N`` the script re-launches itself
under ``accelerate launch`` (N processes, the same global batch) and reports the main process's
time. Prints a markdown table; ``--out PREFIX`` also writes PREFIX.json and PREFIX.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from difflab.build.data import training_set
from difflab.build.model import build_schedule
from difflab.config import load_config
from difflab.training import OBJECTIVES, fit
from difflab.training.backend import Backend, BackendError


def step_ms(preset: str, device: str, precision: str, compile: bool, steps: int,
            warmup: int, threads: int, autoencoder: str = "") -> dict:
    cfg = load_config(preset, {"device": device, "precision": precision, "compile": compile,
                               "threads": threads, "autoencoder": autoencoder})
    backend = Backend.create(cfg.device, cfg.precision, cfg.compile)
    x, cfg, conds = training_set(cfg)
    codec = None
    if cfg.autoencoder:  # a latent run: the autoencoder run's codec, as `difflab train` has it
        from difflab.runs import latent

        cfg, weights = latent.attach(cfg)
        codec = latent.codec_from(cfg, weights)
    torch.manual_seed(cfg.seed)
    objective = OBJECTIVES[cfg.method](cfg, build_schedule(cfg), x, conds, backend,
                                       codec=codec)
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(step: int, loss: float) -> None:
        if backend.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    if threads:
        torch.set_num_threads(threads)
    fit(objective, steps=warmup + steps, generator=torch.Generator().manual_seed(0),
        backend=backend, on_update=tick)
    timed = times[warmup:]
    return {"preset": preset, "device": str(backend.device), "precision": precision,
            "compile": compile, "processes": backend.world_size, "batch": cfg.batch,
            "steps": len(timed), "ms_per_step": 1000 * sum(timed) / len(timed),
            "examples_per_s": cfg.batch * len(timed) / sum(timed)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="digits")
    p.add_argument("--configs", nargs="+", default=["cpu:fp32", "cpu:bf16"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--autoencoder", default="", metavar="RUN",
                   help="time latent diffusion on this autoencoder run's latents")
    p.add_argument("--out", help="write PREFIX.json and PREFIX.md")
    args = p.parse_args()
    if args.processes > 1 and int(os.environ.get("WORLD_SIZE", 1)) == 1:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
               str(args.processes), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", *(["--multi_gpu"] if torch.cuda.is_available() else
                                           ["--cpu"]), __file__, *sys.argv[1:]]
        sys.exit(subprocess.run(cmd).returncode)
    rows = []
    for spec in args.configs:
        device, precision, *rest = spec.split(":")
        try:
            rows.append(step_ms(args.preset, device, precision, "compile" in rest, args.steps,
                                args.warmup, args.threads, args.autoencoder))
        except BackendError as err:
            rows.append({"preset": args.preset, "device": device, "precision": precision,
                         "compile": "compile" in rest, "skipped": str(err)})
    if int(os.environ.get("RANK", 0)) != 0:
        return
    head = ("| device | precision | compile | processes | ms/step | examples/s |\n"
            "|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['device']} | {r['precision']} | {r['compile']} | {r.get('processes', '')} | "
        + (f"{r['ms_per_step']:.1f} | {r['examples_per_s']:.0f} |\n" if "ms_per_step" in r
           else f"skipped: {r['skipped']} | |\n") for r in rows)
    table = f"{args.preset}, batch {rows[0].get('batch', '?')}, {args.steps} timed steps\n\n" \
            + head + body
    print(table)
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps({"command": " ".join(sys.argv),
                                                         "rows": rows}, indent=2) + "\n")
        Path(f"{args.out}.md").write_text(f"`{' '.join(sys.argv)}`\n\n{table}")


if __name__ == "__main__":
    main()
