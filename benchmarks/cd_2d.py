"""Consistency distillation (Weng eq. 31; Song et al. 2023, Alg. 2) from an EXACT teacher.

The teacher is the exact ε-denoiser of the 2-D mixture of benchmarks/samplers_2d.py (8 Gaussians
on a ring of radius 2, std 0.15, weights ∝ 1..8; difflab.oracle.ExactDenoiser on
schedules.linear(1000)), so the only error left is the distillation's. Two claims of Weng's post:

1. "CD with the Heun solver beats Euler" — Euler vs Heun at N = 18, same seeds and iterations;
2. "smaller N converges faster but to worse samples" — Heun at N ∈ {6, 12, 24, 48}.

Student: ConsistencyModel.from_schedule(MLPDenoiser(2, hidden, depth), linear(1000),
sigma_data = data std), trained by difflab.distill.consistency_distill unchanged (ℓ2, μ = 0.95,
constant lr, batch 256, 20 000 training points). consistency_distill has no callback, but it
appends each step's loss to ``log`` after the optimizer step and the target update: the log
passed here is a list that, every --every steps, evaluates the online model f_θ (one-step and
two-step Alg. 1 samples from one fixed x_T, n = --n) by SWD (difflab.metrics.swd) against one
fixed true sample of the same size. The same x_T and reference serve every config, so config
differences are not blurred by the reference's draw; the two-sample floor (mean of 16 pairs)
says where a perfect sampler sits. At the end a second, independent (x_T, reference) draw is
also scored, to show how much one draw scatters.

    nice -n 5 .venv/bin/python benchmarks/cd_2d.py            # full: 6 configs × 3 seeds
    nice -n 5 .venv/bin/python benchmarks/cd_2d.py --quick    # smoke test, ~10 s

Measured runtime of the full run (defaults: 4000 iterations, lr 3e-3, MLP 64×2, 3 seeds, n 5000,
checkpoints every 250): 532 s in the script, 537 s wall, 1 thread under nice -n 5 on a busy
2-core machine (about 30 s per training run).
Writes benchmarks/results/cd_2d.{md,json,png} (…_quick.* with --quick).

Findings (see the md for the numbers): claim 1 holds — Heun's 1-step SWD ends about half of
Euler's, because Euler's N = 18 ladder is itself biased. Claim 2 holds only in part: N = 48
and 24 are slower than 18 and 12 early on, but N = 12 is no faster than 18, N = 6 fails
outright (its own Heun ladder is 37× the floor), and N = 48 ends worse than 24 at 4000 steps.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch
from samplers_2d import write_results

from difflab import metrics, oracle, schedules
from difflab.distill import ConsistencyModel, consistency_sample
from difflab.distill.consistency import karras_timesteps, sigma_table
from difflab.distill.consistency_training import euler_step, heun_step
from difflab.nn.mlp import MLPDenoiser
from difflab.training.consistency import consistency_distill

MIX = oracle.ring_mixture(8, radius=2.0, std=0.15, weights=torch.arange(1.0, 9.0))
SCHED = schedules.linear(1000)
TEACHER = oracle.ExactDenoiser(MIX, SCHED)
RESULTS = Path(__file__).resolve().parent / "results"
# name -> (solver, N)
CONFIGS = {
    "Euler N=18": (euler_step, 18),
    "Heun N=18": (heun_step, 18),
    "Heun N=6": (heun_step, 6),
    "Heun N=12": (heun_step, 12),
    "Heun N=24": (heun_step, 24),
    "Heun N=48": (heun_step, 48),
}


@torch.no_grad()
def ladder(solver, N: int, x_T: torch.Tensor) -> torch.Tensor:
    """The CD target's fixed point: x_T mapped σ_max → σ_min by the N-level solver ladder of the
    exact teacher, the one-step map a perfectly distilled f_θ would reproduce."""
    ts = karras_timesteps(SCHED, N).flip(0).tolist()  # decreasing
    x = x_T * math.sqrt(1 + float(sigma_table(SCHED)[-1]) ** 2)
    for a, b in zip(ts[:-1], ts[1:], strict=True):
        x = solver(TEACHER, SCHED, x, torch.full((len(x),), a), torch.full((len(x),), b), {})
    return x


def truth(n: int, seed: int) -> torch.Tensor:
    return MIX.sample(n, torch.Generator().manual_seed(10_000 + seed)).float()


class EvalLog(list):
    """The ``log`` of consistency_distill: records each loss and, every ``every`` steps (and at
    step 0 via :meth:`evaluate`), the SWD of one- and two-step samples of the online model."""

    def __init__(self, model, every, x_T, ref):
        super().__init__()
        self.model, self.every, self.x_T, self.ref = model, every, x_T, ref
        self.curve: list[dict] = []

    def evaluate(self, k: int) -> None:
        was = self.model.training
        self.model.eval()
        row = {"iter": k}
        for s in (1, 2):
            x = consistency_sample(self.model, SCHED, self.x_T, s,
                                   torch.Generator().manual_seed(7))
            row[f"swd{s}"] = (metrics.swd(x, self.ref) if torch.isfinite(x).all()
                              else float("nan"))
        self.curve.append(row)
        self.model.train(was)

    def append(self, loss: float) -> None:
        super().append(loss)
        if len(self) % self.every == 0:
            self.evaluate(len(self))


def run_one(solver, N: int, seed: int, args, data, x_T, ref, x_T2, ref2) -> dict:
    torch.manual_seed(seed)
    net = MLPDenoiser(dim=2, hidden=args.hidden, depth=args.depth, t_dim=32)
    f = ConsistencyModel.from_schedule(net, SCHED, sigma_data=float(data.std()))
    log = EvalLog(f, args.every, x_T, ref)
    log.evaluate(0)
    t0 = time.perf_counter()
    consistency_distill(f, TEACHER, SCHED, data, N=N, solver=solver, mu=0.95, iters=args.iters,
                        batch=256, lr=args.lr, generator=torch.Generator().manual_seed(100 + seed),
                        log=log)
    seconds = time.perf_counter() - t0
    final2 = {}
    for s in (1, 2):
        x = consistency_sample(f, SCHED, x_T2, s, torch.Generator().manual_seed(8))
        final2[f"swd{s}"] = metrics.swd(x, ref2)
    losses = list(log)
    tail = max(1, len(losses) // 10)
    last = log.curve[-4:]  # the last four checkpoints: the plateau, less one checkpoint's noise
    plateau = {f"swd{s}": mean([c[f"swd{s}"] for c in last]) for s in (1, 2)}
    return {"seed": seed, "curve": log.curve, "final": log.curve[-1], "final_draw2": final2,
            "plateau": plateau,
            "loss_last10pct": sum(losses[-tail:]) / tail, "seconds": round(seconds, 1)}


def mean(v):
    return sum(v) / len(v)


def markdown(r: dict) -> str:
    fl = r["floor"]
    lines = [f"## Consistency distillation from the exact 8-Gaussian-ring teacher "
             f"({r['iters']} iterations, lr {r['lr']}, MLP {r['hidden']}×{r['depth']}, "
             f"seeds {r['seeds']})", "",
             f"SWD of n = {r['n']} samples of f_θ to a true sample of the same size; the "
             f"two-sample floor is {fl:.4f} (one pair scatters by ±{r['floor_sd']:.4f} sd). "
             "'draw A' is the fixed (x_T, reference) used along training for every config; "
             "'draw B' an independent one, scored once at the end. Values: mean over seeds "
             "(per seed in brackets). 'Teacher ladder': the exact teacher integrated σ_max → σ_min "
             "through the config's N levels with its solver — CD's fixed point, what a perfectly "
             "distilled one-step f_θ would give (same x_T, deterministic).", "",
             "### SWD at the end of training", "",
             "| config | 1-step (draw A) | 2-step (draw A) | 1-step (draw B) | 2-step (draw B) | "
             "1-step / floor | 1-step, mean of last 4 checkpoints | 2-step, same | "
             "teacher ladder (A / B) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, runs in r["configs"].items():
        def cell(get, runs=runs):
            v = [get(x) for x in runs]
            return f"{mean(v):.4f} [" + ", ".join(f"{u:.4f}" for u in v) + "]"
        m1 = mean([x["final"]["swd1"] for x in runs])
        lines.append(f"| {name} | {cell(lambda x: x['final']['swd1'])} | "
                     f"{cell(lambda x: x['final']['swd2'])} | "
                     f"{cell(lambda x: x['final_draw2']['swd1'])} | "
                     f"{cell(lambda x: x['final_draw2']['swd2'])} | {m1 / fl:.2f}× | "
                     f"{cell(lambda x: x['plateau']['swd1'])} | "
                     f"{cell(lambda x: x['plateau']['swd2'])} | "
                     f"{r['ladder'][name]['A']:.4f} / {r['ladder'][name]['B']:.4f} |")
    its = [row["iter"] for row in next(iter(r["configs"].values()))[0]["curve"]]
    thr = (0.3, 0.15, 0.1, 0.06)
    lines += ["", "### Speed: first checkpoint where the seed-mean 1-step SWD (draw A) is ≤ a "
              "threshold ('—': never within the run)", "",
              "| config | " + " | ".join(f"≤ {t}" for t in thr) + " |",
              "| --- |" + " ---: |" * len(thr)]
    for name, runs in r["configs"].items():
        vals = [mean([x["curve"][j]["swd1"] for x in runs]) for j in range(len(its))]
        first = [next((str(i) for i, v in zip(its, vals, strict=True) if v <= t), "—")
                 for t in thr]
        lines.append(f"| {name} | " + " | ".join(first) + " |")
    for key, steps in (("swd1", 1), ("swd2", 2)):
        lines += ["", f"### {steps}-step SWD along training (draw A, mean over seeds)", "",
                  "| config | " + " | ".join(str(i) for i in its) + " |",
                  "| --- |" + " ---: |" * len(its)]
        for name, runs in r["configs"].items():
            vals = [mean([x["curve"][j][key] for x in runs]) for j in range(len(its))]
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("Claim 1: Euler vs Heun, N = 18", ["Euler N=18", "Heun N=18"]),
              ("Claim 2: Heun, N levels", ["Heun N=6", "Heun N=12", "Heun N=18", "Heun N=24",
                                           "Heun N=48"])]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharey="row")
    for row, s in enumerate((1, 2)):
        for ax, (title, names) in zip(axes[row], groups, strict=True):
            for i, name in enumerate(names):
                runs = r["configs"][name]
                its = [c["iter"] for c in runs[0]["curve"]]
                m = [mean([x["curve"][j][f"swd{s}"] for x in runs]) for j in range(len(its))]
                (ln,) = ax.plot(its, m, marker="o", ms=3, label=name, color=f"C{i}")
                for x in runs:
                    ax.plot(its, [c[f"swd{s}"] for c in x["curve"]], color=ln.get_color(),
                            lw=0.6, alpha=0.35)
                if s == 1 and "ladder" in r:  # the target's own one-step map (draw A)
                    ax.axhline(r["ladder"][name]["A"], color=ln.get_color(), ls=":", lw=1.2)
            ax.axhline(r["floor"], color="k", ls="--", lw=1, label="two-sample floor")
            ax.set(yscale="log", xlabel="iteration", title=f"{title} — {s}-step samples")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        axes[row][0].set_ylabel(f"SWD of {s}-step samples (thin: seeds)")
    axes[0][0].text(0.02, 0.02, "dotted: the exact teacher's N-level solver ladder (CD's "
                    "fixed point)", transform=axes[0][0].transAxes, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 100 iters, 1 seed, n 1000")
    p.add_argument("--iters", type=int, default=4000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.every, args.seeds, args.n = 100, 50, 1, 1000
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    data = truth(20_000, 0)
    x_T = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(1))
    ref = truth(args.n, 1)
    x_T2 = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(2))
    ref2 = truth(args.n, 2)
    pairs = [metrics.swd(truth(args.n, 100 + 2 * i), truth(args.n, 101 + 2 * i))
             for i in range(16)]
    r = {"iters": args.iters, "every": args.every, "lr": args.lr, "hidden": args.hidden,
         "depth": args.depth, "n": args.n, "seeds": list(range(args.seeds)),
         "floor": mean(pairs), "floor_sd": torch.tensor(pairs).std().item(), "configs": {}}
    r["ladder"] = {}
    for name, (solver, N) in CONFIGS.items():
        r["ladder"][name] = {"A": metrics.swd(ladder(solver, N, x_T), ref),
                             "B": metrics.swd(ladder(solver, N, x_T2), ref2)}
        r["configs"][name] = []
        for seed in range(args.seeds):
            res = run_one(solver, N, seed, args, data, x_T, ref, x_T2, ref2)
            r["configs"][name].append(res)
            print(f"{name:11s} seed {seed}: 1-step {res['final']['swd1']:.4f} "
                  f"2-step {res['final']['swd2']:.4f} (B: {res['final_draw2']['swd1']:.4f}, "
                  f"{res['final_draw2']['swd2']:.4f}) {res['seconds']} s", flush=True)
    r.update(seconds=round(time.perf_counter() - t_start, 1), torch=torch.__version__,
             machine=platform.machine())
    md = markdown(r) + f"\nTotal time {r['seconds']} s (1 thread, nice -n 5, busy 2-core box).\n"
    print("\n" + md)
    write_results(args.out / ("cd_2d_quick" if args.quick else "cd_2d"), md, r, plot)


if __name__ == "__main__":
    main()
