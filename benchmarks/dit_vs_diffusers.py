"""difflab's DiT against diffusers' DiTTransformer2DModel of the same shape, on this CPU.

For each config — DiT-T/2 and DiT-XS/2 (the ``digits-dit`` preset's size) on digits-shaped input
(1×8×8, batch 64) and DiT-S/2 on 4×32×32 latents (batch 8) — it builds difflab's
``DiT(DiTConfig.named(size, ...))``, class-conditional (10 classes, adaLN-Zero, ε only), and a
diffusers ``DiTTransformer2DModel`` with the same depth, width, heads, patch size, image size,
channels and classes (``norm_type="ada_norm_zero"``, tanh-GELU MLP of 4× the width, biased
attention, LayerNorm eps 1e-6). Then, for both models, it reports

- **train**: ms per training step — forward, MSE against the noise, backward, fused AdamW step —
  on one fixed batch (x_t, t, y);
- **sample**: ms per sampling step — one forward under ``torch.inference_mode`` — at the same
  batch;
- images/s, FLOPs per step (``torch.utils.flop_counter`` at batch 1, scaled) and the parameter
  counts. diffusers' model has more parameters: every one of its blocks carries its own timestep
  MLP and label table (``AdaLayerNormZero`` embeds (t, y) itself), where DiT and difflab embed
  them once for all blocks; the table says by how much;
- **the ratio diffusers / difflab** of ms per step: above 1 means difflab is faster.

diffusers runs in its own virtual environment, the same one that ``unet_vs_diffusers.py`` makes
and checks (default ``~/.cache/difflab-bench/diffusers-venv``: this difflab environment's torch,
pinned, and ``diffusers==0.42.1``), whether or not difflab's has diffusers. The helpers for
it are imported from ``unet_vs_diffusers.py``.

    nice -n 19 .venv/bin/python benchmarks/dit_vs_diffusers.py            # ~3 min, 1 thread
    nice -n 19 .venv/bin/python benchmarks/dit_vs_diffusers.py --quick    # T/2 and XS/2, ~30 s
    .venv/bin/python benchmarks/dit_vs_diffusers.py --configs S/2-32x4 --threads 2

Timing pairs the libraries as ``unet_vs_diffusers.py`` does: each round is one fresh process of
diffusers' interpreter, with difflab importable beside it, that runs one library's step, then
the other's, ``--reps`` times after a warm-up step each, who goes first alternating. The ratio
is the median over those back-to-back pairs; [range] is that median in each round alone; the CPU
ratio is the same by process CPU time. Compare rows of the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F  # noqa: N812 (the usual name)
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unet_vs_diffusers import (  # noqa: E402 (after the path)
    DEFAULT_VENV,
    DIFFUSERS_SPEC,
    _probe,
    difflab_only_path,
    diffusers_python,
    matmul_peak_gflops,
    timed,
)

T = 1000
NUM_CLASSES = 10
# name -> (DIT_SIZES key, patch, channels, image side, batch)
CONFIGS: dict[str, tuple[str, int, int, int, int]] = {
    "T/2-digits": ("T", 2, 1, 8, 64),
    "XS/2-digits": ("XS", 2, 1, 8, 64),
    "S/2-32x4": ("S", 2, 4, 32, 8),
}
QUICK_CONFIGS = ["T/2-digits", "XS/2-digits"]
RESULTS = Path(__file__).resolve().parent / "results"
LIBS = ("difflab", "diffusers")
MODES = ("train", "sample")


def config_spec(name: str) -> dict:
    from difflab.nn.dit import DIT_SIZES

    size, patch, channels, side, batch = CONFIGS[name]
    depth, width, heads = DIT_SIZES[size]
    return dict(name=name, size=size, patch=patch, channels=channels, side=side, batch=batch,
                depth=depth, width=width, heads=heads, classes=NUM_CLASSES)


# --- the two models (child processes) -----------------------------------------------------------


class DiffusersEps(torch.nn.Module):
    """DiTTransformer2DModel behind difflab's interface, model(x_t, t, y) -> ε̂."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(x, timestep=t, class_labels=y, return_dict=False)[0]


def build(lib: str, s: dict) -> torch.nn.Module:
    if lib == "difflab":
        from difflab.nn.dit import DiT, DiTConfig

        return DiT(DiTConfig.named(s["size"], patch_size=s["patch"], in_channels=s["channels"],
                                   input_size=s["side"], num_classes=s["classes"]))
    from diffusers import DiTTransformer2DModel

    return DiffusersEps(DiTTransformer2DModel(
        num_attention_heads=s["heads"], attention_head_dim=s["width"] // s["heads"],
        in_channels=s["channels"], out_channels=s["channels"], num_layers=s["depth"],
        dropout=0.0, attention_bias=True, sample_size=s["side"], patch_size=s["patch"],
        activation_fn="gelu-approximate", num_embeds_ada_norm=s["classes"],
        norm_type="ada_norm_zero", norm_elementwise_affine=False, norm_eps=1e-6,
    ))


class Workload:
    """One library's model and what one step of ``mode`` needs, on a fixed batch."""

    def __init__(self, lib: str, s: dict, mode: str):
        torch.manual_seed(0)
        self.model = model = build(lib, s)
        self.params = sum(p.numel() for p in model.parameters())
        self.batch = B = s["batch"]
        C, side = s["channels"], s["side"]

        def inputs(b: int) -> tuple[torch.Tensor, ...]:
            return (torch.randn(b, C, side, side), torch.randint(1, T, (b,)),
                    torch.randint(0, s["classes"], (b,)))

        if mode == "train":
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

            def run(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
                opt.zero_grad(set_to_none=True)
                F.mse_loss(model(x, t, y), x).backward()
                opt.step()
        else:
            model.eval()

            def run(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
                with torch.inference_mode():
                    model(x, t, y)

        with FlopCounterMode(display=False) as counter:
            run(*inputs(1))
        self.flops = counter.get_total_flops() * B
        if mode == "train":  # forget the AdamW state of the counting step's batch of one
            model.zero_grad(set_to_none=True)
        batch = inputs(B)
        self.step = lambda: run(*batch)


def measure_pair(s: dict, modes: list[str], reps: int, first: int) -> dict:
    out: dict = dict(matmul_gflops=matmul_peak_gflops(), cells={})
    for mode in modes:
        work = {lib: Workload(lib, s, mode) for lib in LIBS}
        for w in work.values():
            w.step()  # warm-up: oneDNN primitives, AdamW state, the allocator
        times: dict[str, list[tuple[float, float]]] = {lib: [] for lib in LIBS}
        for rep in range(reps):
            for lib in LIBS if (first + rep) % 2 == 0 else LIBS[::-1]:
                times[lib].append(timed(work[lib].step))
        for lib, w in work.items():
            out["cells"][f"{mode}/{lib}"] = dict(
                batch=w.batch, params=w.params, flops=w.flops,
                wall=[a for a, _ in times[lib]], cpu=[b for _, b in times[lib]])
        del work
    out["matmul_gflops"] = max(out["matmul_gflops"], matmul_peak_gflops())
    return out


# --- the parent ---------------------------------------------------------------------------------


def child(python: Path, args: list[str], threads: int, pythonpath: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               HF_HUB_OFFLINE="1", DIFFUSERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    cmd = [str(python), __file__, "--threads", str(threads), "--child", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def summarise(name: str, mode: str, rounds: list[dict], peak: float) -> dict:
    row: dict = dict(name=name, mode=mode)
    for lib in LIBS:
        cells = [r["cells"][f"{mode}/{lib}"] for r in rounds]
        ms = 1e3 * statistics.median(x for c in cells for x in c["wall"])
        gflop = cells[0]["flops"] / 1e9
        row[lib] = dict(
            batch=cells[0]["batch"], params=cells[0]["params"], gflop=gflop, ms=ms,
            cpu_ms=1e3 * statistics.median(x for c in cells for x in c["cpu"]),
            img_s=cells[0]["batch"] / ms * 1e3, util=gflop / (ms / 1e3) / peak)

    def paired(r: dict, clock: str) -> list[float]:
        a, b = r["cells"][f"{mode}/difflab"][clock], r["cells"][f"{mode}/diffusers"][clock]
        return [y / x for x, y in zip(a, b, strict=True)]

    row.update(ratio=statistics.median(q for r in rounds for q in paired(r, "wall")),
               cpu_ratio=statistics.median(q for r in rounds for q in paired(r, "cpu")),
               ratio_rounds=[statistics.median(paired(r, "wall")) for r in rounds])
    return row


def extra_embedders(s: dict) -> int:
    """Parameters of diffusers' DiT beyond difflab's: a (t, y) embedder in every block but one."""
    D, freq = s["width"], 256
    return (s["depth"] - 1) * (freq * D + D + D * D + D + (s["classes"] + 1) * D)


def report(rows: list[dict], specs: dict, args, peak: float, versions: dict,
           command: str) -> str:
    lines = [
        f"## difflab DiT vs diffusers DiTTransformer2DModel — "
        f"{platform.processor() or platform.machine()}, torch {versions['torch']}, "
        f"{args.threads} thread(s)",
        "",
        f"`{command}`",
        "",
        f"difflab {versions['difflab']}, diffusers {versions['diffusers']}; float32 matmul peak "
        f"{peak:.0f} GFLOP/s (best 1024² matmul seen). {args.rounds} rounds, each a fresh "
        f"process that runs both libraries' steps in turn, {args.reps} timed steps each after a "
        f"warm-up. Both models class-conditional ({NUM_CLASSES} classes), adaLN-Zero, ε only. "
        f"train = forward + MSE backward + fused AdamW; sample = one forward under "
        f"inference_mode; same batch. ms = medians over all rounds. **ratio = diffusers time / "
        f"difflab time** (> 1: difflab faster), the median over pairs of steps run back to "
        f"back; [range] = that median in each round alone; CPU ratio = the same by process CPU "
        f"time. util = GFLOP/s over the matmul peak. Each model has its own initialisation: "
        f"difflab DiT's (adaLN modulations and final layer zero), diffusers' constructor's "
        f"(PyTorch defaults, nothing zero).",
        "",
        "| config | mode | batch | difflab ms | diffusers ms | **ratio** [range] | CPU ratio "
        "| img/s difflab / diffusers | GFLOP/step difflab / diffusers "
        "| util difflab / diffusers |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        a, b = r["difflab"], r["diffusers"]
        lo, hi = min(r["ratio_rounds"]), max(r["ratio_rounds"])
        lines.append(
            f"| {r['name']} | {r['mode']} | {a['batch']} | {a['ms']:.1f} | {b['ms']:.1f} "
            f"| **{r['ratio']:.2f}** [{lo:.2f}–{hi:.2f}] | {r['cpu_ratio']:.2f} "
            f"| {a['img_s']:.0f} / {b['img_s']:.0f} | {a['gflop']:.2f} / {b['gflop']:.2f} "
            f"| {100 * a['util']:.1f} % / {100 * b['util']:.1f} % |")
    lines += ["", "| config | input | depth × width, heads, patch | difflab params "
              "| diffusers params | difference | diffusers' per-block (t, y) embedders |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for name, s in specs.items():
        r = next(r for r in rows if r["name"] == name)
        a, b = r["difflab"]["params"], r["diffusers"]["params"]
        lines.append(f"| {name} | {s['channels']}×{s['side']}×{s['side']} | DiT-{s['size']}: "
                     f"{s['depth']} × {s['width']}, {s['heads']}, {s['patch']} | {a:,} | {b:,} "
                     f"| {100 * (b - a) / a:+.1f} % | {extra_embedders(s):,} |")
    lines += ["", "The last column: (depth − 1) × (timestep MLP 256 → D → D + label table "
              "(K + 1) × D) — every diffusers block's ``AdaLayerNormZero`` embeds (t, y) itself, "
              "where DiT and difflab embed them once for all blocks. Where it equals the "
              "difference, the networks are otherwise the same, parameter for parameter."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--reps", type=int, default=3, help="timed steps per round (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="processes per config (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="T/2 and XS/2 only, 2 rounds of 2 steps; writes *_quick.* results")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                   help=f"diffusers' virtual environment (default {DEFAULT_VENV})")
    p.add_argument("--diffusers-python", type=Path,
                   help="use this interpreter (with torch and diffusers) instead of --venv")
    p.add_argument("--diffusers-spec", default=DIFFUSERS_SPEC,
                   help=f"pip requirement for diffusers (default {DIFFUSERS_SPEC})")
    p.add_argument("--pip-args", default="", help="extra pip arguments, one string")
    p.add_argument("--out", type=Path, help="results stem (default results/dit_vs_diffusers)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        spec, modes, reps, first = args.child
        print(json.dumps(measure_pair(json.loads(spec), modes.split(","), int(reps),
                                      int(first))))
        return
    command = " ".join(["python", "benchmarks/dit_vs_diffusers.py", *sys.argv[1:]])
    if args.quick:
        args.configs = [c for c in args.configs if c in QUICK_CONFIGS] or QUICK_CONFIGS
        args.rounds, args.reps = 2, 2
    out = args.out or RESULTS / ("dit_vs_diffusers_quick" if args.quick else "dit_vs_diffusers")

    t_start = time.perf_counter()
    py_diffusers = args.diffusers_python or diffusers_python(
        args.venv, args.diffusers_spec, args.pip_args.split())
    found = _probe(py_diffusers)
    if not found or found[0] != torch.__version__:
        raise SystemExit(f"{py_diffusers} has torch {found and found[0]}, not {torch.__version__}")
    from importlib.metadata import version

    versions = dict(torch=torch.__version__, diffusers=found[1], difflab=version("difflab"))
    both = difflab_only_path()
    specs = {name: config_spec(name) for name in args.configs}
    rounds: dict[str, list[dict]] = {name: [] for name in specs}
    for rnd in range(args.rounds):
        for i, (name, s) in enumerate(specs.items()):
            r = child(py_diffusers, [json.dumps(s), ",".join(args.modes), str(args.reps),
                                     str((rnd + i) % 2)], args.threads, both)
            rounds[name].append(r)
            for mode in args.modes:
                ms = {lib: 1e3 * statistics.median(r["cells"][f"{mode}/{lib}"]["wall"])
                      for lib in LIBS}
                print(f"round {rnd}: {name} {mode}: difflab {ms['difflab']:.1f} ms, diffusers "
                      f"{ms['diffusers']:.1f} ms", file=sys.stderr)
    peak = max(r["matmul_gflops"] for rs in rounds.values() for r in rs)
    rows = [summarise(name, mode, rounds[name], peak) for name in specs for mode in args.modes]
    text = report(rows, specs, args, peak, versions, command)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(dict(
        command=command, threads=args.threads, rounds=args.rounds, reps=args.reps,
        matmul_peak_gflops=peak, versions=versions, machine=platform.machine(),
        seconds=time.perf_counter() - t_start, specs=specs, modes=args.modes, rows=rows,
        raw=rounds,
    ), indent=1) + "\n")
    print(f"\nwrote {out.with_suffix('.md')} and .json "
          f"({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
