"""difflab's U-Net against diffusers' UNet2DModel of the same shape, on this CPU, in one run.

For each config — the U-Nets that ``difflab train --preset digits`` and ``--preset mnist`` build
(built by ``difflab.train.build_model`` from the presets), and "digits-attn4", the digits preset
with self-attention at 4×4 (``attention = "2"``) — it builds a diffusers ``UNet2DModel`` with the
same channels, residual blocks per level, attention at the same resolutions (and the same head
width), the same GroupNorm groups, AdaGN (``resnet_time_scale_shift="scale_shift"``), strided-conv
down-sampling and nearest+conv up-sampling, and checks that the parameter counts agree within 10 %.
Then, for both models, it reports

- **train**: ms per training step — forward, MSE against the noise, backward, fused AdamW step —
  at the preset's batch, on one fixed batch;
- **ddim**: ms per DDIM step (η = 0) at batch 256 with each library's own sampler —
  ``difflab.samplers.ddim`` (under ``torch.inference_mode``) and diffusers' ``DDIMScheduler.step``
  after the model under ``torch.inference_mode``: one forward each plus a few element-wise ops;
- images/s (batch / time of a step); peak memory, the rise of the process's max RSS over two
  steps, in a fresh process for each library and cell (on top of the model, optimiser and
  inputs); FLOPs per step (``torch.utils.flop_counter``: convolutions, matmuls, attention;
  counted at batch 1 and scaled, as they are linear in the batch) and the FLOP rate as a share
  of a float32 matmul peak measured here with the same threads (1024×1024, best of 10, twice in
  every process, the best of all);
- **the ratio diffusers / difflab** of ms per step: above 1 means difflab is faster.

diffusers is installed for this script into its own virtual environment (default
``~/.cache/difflab-bench/diffusers-venv``; made on first use, about a minute), with the very
torch that difflab's environment has, pinned by a constraints file so that pip can never replace
it (a bare ``torch`` requirement pulls a multi-GB CUDA build), whether or not difflab's
environment has diffusers (its dev extra does, for the interop tests). Where
``torch==<this version>`` is not on the package index, pass e.g.
``--pip-args="--extra-index-url https://download.pytorch.org/whl/cpu"``, or
``--diffusers-python`` an interpreter that has both (its torch must be this version).

    nice -n 19 .venv/bin/python benchmarks/unet_vs_diffusers.py            # ~8 min, 1 thread
    nice -n 19 .venv/bin/python benchmarks/unet_vs_diffusers.py --quick    # digits only, ~2 min
    .venv/bin/python benchmarks/unet_vs_diffusers.py --threads 2 --configs mnist32

Timing pairs the libraries: each round is one fresh process of diffusers' interpreter, with this
difflab importable beside it (a folder that holds only a link to the package), that runs one
library's step, then the other's, ``--reps`` times after a warm-up step each, who goes first
alternating; so both see the same load on a shared machine, where it moves by ±20 % between
processes. The table gives the medians over all rounds, the ratio in each round alone (its
spread), and the ratio by the process's CPU time too (less inflated by other processes' load at
1 thread; at more threads it counts their spinning). Compare rows of the same run only.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F  # noqa: N812 (the usual name)
from torch.utils.flop_counter import FlopCounterMode

SAMPLE_BATCH = 256
T = 1000  # training timesteps (both presets: the linear schedule, T = 1000)
# name -> (difflab preset, overrides): the U-Net is the one train.py builds from these
CONFIGS: dict[str, tuple[str, dict[str, str]]] = {
    "digits": ("digits", {}),
    "digits-attn4": ("digits", {"attention": "2"}),
    "mnist32": ("mnist", {}),
}
QUICK_CONFIGS = ["digits", "digits-attn4"]
DIFFUSERS_SPEC = "diffusers==0.42.1"
DEFAULT_VENV = (Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                / "difflab-bench" / "diffusers-venv")
RESULTS = Path(__file__).resolve().parent / "results"
LIBS = ("difflab", "diffusers")


# --- the configs (parent process: difflab's environment) ---------------------------------------


def config_spec(name: str) -> dict:
    """What a child needs to build both models: the UNetConfig of the preset, as train.py builds
    it, with the image side and the training batch."""
    from difflab.build.model import build_model
    from difflab.config import image_size, load_config

    preset, overrides = CONFIGS[name]
    cfg = load_config(preset, overrides)
    unet = build_model(cfg)
    return dict(name=name, unet=unet.config.to_dict(), size=image_size(cfg), batch=cfg.batch)


# --- building the two models (child processes) ------------------------------------------------


def build_difflab(unet: dict) -> torch.nn.Module:
    from difflab.nn.unet import UNet, UNetConfig

    return UNet(UNetConfig(**unet))


def diffusers_kwargs(u: dict, size: int) -> dict:
    """UNet2DModel arguments for the same network as difflab's UNetConfig ``u`` (ADM layout)."""
    unsupported = [k for k in ("efficient", "resblock_updown", "rescale_skip") if u[k]]
    if unsupported:
        raise ValueError(f"no diffusers twin for a U-Net with {', '.join(unsupported)}")
    mult, mc = u["channel_mult"], u["model_channels"]
    levels = range(len(mult))
    attn = [2**level in u["attention_resolutions"] for level in levels]
    # difflab gives every attention block `num_heads` heads (or heads of num_head_channels);
    # diffusers one head width for all: take the middle block's, the same wherever the attention
    # levels are as wide as the middle (true of every config here)
    mid = mc * mult[-1]
    heads = mid // u["num_head_channels"] if u["num_head_channels"] else u["num_heads"]
    n = u["num_res_blocks"]
    if not isinstance(n, int):
        if len(set(n)) != 1:
            raise ValueError("diffusers' UNet2DModel has one layers_per_block for all levels")
        n = n[0]
    out_ch = (u["out_channels"] or u["in_channels"]) * (2 if u["learn_sigma"] else 1)
    return dict(
        sample_size=size, in_channels=u["in_channels"], out_channels=out_ch,
        block_out_channels=tuple(mc * m for m in mult), layers_per_block=n,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        add_attention=u["mid_attention"], attention_head_dim=mid // heads,
        norm_num_groups=u["groups"], attn_norm_num_groups=u["groups"], norm_eps=1e-5,
        resnet_time_scale_shift="scale_shift", dropout=u["dropout"], act_fn="silu",
        downsample_type="conv", upsample_type="conv", flip_sin_to_cos=False, freq_shift=0,
    )


class DiffusersEps(torch.nn.Module):
    """UNet2DModel behind difflab's interface, model(x_t, t) -> ε̂."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t, return_dict=False)[0]


def build(lib: str, spec: dict) -> torch.nn.Module:
    if lib == "difflab":
        return build_difflab(spec["unet"])
    from diffusers import UNet2DModel

    return DiffusersEps(UNet2DModel(**diffusers_kwargs(spec["unet"], spec["size"])))


# --- the measurements (child processes) -------------------------------------------------------


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def matmul_peak_gflops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def ddim_step(lib: str, model: torch.nn.Module):
    """A function x_t -> x_s that runs one DDIM step (η = 0) with the library's own sampler."""
    if lib == "difflab":
        from difflab import schedules
        from difflab.samplers import ddim

        schedule = schedules.linear(T)
        return lambda x: ddim(model, schedule, x, steps=1, eta=0.0)  # one step, T → 0
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4,
                          beta_end=0.02, clip_sample=False, set_alpha_to_one=False)
    sched.set_timesteps(1)
    t = sched.timesteps[0]

    @torch.inference_mode()
    def step(x: torch.Tensor) -> torch.Tensor:
        return sched.step(model(x, t.expand(x.shape[0])), t, x, eta=0.0, return_dict=False)[0]

    return step


class Workload:
    """One library's model with what one step of ``mode`` needs: ``step()`` runs it on a fixed
    batch; ``flops`` counts it (torch.utils.flop_counter at batch 1, times the batch)."""

    def __init__(self, lib: str, spec: dict, mode: str):
        torch.manual_seed(0)
        self.model = model = build(lib, spec)
        self.params = sum(p.numel() for p in model.parameters())
        C, size = spec["unet"]["in_channels"], spec["size"]
        self.batch = B = spec["batch"] if mode == "train" else SAMPLE_BATCH

        def inputs(b: int) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.randn(b, C, size, size), torch.randint(1, T, (b,))

        if mode == "train":
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

            def run(x: torch.Tensor, t: torch.Tensor) -> None:
                opt.zero_grad(set_to_none=True)
                F.mse_loss(model(x, t), x).backward()  # the target's value does not change the cost
                opt.step()

            count = run
        else:
            model.eval()
            sample = ddim_step(lib, model)

            def run(x: torch.Tensor, t: torch.Tensor) -> None:
                sample(x)

            def count(x: torch.Tensor, t: torch.Tensor) -> None:  # the forward: all the FLOPs
                with torch.inference_mode():
                    model(x, t)

        with FlopCounterMode(display=False) as counter:
            count(*inputs(1))
        self.flops = counter.get_total_flops() * B
        x, t = inputs(B)
        self.step = lambda: run(x, t)


def timed(step) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    w, c = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - w, time.process_time() - c


def measure_pair(spec: dict, modes: list[str], reps: int, first: int) -> dict:
    """Both libraries in this one process, step by step in turn (who goes first alternates), so
    that both see the same load; each after one warm-up step (oneDNN primitives, AdamW state,
    the allocator)."""
    out: dict = dict(matmul_gflops=matmul_peak_gflops(), cells={})
    for mode in modes:
        work = {lib: Workload(lib, spec, mode) for lib in LIBS}
        for w in work.values():
            w.step()
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


def measure_memory(lib: str, spec: dict, mode: str) -> dict:
    """Peak memory of ``mode``'s steps: the rise of this (fresh) process's max RSS over a
    warm-up step and a second step, on top of the model, optimiser and inputs."""
    w = Workload(lib, spec, mode)
    rss0 = max_rss_mib()
    w.step()
    w.step()
    return dict(peak_mib=max_rss_mib() - rss0)


# --- the diffusers environment -----------------------------------------------------------------


def _probe(python: Path) -> tuple[str, str] | None:
    """(torch version, diffusers version) of an interpreter, or None if it lacks either."""
    code = "import torch, diffusers; print(torch.__version__, diffusers.__version__)"
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return tuple(r.stdout.split()[-2:]) if r.returncode == 0 else None  # type: ignore[return-value]


def diffusers_python(venv: Path, spec: str, pip_args: list[str]) -> Path:
    """The interpreter of a virtual environment with diffusers and exactly this torch, made on
    first use. pip may not touch torch once it is in: a constraints file pins it."""
    python = venv / "bin" / "python"
    want = torch.__version__
    if python.exists() and (found := _probe(python)) and found[0] == want:
        return python
    print(f"creating {venv} with torch=={want} and {spec} (about a minute) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(f"torch=={want}\n")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           *pip_args]
    subprocess.run([*pip, f"torch=={want}"], check=True)
    subprocess.run([*pip, "-c", str(constraints), spec], check=True)
    found = _probe(python)
    if not found or found[0] != want:
        raise SystemExit(f"{venv} has torch {found and found[0]}, not {want}: remove it")
    return python


# --- the parent: the processes, then the table -------------------------------------------------


def child(python: Path, args: list[str], threads: int, pythonpath: str | None = None) -> dict:
    """Run one measurement in a fresh interpreter and read its JSON line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               HF_HUB_OFFLINE="1", DIFFUSERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    cmd = [str(python), __file__, "--threads", str(threads), "--child", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def difflab_only_path() -> str:
    """A folder holding only a link to this difflab package, for diffusers' interpreter to
    import it from (the timing runs both libraries in one process) without difflab's
    environment coming along."""
    import difflab

    folder = Path(tempfile.mkdtemp(prefix="difflab-bench-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "difflab").symlink_to(Path(difflab.__file__).resolve().parent)
    return str(folder)


def summarise(name: str, mode: str, rounds: list[dict], memory: dict, peak: float) -> dict:
    """Both libraries' medians over all steps of all rounds, and the ratio diffusers / difflab.

    The ratio is the median over all pairs of steps run back to back (rep k of each library in
    one round), so the load, which moves between processes and minutes, cancels; a ratio of the
    pooled medians would mix rounds run under different loads. ``ratio_rounds``: the same
    median in each round alone, to show its spread."""
    row: dict = dict(name=name, mode=mode)
    for lib in LIBS:
        cells = [r["cells"][f"{mode}/{lib}"] for r in rounds]
        ms = 1e3 * statistics.median(x for c in cells for x in c["wall"])
        gflop = cells[0]["flops"] / 1e9
        row[lib] = dict(
            batch=cells[0]["batch"], params=cells[0]["params"], gflop=gflop, ms=ms,
            cpu_ms=1e3 * statistics.median(x for c in cells for x in c["cpu"]),
            img_s=cells[0]["batch"] / ms * 1e3, peak_mib=memory[f"{name}/{mode}/{lib}"],
            gflops=gflop / (ms / 1e3), util=gflop / (ms / 1e3) / peak)

    def paired(r: dict, clock: str) -> list[float]:
        a, b = r["cells"][f"{mode}/difflab"][clock], r["cells"][f"{mode}/diffusers"][clock]
        return [y / x for x, y in zip(a, b, strict=True)]

    row.update(ratio=statistics.median(q for r in rounds for q in paired(r, "wall")),
               cpu_ratio=statistics.median(q for r in rounds for q in paired(r, "cpu")),
               ratio_rounds=[statistics.median(paired(r, "wall")) for r in rounds])
    return row


def report(rows: list[dict], specs: dict, args, peak: float, versions: dict) -> str:
    lines = [
        f"## difflab U-Net vs diffusers UNet2DModel — "
        f"{platform.processor() or platform.machine()}, torch {versions['torch']}, "
        f"{args.threads} thread(s)",
        "",
        f"difflab {versions['difflab']}, diffusers {versions['diffusers']}; float32 matmul peak "
        f"{peak:.0f} GFLOP/s (best 1024² matmul seen). {args.rounds} rounds, each a fresh "
        f"process that runs both libraries' steps in turn, {args.reps} timed steps each after a "
        f"warm-up. train = forward + MSE backward + fused "
        f"AdamW at the preset's batch; ddim = one DDIM step (η = 0) at batch {SAMPLE_BATCH} "
        f"under inference_mode; ms = medians over all rounds. **ratio = diffusers time / "
        f"difflab time** (> 1: difflab faster), the median over all pairs of steps run back to "
        f"back, so that the load cancels; [range] = that median in each round alone; CPU ratio "
        f"= the same by the process's CPU time. "
        f"peak MiB = rise of max RSS over two steps in a process of its own. GFLOP/step as "
        f"each library's step counts them (difflab's up-sampling convolution does fewer: "
        f"nn/unet_blocks.upsample_conv); util = GFLOP/s over the matmul peak.",
        "",
        "| config | mode | batch | difflab ms | diffusers ms | **ratio** [range] | CPU ratio "
        "| img/s difflab / diffusers | peak MiB difflab / diffusers "
        "| GFLOP/step difflab / diffusers | util difflab / diffusers |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        a, b = r["difflab"], r["diffusers"]
        lo, hi = min(r["ratio_rounds"]), max(r["ratio_rounds"])
        lines.append(
            f"| {r['name']} | {r['mode']} | {a['batch']} | {a['ms']:.1f} | {b['ms']:.1f} "
            f"| **{r['ratio']:.2f}** [{lo:.2f}–{hi:.2f}] | {r['cpu_ratio']:.2f} "
            f"| {a['img_s']:.0f} / {b['img_s']:.0f} | {a['peak_mib']:.0f} / {b['peak_mib']:.0f} "
            f"| {a['gflop']:.2f} / {b['gflop']:.2f} "
            f"| {100 * a['util']:.1f} % / {100 * b['util']:.1f} % |"
        )
    lines += ["", "| config | image | U-Net | difflab params | diffusers params | difference |",
              "| --- | --- | --- | ---: | ---: | ---: |"]
    for name, spec in specs.items():
        r = next(r for r in rows if r["name"] == name)
        a, b = r["difflab"]["params"], r["diffusers"]["params"]
        u = spec["unet"]
        att = ",".join(str(f) for f in u["attention_resolutions"]) or "none"
        shape = (f"{u['model_channels']}×({','.join(map(str, u['channel_mult']))}), "
                 f"{u['num_res_blocks']} res/level, attention at factors {att} + middle, "
                 f"{u['groups']} groups")
        lines.append(f"| {name} | {u['in_channels']}×{spec['size']}×{spec['size']} | {shape} "
                     f"| {a:,} | {b:,} | {100 * (b - a) / a:+.2f} % |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--reps", type=int, default=3, help="timed steps per round (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="processes per config (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="digits configs only, 2 rounds of 2 steps; writes *_quick.* results")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--modes", nargs="+", choices=["train", "ddim"], default=["train", "ddim"])
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                   help=f"diffusers' virtual environment (default {DEFAULT_VENV})")
    p.add_argument("--diffusers-python", type=Path,
                   help="use this interpreter (with torch and diffusers) instead of --venv")
    p.add_argument("--diffusers-spec", default=DIFFUSERS_SPEC,
                   help=f"pip requirement for diffusers (default {DIFFUSERS_SPEC})")
    p.add_argument("--pip-args", default="", help="extra pip arguments, one string")
    p.add_argument("--out", type=Path, help="results stem (default results/unet_vs_diffusers)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        kind, *rest = args.child
        if kind == "pair":  # SPEC MODES REPS FIRST
            spec, modes, reps, first = rest
            r = measure_pair(json.loads(spec), modes.split(","), int(reps), int(first))
        else:  # "memory" LIB MODE SPEC
            lib, mode, spec = rest
            r = measure_memory(lib, json.loads(spec), mode)
        print(json.dumps(r))
        return
    if args.quick:
        args.configs = [c for c in args.configs if c in QUICK_CONFIGS] or QUICK_CONFIGS
        args.rounds, args.reps = 2, 2
    out = args.out or RESULTS / ("unet_vs_diffusers_quick" if args.quick else "unet_vs_diffusers")

    t_start = time.perf_counter()
    py_diffusers = args.diffusers_python or diffusers_python(
        args.venv, args.diffusers_spec, args.pip_args.split())
    found = _probe(py_diffusers)
    if not found or found[0] != torch.__version__:
        raise SystemExit(f"{py_diffusers} has torch {found and found[0]}, not {torch.__version__}")
    from importlib.metadata import version

    versions = dict(torch=torch.__version__, diffusers=found[1], difflab=version("difflab"))
    pythons = {"difflab": Path(sys.executable), "diffusers": py_diffusers}
    both = difflab_only_path()
    specs = {name: config_spec(name) for name in args.configs}

    memory: dict[str, float] = {}  # each library in its own interpreter, a fresh process a cell
    for name, spec in specs.items():
        for mode in args.modes:
            for lib in LIBS:
                memory[f"{name}/{mode}/{lib}"] = child(
                    pythons[lib], ["memory", lib, mode, json.dumps(spec)], args.threads
                )["peak_mib"]
    rounds: dict[str, list[dict]] = {name: [] for name in specs}
    for rnd in range(args.rounds):
        for i, (name, spec) in enumerate(specs.items()):
            r = child(py_diffusers, ["pair", json.dumps(spec), ",".join(args.modes),
                                     str(args.reps), str((rnd + i) % 2)], args.threads, both)
            rounds[name].append(r)
            for mode in args.modes:
                ms = {lib: 1e3 * statistics.median(r["cells"][f"{mode}/{lib}"]["wall"])
                      for lib in LIBS}
                print(f"round {rnd}: {name} {mode}: difflab {ms['difflab']:.1f} ms, diffusers "
                      f"{ms['diffusers']:.1f} ms", file=sys.stderr)
    # the best matmul rate seen: under load one measurement underestimates it
    peak = max(r["matmul_gflops"] for rs in rounds.values() for r in rs)
    rows = [summarise(name, mode, rounds[name], memory, peak)
            for name in specs for mode in args.modes]
    text = report(rows, specs, args, peak, versions)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(dict(
        threads=args.threads, rounds=args.rounds, reps=args.reps, matmul_peak_gflops=peak,
        versions=versions, machine=platform.machine(), seconds=time.perf_counter() - t_start,
        specs=specs, modes=args.modes, memory=memory, rows=rows, raw=rounds,
    ), indent=1) + "\n")
    print(f"\nwrote {out.with_suffix('.md')} and .json "
          f"({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
    for r in rows:
        a, b = r["difflab"]["params"], r["diffusers"]["params"]
        if abs(b - a) > 0.1 * a:
            raise SystemExit(f"{r['name']}: the parameter counts differ by more than 10 %")


if __name__ == "__main__":
    main()
