"""Milliseconds per training step at 1 and 2 torch threads, for the default 2-D MLP and the
digits U-Net: the figures behind the `threads` key of the presets.

`threads = 0` (the default) uses every core torch is given, as torch and its peers do; a preset
pins fewer only where this benchmark shows that faster for its model size (issue 11, point 8).

    .venv/bin/python benchmarks/threads_digits.py           # ~8 min on 2 cores (not niced:
                                                            # a niced run measures the others)
    .venv/bin/python benchmarks/threads_digits.py --quick   # smoke test, ~1 min

Method. Each measurement is a real `difflab.runs.train.train` of the preset for N steps (same
seed, so the same weights, batches and noise at either thread count; its evaluation cut to a
few sampler steps); the step time is the run's `train_seconds` (metrics.json: the training loop
alone, without data loading or evaluation) over N. Thread counts alternate within each repeat
(order reversed every other one). On a shared machine others' load only ever slows a run, and
it slows a 2-thread run far more (a thread waits at every barrier for the other's core), so the
table gives the fastest of `--repeats` runs, the machine's own speed, and the median beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent

# preset → (steps N of the short run, overrides that keep its evaluation cheap)
PRESETS = {
    "default": (300, {"n_eval": 1000, "eval_steps": 10}),
    "digits": (40, {"eval_steps": 5}),
}
THREADS = (1, 2)


def step_ms(preset: str, steps: int, threads: int, extra: dict, workdir: Path) -> float:
    """Milliseconds per step of ``difflab.runs.train.train`` of ``preset`` for ``steps`` steps:
    the run's ``train_seconds`` (its training loop alone) over its steps."""
    from difflab.config import load_config
    from difflab.runs.train import train

    cfg = load_config(preset, {**extra, "steps": steps, "threads": threads, "warmup": 1,
                               "checkpoint_every": 10 * steps})
    torch.set_num_threads(threads)  # as train itself does with cfg.threads
    run = train(cfg, workdir / f"{preset}-{threads}", overwrite=True, progress=False)
    metrics = json.loads((Path(run) / "metrics.json").read_text())
    return 1000 * metrics["train_seconds"] / metrics.get("train_steps", steps)


def measure(preset: str, n: int, extra: dict, repeats: int, workdir: Path) -> dict:
    ms: dict[str, list[float]] = {str(t): [] for t in THREADS}  # JSON keys
    step_ms(preset, 2, THREADS[-1], extra, workdir)  # warm-up: imports, caches, data
    for r in range(repeats):
        for threads in THREADS if r % 2 == 0 else THREADS[::-1]:
            ms[str(threads)].append(step_ms(preset, n, threads, extra, workdir))
            print(f"[{preset}] threads {threads}: {ms[str(threads)][-1]:.1f} ms/step",
                  flush=True)
    med = {t: statistics.median(v) for t, v in ms.items()}
    best = {t: min(v) for t, v in ms.items()}
    return {"steps": n, "ms_per_step": ms, "median_ms": med, "min_ms": best,
            "median_1_over_2": med["1"] / med["2"], "min_1_over_2": best["1"] / best["2"]}


def fmt_load(load: list[float]) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def table(r: dict) -> str:
    lines = [f"Training step time in ms at 1 and 2 torch threads: the fastest of {r['repeats']} "
             "repeats (the machine's own speed: others' load only slows a run down) and, in "
             f"brackets, their median; {r['cores']} cores, torch {r['torch']}; load average "
             f"(1/5/15 min) {fmt_load(r['load_before'])} before, {fmt_load(r['load_after'])} "
             "after. The ratio > 1: 2 threads are faster.", "",
             "| preset | model | batch | 1 thread | 2 threads | 1 thread / 2 threads |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, row in r["presets"].items():
        cells = [f"{row['min_ms'][str(t)]:.1f} ({row['median_ms'][str(t)]:.1f})"
                 for t in THREADS]
        lines.append(f"| {name} | {row['model']} | {row['batch']} | {cells[0]} | {cells[1]} | "
                     f"{row['min_1_over_2']:.2f} ({row['median_1_over_2']:.2f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="repeats per thread count")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "threads_digits")
    p.add_argument("--quick", action="store_true", help="smoke test: few steps, 1 repeat")
    args = p.parse_args()
    presets = dict(PRESETS)
    if args.quick:
        args.repeats = 1
        presets = {k: (max(2, n // 10), e) for k, (n, e) in presets.items()}
        args.out = args.out.with_name(args.out.name + "_quick")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from difflab.build.model import build_model
    from difflab.config import load_config, model_kind

    results: dict = {"cores": os.cpu_count(), "torch": torch.__version__,
                     "repeats": args.repeats, "load_before": os.getloadavg(), "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (n, extra) in presets.items():
            cfg = load_config(name)
            params = sum(q.numel() for q in build_model(cfg).parameters())
            row = measure(name, n, extra, args.repeats, Path(tmp))
            row.update(model=f"{model_kind(cfg)} ({params / 1e3:.0f}k params)", batch=cfg.batch)
            results["presets"][name] = row
    results["load_after"] = os.getloadavg()  # 1, 5, 15-minute load averages of the machine
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
