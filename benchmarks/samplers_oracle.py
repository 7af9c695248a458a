"""Fast samplers on six exact targets: the best chosen on three, checked on three held out.

Every model is the exact ε-denoiser of a known Gaussian mixture (difflab.oracle), so every error
below is the sampler's discretisation error. Six targets (T = 1000, linear and cosine schedules):

  tuning   ring8-2d      8 isotropic modes on a ring, std 0.15, weights ∝ 1..8 (the tests' ring)
           aniso-2d      4 full-covariance modes, thin (std 0.03) × wide (std 0.8), weights 4:3:2:1
           aniso-16d     4 full-covariance modes in 16-D, eigenvalues 0.003-0.6, weights 5:3:1.5:0.5
  held-out five-3d       5 isotropic modes in 3-D, weights 0.4-0.05, stds 0.05-0.5 (issue #17's)
           farlight-2d   3 anisotropic modes and a light one (2 %) 12 away, std 0.1
           aniso-32d     5 full-covariance modes in 32-D, one far off (3 %), eigenvalues 0.002-1

Two metrics on n samples from one x_T (seed 0):
- ``swd``: sliced W1 (difflab.metrics.swd) to an independent true sample of the same size;
- ``mode``: Σ_k |ŵ_k − π_k| + Σ_k π_k ‖Ĉ_k − Σ_k‖_F / ‖Σ_k‖_F, the mode weights and the
  per-mode covariance (each sample assigned to its most probable component).
Both have a floor (what a true sample scores), printed beside them; "× DDPM" divides by
DDPM-1000's (ancestral, β̃, every step) score from the same x_T.

Samplers (one evaluation per step: steps = NFE): DDIM (η = 0, its default linspace grid),
DPM-Solver++ (order 2, 3), UniPC (order 2, 3 × bh2, and bh1 on logsnr) and SDE-DPM-Solver++ 2M
(noise seeded the same in every cell), each on the grids of ``GRIDS`` (dpm_solver.dpm_timesteps:
trailing, logsnr, karras, auto, angle, "blend" with weights 0.3, 0.5, 0.7, 0.85, and
"capped-blend"; no karras for the SDE); see :func:`configs`. The blend weight is one constant of
the library, so it is chosen first, over every configuration that uses it; then each sampler's
best configuration is the one with the lowest geometric mean of its error ÷ DDIM's at the same
NFE over the tuning targets, both schedules, both metrics and NFE 5, 10, 20; the held-out
targets are then scored with it and with the sampler's default (``DEFAULT``). Exact denoisers
have no error of their own, so this benchmark cannot see how a grid carries a trained network's
error: benchmarks/solver_error_trained.py does, and it is why no default is "blend" although it
wins here, and why UniPC's "auto" is "capped-blend" from 10 steps on (the notes of
difflab/samplers/dpm_solver.py). At n = 10,000 a true sample's own error is a large part of
DDIM's at 20 NFE, so the held-out ratios are compressed and move with x_T: issue #17's goals are
measured again by benchmarks/samplers_heldout.py at n = 100,000 over three x_T's.

    python benchmarks/samplers_oracle.py --jobs 2   # n = 10000; ~25 min on two cores
    python benchmarks/samplers_oracle.py --quick    # smoke test: n = 2000, two targets, NFE 10
    python benchmarks/samplers_oracle.py --reuse benchmarks/results/samplers_oracle_round1.json
                                                    # recompute only the cells not in it

(The committed results reuse the earlier runs' cells; the angle and blend cells took 381 s
with ``--jobs 2``, the capped-blend cells and UniPC's "auto" ones, recomputed when it changed,
160 s.)

Writes benchmarks/results/samplers_oracle{,_quick}.{md,json}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import platform
import time
from pathlib import Path

import torch

from difflab import metrics, oracle, samplers, schedules
from difflab.samplers.dpm_solver import auto_spacing, dpm_timesteps

RESULTS = Path(__file__).resolve().parent / "results"
NFES = (5, 10, 20, 50)
TUNE_NFES = (5, 10, 20)
SCHEDULES = {"linear": schedules.linear, "cosine": schedules.cosine}
TUNING, HELD_OUT = ("ring8-2d", "aniso-2d", "aniso-16d"), ("five-3d", "farlight-2d", "aniso-32d")


def _rot(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def _cov2(theta: float, s_thin: float, s_wide: float) -> torch.Tensor:
    R = _rot(theta)
    return R @ torch.diag(torch.tensor([s_wide**2, s_thin**2], dtype=torch.float64)) @ R.T


def random_covs(K: int, D: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    """K covariances with eigenvalues log-uniform in [lo, hi] and random eigenvectors."""
    out = []
    for _ in range(K):
        Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
        lam = torch.exp(torch.empty(D, dtype=torch.float64).uniform_(math.log(lo), math.log(hi),
                                                                      generator=g))
        out.append(Q @ torch.diag(lam) @ Q.T)
    return torch.stack(out)


def targets() -> dict[str, oracle.FullCovMixture]:
    g = torch.Generator().manual_seed(17)
    ring = oracle.ring_mixture(8, radius=2.0, std=0.15, weights=torch.arange(1.0, 9.0))
    out = {"ring8-2d": oracle.FullCovMixture(ring.means, 0.15**2 * torch.eye(2).expand(8, 2, 2),
                                             ring.weights)}
    out["aniso-2d"] = oracle.FullCovMixture(
        torch.tensor([[-1.5, -1.0], [1.5, -1.0], [0.0, 1.5], [0.0, -0.2]]),
        torch.stack([_cov2(0.3, 0.03, 0.8), _cov2(2.0, 0.03, 0.6), _cov2(0.0, 0.2, 0.3),
                     _cov2(1.2, 0.05, 0.05)]), torch.tensor([4.0, 3.0, 2.0, 1.0]))
    m16 = 2.5 * torch.randn(4, 16, generator=g, dtype=torch.float64)
    out["aniso-16d"] = oracle.FullCovMixture(m16, random_covs(4, 16, 0.003, 0.6, g),
                                             torch.tensor([5.0, 3.0, 1.5, 0.5]))
    means3 = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.5, -1.0], [-1.5, 1.5, 0.5],
                           [0.5, -2.0, 1.5], [-1.0, -1.0, -2.0]], dtype=torch.float64)
    stds3 = torch.tensor([0.5, 0.05, 0.2, 0.1, 0.3], dtype=torch.float64)
    out["five-3d"] = oracle.FullCovMixture(
        means3, stds3[:, None, None] ** 2 * torch.eye(3, dtype=torch.float64),
        torch.tensor([0.4, 0.25, 0.15, 0.15, 0.05]))
    out["farlight-2d"] = oracle.FullCovMixture(
        torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.2], [12.0, 0.0]]),
        torch.stack([_cov2(0.5, 0.05, 0.5), _cov2(-0.7, 0.1, 0.4), _cov2(0.0, 0.3, 0.3),
                     _cov2(0.0, 0.1, 0.1)]), torch.tensor([0.45, 0.33, 0.20, 0.02]))
    m32 = 2.0 * torch.randn(5, 32, generator=g, dtype=torch.float64)
    m32[4] = m32[:4].mean(0) + 10.0 * torch.nn.functional.normalize(
        torch.randn(32, generator=g, dtype=torch.float64), dim=0)
    out["aniso-32d"] = oracle.FullCovMixture(m32, random_covs(5, 32, 0.002, 1.0, g),
                                             torch.tensor([0.35, 0.3, 0.2, 0.12, 0.03]))
    return out


def mode_error(mix: oracle.FullCovMixture, x: torch.Tensor) -> float:
    """Σ_k |ŵ_k − π_k| + Σ_k π_k ‖Ĉ_k − Σ_k‖_F / ‖Σ_k‖_F (posterior-argmax assignment)."""
    x = x.double()
    if not torch.isfinite(x).all():
        return math.inf
    k = mix.posterior(x).argmax(1)
    K = mix.weights.numel()
    w = torch.bincount(k, minlength=K).double() / x.shape[0]
    err = (w - mix.weights).abs().sum().item()
    for j in range(K):
        xj = x[k == j]
        if xj.shape[0] < 2:
            err += mix.weights[j].item()
            continue
        C = torch.cov(xj.T).reshape(mix.dim, mix.dim)
        err += mix.weights[j].item() * ((C - mix.covs[j]).norm() / mix.covs[j].norm()).item()
    return err


def configs(schedule_name: str) -> dict[str, tuple]:
    """name → (sampler, kwargs); the candidates the best is chosen from. (Round 1,
    results/samplers_oracle_round1.md, also tried DPM-Solver++ without the λ clip on the cosine
    schedule, worse or equal everywhere, and UniPC's bh1 on every grid: worse than bh2 but on
    the logsnr grid, which is kept.)"""
    out = {"ddim": (samplers.ddim, {})}
    for order, spacing in itertools.product((2, 3), GRIDS):
        out[f"dpm++ {order}M {spacing}"] = (samplers.dpm_solver_pp,
                                            {"order": order, **grid_kw(spacing)})
    for order, variant, spacing in [(o, "bh2", g) for o in (2, 3) for g in GRIDS] + \
            [(2, "bh1", "logsnr"), (3, "bh1", "logsnr")]:
        out[f"unipc {order} {variant} {spacing}"] = (
            samplers.unipc, {"order": order, "variant": variant, **grid_kw(spacing)})
    for spacing in GRIDS:  # stochastic: seeded afresh in each cell
        if spacing != "karras":
            out[f"dpm++sde 2M {spacing}"] = (samplers.dpm_solver_pp_sde,
                                             {"order": 2, **grid_kw(spacing), "seed": 4})
    return out


# each sampler's default, shown beside the configuration that is best on these exact denoisers
# (no default is "blend": it fails on trained networks, benchmarks/solver_error_trained.py; UniPC's
# "auto" is "capped-blend" from 10 steps on)
DEFAULT = {"dpm++": "dpm++ 2M auto", "unipc": "unipc 2 bh2 auto", "dpm++sde": "dpm++sde 2M auto"}
# the grids of dpm_timesteps tried; "blend.5" is "blend" with w = 0.5 (BLEND is the chosen one)
GRIDS = ("trailing", "logsnr", "karras", "auto", "angle", "blend.3", "blend.5", "blend.7",
         "blend.85", "capped-blend")


def grid_kw(name: str) -> dict:
    """A grid's sampler keywords: {"spacing": name}, or for "blend.W" {"spacing": "blend",
    "blend": 0.W} (turned into an explicit list of timesteps by :func:`sample_cell`)."""
    if name.startswith("blend."):
        return {"spacing": "blend", "blend": float("0." + name.split(".")[1])}
    return {"spacing": name}


def sample_cell(fn, model, sched, x_T, nfe: int, kw: dict) -> torch.Tensor:
    """One cell's samples: ``fn`` at ``nfe`` steps with ``kw`` (a "seed" becomes a generator;
    a "blend" weight becomes the explicit timesteps of that grid)."""
    args = dict(kw)
    if "seed" in args:
        args["generator"] = torch.Generator().manual_seed(args.pop("seed"))
    steps = nfe
    if "blend" in args:
        steps = dpm_timesteps(sched, nfe, args.pop("spacing"), blend=args.pop("blend")).tolist()
    return fn(model, sched, x_T, steps, **args)


def family(name: str) -> str:
    return name.split()[0]


def score_cell(mix, x, truth) -> dict[str, float]:
    ok = bool(torch.isfinite(x).all())
    return {"swd": metrics.swd(x, truth) if ok else math.inf, "mode": mode_error(mix, x)}


def run(n: int, quick: bool, reuse: dict | None = None, jobs: int = 1) -> dict:
    """Every cell; those in ``reuse`` (an earlier run's results at the same n: the cells are
    deterministic, same x_T and exact model) are copied instead of recomputed. ``jobs``
    processes take a target each (one thread apiece)."""
    names = ("ring8-2d", "five-3d") if quick else TUNING + HELD_OUT
    nfes = (10,) if quick else NFES
    olds = [reuse["targets"].get(t, {}) if reuse is not None and reuse.get("n") == n else {}
            for t in names]
    work = [(t, n, nfes, old) for t, old in zip(names, olds, strict=True)]
    if jobs > 1:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            done = pool.starmap(run_target, work, chunksize=1)
    else:
        done = [run_target(*w) for w in work]
    return {"n": n, "nfes": list(nfes), "targets": dict(zip(names, done, strict=True))}


def run_target(tname: str, n: int, nfes, old_target: dict) -> dict:
    """One target's floor and cells, both schedules; cells in ``old_target`` are copied."""
    torch.set_num_threads(1)
    mix = targets()[tname]
    truth = mix.sample(n, torch.Generator().manual_seed(1))
    floor = score_cell(mix, mix.sample(n, torch.Generator().manual_seed(2)), truth)
    x_T = torch.randn(n, mix.dim, generator=torch.Generator().manual_seed(0))
    per_sched = {}
    for sname, make in SCHEDULES.items():
        sched = make(1000)
        model = oracle.ExactDenoiser(mix, sched)
        t0 = time.perf_counter()
        old = old_target.get("schedules", {}).get(sname, {})
        if "ddpm-1000" in old:
            cells = {"ddpm-1000": old["ddpm-1000"]}
        else:
            ref = samplers.ddpm(model, sched, x_T, None, torch.Generator().manual_seed(3))
            cells = {"ddpm-1000": score_cell(mix, ref, truth)}
        autos = []
        for cname, (fn, kw) in configs(sname).items():
            if kw.get("spacing") == "auto":
                autos.append(cname)  # copied below from the grid it stands for
                continue
            for nfe in nfes:
                key = f"{cname} @{nfe}"
                cells[key] = old[key] if key in old else score_cell(
                    mix, sample_cell(fn, model, sched, x_T, nfe, kw), truth)
        for cname in autos:  # never reused: what "auto" stands for changes with the defaults
            for nfe in nfes:
                grid = auto_spacing(nfe, family(cname))
                cells[f"{cname} @{nfe}"] = cells[f"{cname.removesuffix('auto')}{grid} @{nfe}"]
        per_sched[sname] = cells
        print(f"{tname:12s} {sname:6s} {time.perf_counter() - t0:6.1f}s  ddpm-1000 "
              f"swd {cells['ddpm-1000']['swd']:.4f} mode {cells['ddpm-1000']['mode']:.4f}"
              f"  floor swd {floor['swd']:.4f} mode {floor['mode']:.4f}", flush=True)
    return {"floor": floor, "schedules": per_sched}


def choose_defaults(res: dict) -> dict[str, dict[str, str]]:
    """Per family and schedule, the configuration with the lowest geometric mean of error ÷
    DDIM's over the tuning targets, both metrics and NFE 5, 10, 20. The "blend" grid's weight
    is one constant shared by the three samplers (dpm_solver.BLEND), so it is chosen first:
    the "blend.W" whose configurations (every family and order) have the lowest geometric mean
    together; the other weights then drop out of the choice. ``best["blend"]`` names it."""
    tune = [t for t in TUNING if t in res["targets"]]
    nfes = [n for n in TUNE_NFES if n in res["nfes"]]
    logs: dict[str, dict[str, list[float]]] = {s: {} for s in SCHEDULES}  # sched → cname → logs
    for sname, t in itertools.product(SCHEDULES, tune):
        cells = res["targets"][t]["schedules"][sname]
        for cname in configs(sname):
            for nfe, m in itertools.product(nfes, ("swd", "mode")):
                r = cells[f"{cname} @{nfe}"][m] / cells[f"ddim @{nfe}"][m]
                logs[sname].setdefault(cname, []).append(math.log(r) if math.isfinite(r) else 10)
    logs["both"] = {c: logs["linear"][c] + logs["cosine"][c] for c in logs["linear"]}

    def gmean(values: list[float]) -> float:
        return math.exp(sum(values) / len(values))

    weights = {g: gmean([v for c, ls in logs["both"].items() if c.endswith(" " + g) for v in ls])
               for g in GRIDS if g.startswith("blend.")}
    blend = min(weights, key=weights.get)
    best: dict[str, dict] = {"blend": {"grid": blend, "scores": weights}}
    for key, per in logs.items():
        for cname, values in per.items():
            if "blend." in cname and not cname.endswith(" " + blend):
                continue
            fam, g = family(cname), gmean(values)
            if g < best.get(fam, {}).get(key + "_score", math.inf):
                best.setdefault(fam, {})[key] = cname
                best[fam][key + "_score"] = g
    return best


def gmean_ratio(res: dict, cname: str, names, nfes, scheds=tuple(SCHEDULES)) -> float:
    """Geometric mean of ``cname``'s error ÷ DDIM's over targets ``names``, schedules
    ``scheds``, both metrics and ``nfes`` (NaN when none of those cells exist)."""
    logs = []
    for t, sname, nfe, m in itertools.product(names, scheds, nfes, ("swd", "mode")):
        c = res["targets"].get(t, {}).get("schedules", {}).get(sname, {})
        if f"{cname} @{nfe}" in c:
            r = c[f"{cname} @{nfe}"][m] / c[f"ddim @{nfe}"][m]
            logs.append(math.log(r) if math.isfinite(r) else 10)
    return math.exp(sum(logs) / len(logs)) if logs else math.nan


def from_ten_steps(res: dict) -> list[str]:
    """The grids where the defaults choose among them: NFE 10 and 20 ("auto" is "trailing"
    below 10 steps), tuning and held-out targets apart, for the second-order solvers."""
    nfes = [n for n in (10, 20) if n in res["nfes"]]
    lines = ["", "### From 10 steps on: geometric mean of error ÷ DDIM over NFE "
             f"{', '.join(map(str, nfes))}, both schedules and both metrics", "",
             "| configuration | tuning | held out |", "| --- | ---: | ---: |"]
    for cname in configs("linear"):
        if " 2M " in cname or cname.startswith("unipc 2 bh2"):
            lines.append(f"| {cname} | {gmean_ratio(res, cname, TUNING, nfes):.3f} | "
                         f"{gmean_ratio(res, cname, HELD_OUT, nfes):.3f} |")
    return lines


def report(res: dict, best: dict, seconds: float, quick: bool) -> str:
    nfes = res["nfes"]
    lines = ["## Fast samplers on exact Gaussian-mixture targets (benchmarks/samplers_oracle.py)",
             "",
             f"n = {res['n']} samples per cell, one x_T (seed 0); {seconds:.0f} s "
             f"{'(only the cells not reused from --reuse) ' if res.get('reused') else ''}on "
             f"{res.get('jobs', 1)} process(es) of 1 thread, "
             f"{platform.processor() or platform.machine()}."
             " Errors: `swd` sliced W1 to a true sample; `mode` Σ|ŵ−π| + Σ π_k ‖Ĉ_k−Σ_k‖_F/‖Σ_k‖_F."
             " Ratios ÷ DDIM at the same NFE and ÷ DDPM-1000.", "",
             "### Best configurations on the tuning targets (geometric mean of error ÷ DDIM, NFE "
             f"{', '.join(map(str, TUNE_NFES))}, both metrics)", "",
             "The weight of the \"blend\" grid (one constant for the three samplers) is "
             "chosen first, over every configuration that uses it: " + ", ".join(
                 f"{g} {v:.3f}" for g, v in best["blend"]["scores"].items()) +
             f" → **{best['blend']['grid']}**; the other weights are left out of the choice "
             "below.", "",
             "| sampler | best on linear | best on cosine | best on both |",
             "| --- | --- | --- | --- |"]
    fams = [f for f in best if f not in ("ddim", "blend")]
    for fam in fams:
        b = best[fam]
        lines.append(f"| {fam} | {b.get('linear')} ({b.get('linear_score', math.nan):.2f}) | "
                     f"{b.get('cosine')} ({b.get('cosine_score', math.nan):.2f}) | "
                     f"{b.get('both')} ({b.get('both_score', math.nan):.2f}) |")
    lines += ["", "### Every configuration, tuning targets: geometric mean of error ÷ DDIM per NFE",
              ""]
    tune = [t for t in TUNING if t in res["targets"]]
    for sname in SCHEDULES:
        lines += [f"**{sname}**", "", "| configuration | " +
                  " | ".join(f"NFE {n}" for n in nfes) + " |",
                  "| --- |" + " ---: |" * len(nfes)]
        for cname in configs(sname):
            row = [gmean_ratio(res, cname, tune, [nfe], [sname]) for nfe in nfes]
            lines.append(f"| {cname} | " + " | ".join(
                "-" if math.isnan(r) else f"{r:.2f}" for r in row) + " |")
        lines.append("")
    lines += ["### Best configuration per NFE (tuning targets, same geometric mean)", "",
              "| schedule | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
              "| --- |" + " --- |" * len(nfes)]
    for sname in SCHEDULES:
        row = []
        for nfe in nfes:
            scores = {c: gmean_ratio(res, c, tune, [nfe], [sname]) for c in configs(sname)
                      if c != "ddim"}
            scores = {c: v for c, v in scores.items() if not math.isnan(v)}
            best_c = min(scores, key=scores.get) if scores else "-"
            row.append(f"{best_c} ({scores.get(best_c, math.nan):.2f})")
        lines.append(f"| {sname} | " + " | ".join(row) + " |")
    lines += from_ten_steps(res)
    lines += ["",
              "### Every target with each sampler's best configuration here: error (÷ DDIM "
              "same NFE, ÷ DDPM-1000)",
              ""]
    for tname, tres in res["targets"].items():
        part = "tuning" if tname in TUNING else "HELD-OUT"
        fl = tres["floor"]
        lines += [f"**{tname}** ({part}; floor swd {fl['swd']:.4f}, mode {fl['mode']:.4f})", "",
                  "| schedule | sampler | metric | DDPM-1000 | " +
                  " | ".join(f"NFE {n}" for n in nfes) + " |",
                  "| --- | --- | --- | ---: |" + " ---: |" * len(nfes)]
        for sname, cells in tres["schedules"].items():
            for fam in ["ddim", *fams]:
                cname = "ddim" if fam == "ddim" else best[fam]["both"]
                for m in ("swd", "mode"):
                    ref = cells["ddpm-1000"][m]
                    row = []
                    for nfe in nfes:
                        v, d = cells[f"{cname} @{nfe}"][m], cells[f"ddim @{nfe}"][m]
                        row.append(f"{v:.4f}" if fam == "ddim" else
                                   f"{v:.4f} ({v / d:.2f}, {v / ref:.2f})")
                    lines.append(f"| {sname} | {cname} | {m} | {ref:.4f} | " + " | ".join(row)
                                 + " |")
        lines.append("")
    if not quick:
        lines += ["### Issue #17's targets on the held-out set (mode error of each sampler's "
                  "best configuration here and of its default)",
                  "", "Raw ratios, and in brackets the ratios of the excess over the floor "
                  "(error − floor, floor = a true sample's error), which the floor does not "
                  "compress.", "",
                  "| target | schedule | sampler | ÷ DDIM @10 (≤ 0.4) | ÷ DDIM @20 (≤ 0.3) | "
                  "÷ DDPM-1000 @20 | ÷ DDPM-1000 @50 |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for tname in HELD_OUT:
            for sname, cells in res["targets"][tname]["schedules"].items():
                shown = dict.fromkeys(c for f in fams for c in (best[f]["both"], DEFAULT[f]))
                for cname in shown:
                    label = f"{cname} (default)" if cname == DEFAULT.get(family(cname)) else cname
                    m = "mode"
                    fl = res["targets"][tname]["floor"][m]

                    def ratio(a, b, fl=fl):
                        if b - fl <= 0.05 * fl:  # the reference sits at the floor
                            return f"{a / b:.2f} (–)"
                        return f"{a / b:.2f} ({max(a - fl, 0.0) / (b - fl):.2f})"

                    r = [ratio(cells[f"{cname} @{k}"][m], cells[f"ddim @{k}"][m])
                         for k in (10, 20)]
                    q = [ratio(cells[f"{cname} @{k}"][m], cells["ddpm-1000"][m])
                         for k in (20, 50)]
                    lines.append(f"| {tname} | {sname} | {label} | {r[0]} | {r[1]} | "
                                 f"{q[0]} | {q[1]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("-n", type=int, default=None)
    p.add_argument("--reuse", type=Path, help="an earlier results JSON whose cells are reused")
    p.add_argument("--jobs", type=int, default=1, help="processes, a target each (1 thread each)")
    args = p.parse_args()
    n = args.n or (2000 if args.quick else 10_000)
    t0 = time.perf_counter()
    reuse = json.loads(args.reuse.read_text())["results"] if args.reuse else None
    res = run(n, args.quick, reuse, args.jobs)
    res["reused"], res["jobs"] = reuse is not None, args.jobs
    best = choose_defaults(res)
    seconds = time.perf_counter() - t0
    md = report(res, best, seconds, args.quick)
    stem = "samplers_oracle_quick" if args.quick else "samplers_oracle"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"results": res, "defaults": best, "seconds": seconds,
         "threads": 1, "jobs": args.jobs}, indent=1, default=float) + "\n")
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
