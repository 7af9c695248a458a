"""Sample quality versus model evaluations (NFE) for DDPM, DDIM (η = 0, 1), Heun,
DPM-Solver++ (2M, 3M) and EDM Heun.

The model is the exact ε-denoiser of a known 2-D mixture (difflab.oracle), so every difference
below is the sampler's discretisation error, not training error. The target is the one of
tests/test_samplers.py: 8 Gaussians on a ring of radius 2, std 0.15, weights ∝ 1..8.

For each schedule (linear, cosine; T = 1000) and each budget of model evaluations it reports
- SWD: sliced W1 (difflab.metrics.swd) between n samples and an independent true sample of
  the same size, beside the two-sample noise floor (metrics.swd_floor, same n): a perfect
  sampler sits at about 1× the floor;
- the largest mode-weight error max_k |ŵ_k − π_k| (nearest-mean assignment), beside that of
  true samples of the same size;
- the per-mode standard deviation (truth 0.15): < 0.15 is over-sharp, > 0.15 over-noisy.
On this target one draw of n = 5000 scatters by about ±40 % (sd) around the floor (the multinomial
noise of the unequal mode weights, moved over distances ~1.5, dominates SWD), so every number
is a mean over --draws independent draws (one batch of draws·n samples, split).

Budgets: DDPM and DDIM take one evaluation per step (steps = NFE); Heun takes 2S − 1 for S steps
(S = (NFE + 1) // 2), and one fewer for each step whose σ ratio exceeds HEUN_MAX_RATIO, which
falls back to Euler (difflab.samplers.ode: the cosine schedule's first step out of its clipped
tail, and the 3-step grids). DPM-Solver++ takes one evaluation per step (steps = NFE, its default
"trailing" grid); EDM Heun 2N − 1 for N = (NFE + 1) // 2 σ steps of the Karras schedule. The
evaluations are counted; the plot and JSON use the counts.
Every cell starts from the same x_T (seed 0) and noise seed 1.

    python benchmarks/samplers_2d.py            # full: n = 5000, 4 draws; 3-5 min on 1 thread
    python benchmarks/samplers_2d.py --quick    # smoke test: n = 1000, 2 draws, three budgets

Writes benchmarks/results/samplers_2d.{md,json,png} (…_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from difflab import metrics, oracle, samplers, schedules

MIX = oracle.ring_mixture(8, radius=2.0, std=0.15, weights=torch.arange(1.0, 9.0))
NFES = (5, 10, 20, 50, 100, 1000)
QUICK_NFES = (5, 20, 100)
SCHEDULES = {"linear": schedules.linear, "cosine": schedules.cosine}
# name -> f(model, schedule, x_T, nfe, generator): each spends (at most) nfe model evaluations
SAMPLERS = {
    "DDPM (β̃)": lambda m, s, x, nfe, g: samplers.ddpm(m, s, x, nfe, g, variance="beta_tilde"),
    "DDIM η=0": lambda m, s, x, nfe, g: samplers.ddim(m, s, x, nfe, g, eta=0.0),
    "DDIM η=1": lambda m, s, x, nfe, g: samplers.ddim(m, s, x, nfe, g, eta=1.0),
    "Heun": lambda m, s, x, nfe, g: samplers.heun(m, s, x, (nfe + 1) // 2, g),
    "DPM++ 2M": lambda m, s, x, nfe, g: samplers.dpm_solver_pp(m, s, x, nfe, g, order=2),
    "DPM++ 3M": lambda m, s, x, nfe, g: samplers.dpm_solver_pp(m, s, x, nfe, g, order=3),
    "EDM Heun": lambda m, s, x, nfe, g: samplers.edm_heun(m, s, x, (nfe + 1) // 2, g),
}
RESULTS = Path(__file__).resolve().parent / "results"


class Counted:
    """Wraps an ε-model and counts its evaluations (each call is one batched NFE)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x_t, t, **cond):
        self.calls += 1
        return self.model(x_t, t, **cond)


def truth(n: int, seed: int) -> torch.Tensor:
    return MIX.sample(n, torch.Generator().manual_seed(10_000 + seed))


def max_weight_error(x: torch.Tensor) -> float:
    return (metrics.mode_weights(x, MIX.means) - MIX.weights).abs().max().item()


def mode_std(x: torch.Tensor) -> float:
    """Root-mean-square distance to the nearest mode's mean, per coordinate."""
    k = MIX.posterior(x).argmax(1)
    return ((x.double() - MIX.means[k]).pow(2).sum(1).mean() / 2).sqrt().item()


def mean(v: list[float]) -> float:
    return sum(v) / len(v)


def run(n: int, nfes: tuple[int, ...], draws: int, repeats: int) -> dict:
    """Every statistic of a cell is a mean over ``draws`` independent draws of n samples."""
    # one true reference per draw; seeds 0 … 2·repeats − 1 are the floor's
    refs = [truth(n, 1000 + r) for r in range(draws)]
    pairs = [metrics.swd(truth(n, 2 * r), truth(n, 2 * r + 1)) for r in range(repeats)]
    floor = {  # the data do not depend on the schedule: one floor serves both
        "floor": metrics.swd_floor(truth, n, repeats=repeats),  # = mean(pairs)
        "floor_sd": torch.tensor(pairs).std().item(),  # of a single draw
        "weight_err_true": mean([max_weight_error(x) for x in refs]),
    }
    out = {"n": n, "draws": draws, "nfes": list(nfes), "floor_repeats": repeats,
           "schedules": {}}
    for sname, make in SCHEDULES.items():
        sched = make(T=1000)
        res = {**floor, "samplers": {}}
        for name, sample in SAMPLERS.items():
            rows = []
            for nfe in nfes:
                model = Counted(oracle.ExactDenoiser(MIX, sched))
                x_T = torch.randn(draws * n, 2, generator=torch.Generator().manual_seed(0))
                t0 = time.perf_counter()
                xs = sample(model, sched, x_T, nfe, torch.Generator().manual_seed(1)).split(n)
                seconds = time.perf_counter() - t0
                swds = [metrics.swd(x, ref) if torch.isfinite(x).all() else float("nan")
                        for x, ref in zip(xs, refs, strict=True)]
                d = mean(swds)
                rows.append({"nfe": nfe, "nfe_counted": model.calls, "swd": d,
                             "swd_over_floor": d / floor["floor"], "swd_draws": swds,
                             "max_weight_err": mean([max_weight_error(x) for x in xs]),
                             "mode_std": mean([mode_std(x) for x in xs]),
                             "seconds": round(seconds, 3)})
                print(f"  {sname:6s} {name:9s} NFE {nfe:4d} ({model.calls:4d}): SWD {d:.4f} "
                      f"({d / floor['floor']:.2f}× floor)  {seconds:.1f} s", flush=True)
            res["samplers"][name] = rows
        out["schedules"][sname] = res
    return out


def markdown(r: dict) -> str:
    head = "| schedule | sampler | " + " | ".join(f"NFE {k}" for k in r["nfes"]) + " |"
    rule = "| --- | --- |" + " ---: |" * len(r["nfes"])

    def table(title: str, cell, extra) -> list[str]:
        lines = [f"### {title}", "", head, rule]
        for sname, res in r["schedules"].items():
            for name, rows in res["samplers"].items():
                lines.append(f"| {sname} | {name} | " + " | ".join(map(cell, rows)) + " |")
            lines.append(f"| {sname} | *{extra[0]}* | " + " | ".join([extra[1](res)] *
                                                                     len(r["nfes"])) + " |")
        return lines + [""]

    lines = [f"## Samplers on the exact 8-Gaussian ring: n = {r['n']}, T = 1000", ""]
    lines += table("SWD to an independent true sample (× the two-sample floor)",
                   lambda w: f"{w['swd']:.4f} ({w['swd_over_floor']:.2f}×)",
                   ("two-sample floor", lambda s: f"{s['floor']:.4f}"))
    lines += table("Largest mode-weight error max_k |ŵ_k − π_k|",
                   lambda w: f"{w['max_weight_err']:.4f}",
                   ("true samples", lambda s: f"{s['weight_err_true']:.4f}"))
    lines += table("Per-mode standard deviation (truth 0.15)",
                   lambda w: f"{w['mode_std']:.4f}", ("true value", lambda s: "0.1500"))
    heun = "; ".join(f"{s} " + ", ".join(str(w["nfe_counted"]) for w in v["samplers"]["Heun"])
                     for s, v in r["schedules"].items())
    dpm = "; ".join(f"{s} " + ", ".join(str(w["nfe_counted"]) for w in v["samplers"]["DPM++ 2M"])
                    for s, v in r["schedules"].items())
    edm = "; ".join(f"{s} " + ", ".join(str(w["nfe_counted"]) for w in v["samplers"]["EDM Heun"])
                    for s, v in r["schedules"].items())
    res, k = next(iter(r["schedules"].values())), r["draws"]
    lines.append(f"Each cell is a mean over {k} independent draws of n samples, each against its "
                 f"own true sample. The floor is the mean of {r['floor_repeats']} two-sample "
                 f"distances; one draw scatters by ±{res['floor_sd']:.4f} (sd) around it, a mean "
                 f"of {k} by ±{res['floor_sd'] / k**0.5:.4f}. DDPM and DDIM spend NFE "
                 "evaluations; Heun 2S − 1 on S = (NFE + 1) // 2 steps, less one per step that "
                 f"falls back to Euler (counted: {heun}). DPM++ spends NFE evaluations, at most "
                 f"one per timestep above its λ_min clip (counted: {dpm}); EDM Heun 2N − 1 on "
                 f"N = (NFE + 1) // 2 σ steps (counted: {edm}).")
    return "\n".join(lines + target(r)) + "\n"


def target(r: dict) -> list[str]:
    """Issue 5's target: DPM-Solver++ at 10 NFE within 1.25× of DDPM-1000's SWD."""
    if not {10, 1000} <= set(r["nfes"]):
        return []
    lines = ["", "### Target: DPM-Solver++ at 10 NFE within 1.25× of DDPM-1000's SWD", "",
             "| schedule | sampler | SWD at 10 NFE | DDPM (β̃) at 1000 | ratio | met |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for sname, res in r["schedules"].items():
        ddpm = res["samplers"]["DDPM (β̃)"][r["nfes"].index(1000)]["swd"]
        for name in ("DPM++ 2M", "DPM++ 3M"):
            d = res["samplers"][name][r["nfes"].index(10)]["swd"]
            lines.append(f"| {sname} | {name} | {d:.4f} | {ddpm:.4f} | {d / ddpm:.2f} | "
                         f"{'yes' if d <= 1.25 * ddpm else 'no'} |")
    return lines


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(SAMPLERS)
    fig, axes = plt.subplots(1, len(r["schedules"]), figsize=(11, 4.5), sharey=True)
    for ax, (sname, res) in zip(axes, r["schedules"].items(), strict=True):
        # DDIM η=1 is DDPM (β̃) drawn with the same noise: dashed and small, to show both
        styles = [("o", "-", 8), ("s", "-", 6), ("D", "--", 4), ("^", "-", 6), ("v", "-", 6),
                  ("P", ":", 6), ("X", "-", 6)]
        for name, (marker, ls, size) in zip(names, styles, strict=True):
            rows = res["samplers"][name]
            ax.plot([w["nfe_counted"] for w in rows], [w["swd"] for w in rows],
                    marker=marker, ls=ls, ms=size, label=name)
        ax.axhline(res["floor"], color="k", ls="--", lw=1, label="two-sample floor")
        se = res["floor_sd"] / r["draws"] ** 0.5  # noise of a mean of `draws` draws
        ax.axhspan(res["floor"] - 2 * se, res["floor"] + 2 * se, color="k", alpha=0.1, lw=0,
                   label=f"floor ± 2 s.e. ({r['draws']} draws)")
        ax.set(xscale="log", yscale="log", xlabel="model evaluations (NFE)",
               title=f"{sname} schedule, T = 1000, n = {r['n']}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("sliced W1 to true samples")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=None, help="samples per run (default 5000; quick 1000)")
    p.add_argument("--quick", action="store_true", help=f"smoke test: n = 1000, NFE {QUICK_NFES}")
    p.add_argument("--draws", type=int, default=None,
                   help="independent draws of n samples averaged per cell (default 4; quick 2)")
    p.add_argument("--repeats", type=int, default=16,
                   help="two-sample pairs averaged for the noise floor (default 16)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.n or (1000 if args.quick else 5000)
    nfes = QUICK_NFES if args.quick else NFES

    t0 = time.perf_counter()
    r = run(n, nfes, args.draws or (2 if args.quick else 4), args.repeats)
    r.update(seconds=round(time.perf_counter() - t0, 1), torch=torch.__version__,
             threads=args.threads, machine=platform.machine())
    md = markdown(r) + f"\nTotal time {r['seconds']} s ({args.threads} thread(s)).\n"
    print("\n" + md)

    write_results(args.out / ("samplers_2d_quick" if args.quick else "samplers_2d"), md, r, plot)


def write_results(stem: Path, md: str, r: dict, plot_fn) -> None:
    """STEM.md (the table), STEM.json (every number) and STEM.png (``plot_fn(r, path)``)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(md, encoding="utf-8")
    stem.with_suffix(".json").write_text(json.dumps(r, indent=1, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    plot_fn(r, stem.with_suffix(".png"))
    print(f"wrote {stem}.{{md,json,png}}")


if __name__ == "__main__":
    main()
