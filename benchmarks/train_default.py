"""The default `difflab train`: wall seconds of the whole command and SWD / noise floor.

Runs the real console command (`difflab train --out DIR --no-progress`) once per seed, as a user
would, and reads the run's metrics.json. The target of issue #2: ≤ 60 s for the whole command on
a 2-core CPU and SWD ≤ 2× the two-sample floor. Run it on a quiet machine: the wall time is what
is measured, and any other process on the two cores inflates it.

    .venv/bin/python benchmarks/train_default.py              # seeds 0, 1, 2
    .venv/bin/python benchmarks/train_default.py --seeds 0 --extra --threads 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(seed: int, extra: list[str], workdir: Path) -> dict:
    out = workdir / f"seed{seed}"
    cmd = [str(Path(sys.executable).with_name("difflab")), "train", "--out", str(out),
           "--no-progress", "--seed", str(seed), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    assert proc.stdout.strip().splitlines()[-1] == str(out), "last line must be the run dir"
    m = json.loads((out / "metrics.json").read_text())
    return {"seed": seed, "wall_s": wall, "train_s": m["train_seconds"],
            "sample_s": m["sample_seconds"], "swd": m["swd"], "floor": m["swd_floor"],
            "ratio": m["swd"] / m["swd_floor"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further flags for difflab train (put last)")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="difflab-bench-"))
    rows = []
    try:
        for seed in args.seeds:
            rows.append(run_once(seed, args.extra, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("| seed | whole command (s) | training (s) | sampling (s) | SWD | floor | SWD / floor |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['seed']} | {r['wall_s']:.1f} | {r['train_s']:.1f} | {r['sample_s']:.1f} | "
              f"{r['swd']:.4f} | {r['floor']:.4f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
