"""What 1 and 2 torch threads cost when another process keeps one core busy: the busy-machine
rows that `threads_digits.py` (an idle machine) does not have.

    .venv/bin/python benchmarks/threads_busy.py           # 3-10 min on 2 cores (not niced)
    .venv/bin/python benchmarks/threads_busy.py --quick   # smoke test, 30 s to 2 min

Method. Three workloads, each timed at 1 and 2 intra-op threads, first as the machine is
("quiet") and then with a second process spinning in a pure-Python loop, pinned to one core where
the OS allows it ("busy"): one call of the exact denoiser of the README's ring mixture on 5000
points (the samplers' benchmark model; the median of 30 calls), and a training step of the
`default` MLP and of the `digits` U-Net (a real `difflab.runs.train.train` of a few steps; its
`train_seconds` over its steps, as in `threads_digits.py`). Thread counts alternate within each
repeat; the table gives the median of `--repeats` and, in brackets, the fastest. A thread that
shares its core with the spinner waits for it at every barrier of an intra-op parallel region,
so 2 threads can be far slower than 1 on a busy machine although they are faster on an idle one.
The "quiet" rows (no spinner) are only as quiet as the machine was: its load average is in the
table, and on a machine already loaded they are busy rows too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
THREADS = (1, 2)
LABELS = {"quiet": "as it was (no spinner)", "busy": "+ a spinner on one core"}
TRAIN = {"default": (200, {"n_eval": 500, "eval_steps": 5}),
         "digits": (6, {"eval_steps": 2, "n_eval": 20})}


def spin() -> None:
    """Keep one core busy (pinned to the last core where possible)."""
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[-1]})
    while True:
        pass


def denoiser_ms(threads: int, calls: int) -> float:
    """Median ms of one exact-denoiser call on 5000 points of the ring mixture."""
    from difflab import oracle, schedules

    s = schedules.cosine(T=1000)
    model = oracle.ExactDenoiser(oracle.ring_mixture(k=8, radius=2.0, std=0.15), s)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 2, generator=g)
    t = torch.full((5000,), 500, dtype=torch.int64)
    torch.set_num_threads(threads)
    model(x, t)  # warm-up
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        model(x, t)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def train_ms(preset: str, steps: int, extra: dict, threads: int, workdir: Path) -> float:
    """Milliseconds per training step of ``preset`` (the loop's own time, as threads_digits)."""
    from difflab.config import load_config
    from difflab.runs.train import train

    cfg = load_config(preset, {**extra, "steps": steps, "threads": threads, "warmup": 1,
                               "checkpoint_every": 10 * steps})
    run = train(cfg, workdir / f"{preset}-{threads}", overwrite=True, progress=False)
    m = json.loads((Path(run) / "metrics.json").read_text())
    return 1000 * m["train_seconds"] / m.get("train_steps", steps)


def measure(fn, repeats: int) -> dict:
    ms: dict[str, list[float]] = {str(t): [] for t in THREADS}
    for r in range(repeats):
        for threads in THREADS if r % 2 == 0 else THREADS[::-1]:
            ms[str(threads)].append(fn(threads))
    return {"ms": ms, "median": {k: statistics.median(v) for k, v in ms.items()},
            "min": {k: min(v) for k, v in ms.items()}}


def table(r: dict) -> str:
    lines = [f"Milliseconds at 1 and 2 torch threads, the median of {r['repeats']} repeats (the "
             f"fastest in brackets); {r['cores']} cores, torch {r['torch']}; busy: a second "
             "process spins on one core. Load average (1/5/15 min) "
             f"{'/'.join(f'{x:.1f}' for x in r['load_before'])} before, "
             f"{'/'.join(f'{x:.1f}' for x in r['load_after'])} after. The ratio > 1: 2 threads "
             "are faster.", "",
             "| workload | machine | 1 thread | 2 threads | 1 thread / 2 threads |",
             "| --- | --- | ---: | ---: | ---: |"]
    for name, rows in r["rows"].items():
        for machine, row in rows.items():
            a, b = (f"{row['median'][t]:.1f} ({row['min'][t]:.1f})" for t in ("1", "2"))
            lines.append(f"| {name} | {LABELS[machine]} | {a} | {b} | "
                         f"{row['median']['1'] / row['median']['2']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="repeats per thread count")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "threads_busy")
    p.add_argument("--quick", action="store_true", help="smoke test: few steps, 1 repeat")
    args = p.parse_args()
    train_sets, calls = dict(TRAIN), 30
    if args.quick:
        args.repeats, calls = 1, 5
        train_sets = {k: (max(2, n // 10), e) for k, (n, e) in train_sets.items()}
        args.out = args.out.with_name(args.out.name + "_quick")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results: dict = {"cores": os.cpu_count(), "torch": torch.__version__,
                     "repeats": args.repeats, "load_before": os.getloadavg(), "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = {"exact denoiser call (5000 points)": lambda t: denoiser_ms(t, calls)}
        for name, (n, extra) in train_sets.items():
            train_ms(name, 2, extra, 1, Path(tmp))  # warm-up: imports, data
            work[f"{name} training step"] = (
                lambda t, name=name, n=n, extra=extra: train_ms(name, n, extra, t, Path(tmp)))
        for label, fn in work.items():
            rows = {"quiet": measure(fn, args.repeats)}
            spinner = mp.get_context("spawn").Process(target=spin, daemon=True)
            spinner.start()
            try:
                time.sleep(0.5)
                rows["busy"] = measure(fn, args.repeats)
            finally:
                spinner.terminate()
                spinner.join()
            results["rows"][label] = rows
            print(label, {m: r["median"] for m, r in rows.items()}, flush=True)
    results["load_after"] = os.getloadavg()
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
