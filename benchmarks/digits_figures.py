"""The post's Fig. 5, 6 and 8 claims, measured on sklearn digits with the `digits` preset.

- **Fig. 5** (Nichol & Dhariwal 2021): the cosine schedule keeps ᾱ_t away from 0 for longer than
  the linear one. Plots ᾱ_t against t/T for both, and compares FD and bits/dim of the two
  schedules after equal training.
- **Fig. 6**: L_hybrid with a learned Σ_θ (eq 23) gives better bits/dim than L_simple with a
  fixed Σ, on both schedules, after equal training.
- **Fig. 8** (Song et al. 2020, Table 1): FD against the number of sampling steps
  S ∈ {10, 20, 50, 100, 1000} for DDIM η = 0 and DDPM (η = 1, σ² = β̃), on the L_simple linear
  model: DDIM is better at small S.

Every model is trained by the real command, `difflab train --preset digits` plus the variant's
flags and `--steps`, so equal training means equal steps, batch and learning rate. A finished
run directory is reused (delete `--workdir` to retrain), so an interrupted benchmark resumes.

    nice -n 19 .venv/bin/python benchmarks/digits_figures.py            # ~1 h on 2 cores
    nice -n 19 .venv/bin/python benchmarks/digits_figures.py --quick    # smoke test, ~2 min

FD is the Fréchet distance in the committed digits classifier's feature space against the
train split (`difflab.data.fd`); its floor is what the 180 real test images score. FD is biased
upwards by ≈ tr(Σ)/n, so every FD here uses n = 180 samples (the floor's size) and is the mean
over `--draws` independent draws of 180, ± its standard error. Bits/dim are on `--n-nll` test
images, from the full VLB (all T terms, 17 grey levels) and from the probability-flow ODE
(Hutchinson), via `difflab eval RUN --nll`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
DIFFLAB = str(Path(sys.executable).with_name("difflab"))

# name → flags added to `difflab train --preset digits`
VARIANTS = {
    "linear-simple": ["--schedule", "linear"],
    "cosine-simple": ["--schedule", "cosine"],
    "linear-hybrid": ["--schedule", "linear", "--variance", "learned", "--loss", "hybrid"],
    "cosine-hybrid": ["--schedule", "cosine", "--variance", "learned", "--loss", "hybrid"],
}
FIG8_STEPS = (10, 20, 50, 100, 1000)


def train(name: str, steps: int, workdir: Path) -> Path:
    out = workdir / name
    if (out / "metrics.json").exists():
        print(f"[{name}] reusing {out}", flush=True)
        return out
    cmd = [DIFFLAB, "train", "--preset", "digits", *VARIANTS[name], "--steps", str(steps),
           "--out", str(out), "--no-progress", "--overwrite", "--n-eval", "180"]
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    print(f"[{name}] trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def fd_draws(run: Path, sampler: str, steps: int, draws: int, eta: float = 0.0) -> dict:
    """FD of ``draws`` independent sets of 180 samples (one seeded batch, split)."""
    from difflab.build.data import image_shape
    from difflab.data.fd import FDEvaluator
    from difflab.runs.draw import draw
    from difflab.runs.load import load_run

    cfg, model, schedule = load_run(run)
    spacing = "leading" if cfg.schedule == "cosine" else "linspace"  # as eval_spacing="auto"
    x0, _, seconds = draw(model, schedule, (180 * draws, *image_shape(cfg)), sampler=sampler,
                          steps=steps, eta=eta, spacing=spacing, seed=1234)
    fd = FDEvaluator.for_dataset("digits", cfg.image_size)
    vals = [fd.fd(chunk.clamp(-1, 1)) for chunk in x0.split(180)]
    return {"fd": statistics.fmean(vals),
            "fd_se": statistics.stdev(vals) / len(vals) ** 0.5 if len(vals) > 1 else 0.0,
            "fd_floor": fd.floor(), "seconds": seconds}


def nll(run: Path, n: int) -> dict:
    cmd = [DIFFLAB, "eval", str(run), "--nll", "-n", str(n), "--no-progress"]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def plot_alpha_bars(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from difflab import schedules

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, s in (("linear", schedules.linear(1000)), ("cosine", schedules.cosine(1000))):
        t = torch.arange(1, s.T + 1) / s.T
        ax.plot(t, s.alpha_bars, label=name)
    ax.set_xlabel("t / T")
    ax.set_ylabel(r"$\bar\alpha_t$")
    ax.set_title("Fig. 5: ᾱ_t of the linear and cosine schedules (T = 1000)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500, help="training steps of every variant")
    p.add_argument("--draws", type=int, default=3, help="independent FD draws of 180 samples")
    p.add_argument("--n-nll", type=int, default=180, help="test images for bits/dim")
    p.add_argument("--eval-steps", type=int, default=100, help="DDIM steps for the FD of Fig. 5/6")
    p.add_argument("--workdir", type=Path, default=Path("runs/bench-digits"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "digits_figures")
    p.add_argument("--quick", action="store_true", help="smoke test: 30 steps, 1 draw, small S")
    args = p.parse_args()
    fig8_steps = FIG8_STEPS
    if args.quick:
        args.steps, args.draws, args.n_nll, args.eval_steps = 30, 1, 16, 10
        args.workdir, args.out = args.workdir.with_name("bench-digits-quick"), args.out.with_name(
            "digits_figures_quick")
        fig8_steps = (5, 10)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    plot_alpha_bars(args.out.with_name(args.out.name + "_alpha_bars.png"))
    results: dict = {"train_steps": args.steps, "draws": args.draws, "n_nll": args.n_nll,
                     "variants": {}, "fig8": {}}
    cache_path = args.out.with_name(args.out.name + "_partial.json")  # resume an interrupted run
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}

    def cached(key: str, make) -> dict:
        if key not in cache:
            cache[key] = make()
            cache_path.write_text(json.dumps(cache, indent=1))
        print(f"[{key}] {cache[key]}", flush=True)
        return cache[key]

    for name in VARIANTS:
        run = train(name, args.steps, args.workdir)
        row = dict(cached(f"{name} fd", lambda r=run: fd_draws(r, "ddim", args.eval_steps,
                                                                 args.draws)))
        row.update({k: v for k, v in cached(f"{name} nll", lambda r=run: nll(r, args.n_nll))
                    .items() if "bpd" in k})
        row["train_seconds"] = json.loads((run / "metrics.json").read_text())["train_seconds"]
        results["variants"][name] = row
    base = args.workdir / "linear-simple"
    for sampler, eta in (("ddim", 0.0), ("ddpm", 1.0)):
        for s in fig8_steps:
            draws = args.draws if s <= 100 else 1  # S = 1000: one draw of 180 (CPU time)
            results["fig8"][f"{sampler}-{s}"] = cached(
                f"fig8 {sampler} S={s}", lambda s=s, e=eta, d=draws, m=sampler: fd_draws(
                    base, m, s, d, eta=e))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(table(results, fig8_steps))
    print(table(results, fig8_steps))


def table(r: dict, fig8_steps: tuple[int, ...]) -> str:
    lines = [f"Digits, {r['train_steps']} training steps each (the `digits` preset otherwise); "
             f"FD: mean ± s.e. of {r['draws']} draws of 180, DDIM η = 0 100 steps; bits/dim on "
             f"{r['n_nll']} test images.", "",
             "| variant | FD | FD floor | VLB bits/dim | ODE bits/dim | train s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, v in r["variants"].items():
        vlb = v.get("vlb_bpd", float("nan"))
        ode = v.get("ode_bpd", float("nan"))
        lines.append(f"| {name} | {v['fd']:.1f} ± {v['fd_se']:.1f} | {v['fd_floor']:.1f} | "
                     f"{vlb:.3f} | {ode:.3f} | {v['train_seconds']:.0f} |")
    lines += ["", "Fig. 8 on linear-simple: FD (mean ± s.e.) against sampling steps S (S = 1000: "
              "one draw of 180, no s.e.)", "",
              "| sampler | " + " | ".join(f"S = {s}" for s in fig8_steps) + " |",
              "| --- |" + " ---: |" * len(fig8_steps)]
    for sampler, label in (("ddim", "DDIM η = 0"), ("ddpm", "DDPM (η = 1)")):
        cells = [r["fig8"][f"{sampler}-{s}"] for s in fig8_steps]
        lines.append(f"| {label} | " + " | ".join(f"{c['fd']:.1f} ± {c['fd_se']:.1f}"
                                                for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
