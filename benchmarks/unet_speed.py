"""Speed and memory of difflab's U-Net (nn/unet.py) on this CPU, in both memory formats.

For two configs — "digits" (8×8, 1 channel) and "mnist32" (32×32, 1 channel) — it reports
- parameter count;
- ms per training step: forward + MSE backward + AdamW step, at the config's training batch;
- ms per sampling step: one forward under ``torch.inference_mode`` at batch 256 (one step of
  DDPM/DDIM costs one such forward plus a few element-wise ops);
- peak memory: the rise of the process's max RSS (``resource.getrusage``) over the steps, on top
  of the model, optimiser and inputs already allocated; every cell runs in a fresh process, since
  max RSS only ever grows;
- FLOPs per step (``torch.utils.flop_counter``: convolutions, matmuls, attention) and the FLOP
  rate reached, against a float32 matmul peak measured here with the same threads (1024×1024,
  the best of every process's 10 tries);
- NCHW (contiguous) against ``torch.channels_last`` (model and input converted), and which wins.

    nice -n 19 python benchmarks/unet_speed.py             # ~6 min at 1 thread on a quiet CPU
    nice -n 19 python benchmarks/unet_speed.py --quick     # digits only
    python benchmarks/unet_speed.py --threads 2 --out table.md

Each cell runs --rounds times, in a fresh process each time, the two formats alternating, and
times --reps steps after one warm-up step; ms/step is the median of all of them. On a shared
machine the load moves under the measurement, so compare rows from the same run only.
AdamW is the fused CPU kernel (``fused=True``): 5× faster than the default per-tensor loop.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F  # noqa: N812
from torch.utils.flop_counter import FlopCounterMode

from difflab.nn.unet import UNet, UNetConfig

SAMPLE_BATCH = 256
# name -> (config, image size, training batch)
CONFIGS: dict[str, tuple[UNetConfig, int, int]] = {
    "digits": (
        UNetConfig(in_channels=1, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                   attention_resolutions=(2,), groups=8),
        8, 128,
    ),
    "mnist32": (
        UNetConfig(in_channels=1, model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                   attention_resolutions=(2,), groups=32),
        32, 64,
    ),
}
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def matmul_peak_gflops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def measure(name: str, fmt: str, mode: str, reps: int) -> dict:
    """One cell of the table, in this (fresh) process."""
    cfg, size, train_batch = CONFIGS[name]
    torch.manual_seed(0)
    model = UNet(cfg).to(memory_format=FORMATS[fmt])
    B = train_batch if mode == "train" else SAMPLE_BATCH

    def batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(b, cfg.in_channels, size, size).to(memory_format=FORMATS[fmt])
        return x, torch.randint(1, 1001, (b,))

    if mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step(x: torch.Tensor, t: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            F.mse_loss(model(x, t), x).backward()  # the target's value does not change the cost
            opt.step()
    else:
        model.eval()

        def step(x: torch.Tensor, t: torch.Tensor) -> None:
            with torch.inference_mode():
                model(x, t)

    with FlopCounterMode(display=False) as counter:  # FLOPs are linear in the batch: count at 1
        step(*batch(1))
    flops = counter.get_total_flops() * B

    x, t = batch(B)
    rss0 = max_rss_mib()
    step(x, t)  # warm-up: oneDNN primitives, AdamW state, allocator
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step(x, t)
        times.append(time.perf_counter() - t0)
    return dict(name=name, fmt=fmt, mode=mode, batch=B, params=model.param_count(),
                times=times, peak_mib=max_rss_mib() - rss0, flops=flops,
                matmul_gflops=matmul_peak_gflops())


def summarise(cells: list[dict]) -> dict:
    """Merge the rounds of one cell: median time over all steps, largest memory peak."""
    r = dict(cells[0])
    ms = 1e3 * statistics.median(t for c in cells for t in c["times"])
    r.update(ms=ms, img_s=r["batch"] / ms * 1e3, peak_mib=max(c["peak_mib"] for c in cells),
             gflop=r["flops"] / 1e9, gflops=r["flops"] / 1e9 / (ms / 1e3))
    return r


def child(args: list[str], threads: int) -> dict:
    """Run one measurement in a fresh interpreter (fresh max-RSS) and read its JSON line."""
    cmd = [sys.executable, __file__, "--threads", str(threads), "--child", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(rows: list[dict], peak: float) -> str:
    lines = [
        "| config | params | format | mode | batch | ms/step | img/s | peak MiB | GFLOP/step "
        "| GFLOP/s | of matmul peak |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f} M | {r['fmt']} | {r['mode']} | {r['batch']} "
            f"| {r['ms']:.1f} | {r['img_s']:.0f} | {r['peak_mib']:.0f} | {r['gflop']:.1f} "
            f"| {r['gflops']:.1f} | {100 * r['gflops'] / peak:.0f} % |"
        )
    lines.append("")
    for name in dict.fromkeys(r["name"] for r in rows):
        for mode in ("train", "sample"):
            ms = {r["fmt"]: r["ms"] for r in rows if r["name"] == name and r["mode"] == mode}
            if len(ms) == 2:
                ratio = ms["nchw"] / ms["channels_last"]
                best = "channels_last" if ratio > 1 else "nchw"
                lines.append(f"- {name} {mode}: nchw / channels_last = {ratio:.2f} → {best} faster")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--reps", type=int, default=3, help="timed steps per process (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="processes per cell (default 3)")
    p.add_argument("--quick", action="store_true", help="digits only, 2 rounds")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    p.add_argument("--child", nargs=4, metavar=("CONFIG", "FORMAT", "MODE", "REPS"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        name, fmt, mode, reps = args.child
        print(json.dumps(measure(name, fmt, mode, int(reps))))
        return
    if args.quick:
        args.configs, args.rounds = ["digits"], 2

    cells: dict[tuple[str, str, str], list[dict]] = {}
    for rnd in range(args.rounds):
        for name in args.configs:
            for mode in ("train", "sample"):
                for fmt in list(FORMATS)[:: 1 if rnd % 2 == 0 else -1]:  # alternate the order
                    r = child([name, fmt, mode, str(args.reps)], args.threads)
                    cells.setdefault((name, mode, fmt), []).append(r)
                    ms = 1e3 * statistics.median(r["times"])
                    print(f"round {rnd}: {name} {mode} {fmt}: {ms:.1f} ms", file=sys.stderr)
    rows = [summarise(c) for c in cells.values()]
    # the best matmul rate seen in any process: under load, one measurement underestimates it
    peak = max(r["matmul_gflops"] for c in cells.values() for r in c)
    header = (
        f"## difflab U-Net on {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, {args.threads} thread(s); float32 matmul peak {peak:.0f} GFLOP/s\n\n"
        f"Median of {args.rounds}×{args.reps} steps, each process after one warm-up; training = "
        f"forward + MSE backward + fused AdamW; sampling = one forward under inference_mode. "
        f"peak MiB = rise of max RSS over the steps.\n\n"
    )
    text = header + table(rows, peak)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
