"""Consistency training warm-started exactly from a diffusion model: iCT's curriculum against
ECT's (Geng et al. 2024, "Consistency Models Made Easy"), at the wall time of
benchmarks/ict_digits.py.

`--ct-init-from` reads a diffusion run's network as a v-network
(:meth:`difflab.distill.ConsistencyModel.v_from_schedule`). For an ε-run that start is only
approximate at high noise; for a v-prediction run f_θ starts as the run's one-step x̂_0, exactly.
This probe asks whether an exact start closes iCT's gap to a diffusion model at equal wall time
(issue #17's target: 1-step FD ≤ 2× DDIM-50's). Given W (``--minutes``):

- **diffusion**: the preset's ε-model for W, DDIM-50 (ict_digits.diffusion);
- **v-diffusion**: the same recipe with ``prediction = "v"`` for W/2, then two arms from a copy of
  its EMA network, W/2 each (so each costs W):
  - **ict**: :class:`difflab.training.consistency.ImprovedConsistencyTraining` (N doubling
    10 → 1280 in 8 stages, lognormal levels, weight 1/(σ_{n+1} − σ_n));
  - **ect**: continuous σ_t ~ lognormal(−1.1, 2.0) in [σ_min, σ_max], and the second point
    σ_r = σ_t (1 − n(σ_t)/q^{s+1}), n(σ) = 1 + k·sigmoid(−b σ), q = 2, k = 8, b = 1, in stage
    s of 8 equal stages, clamped to σ_min (where f_θ is the identity, so the target is x0 +
    σ_min z); weight 1/(σ_t − σ_r), pseudo-Huber, dropout shared, no EMA target. At low noise
    stage 0 has σ_r = σ_min: a denoising loss towards x0 + σ_min z, which the diffusion start
    was trained on (there in squared error); later stages shrink the gap σ_t − σ_r.

Each arm's EMA is sampled in 1 and 2 steps (default and searched re-noising level), FD as in
ict_digits (n = 180 digits or 500 MNIST per draw, 3 draws), with its 1-step FD at the start and
at each stage's end.

    taskset -c 0 .venv/bin/python benchmarks/ict_warm_probe.py --minutes 4 --seed 0   # ~12 min
    taskset -c 1 .venv/bin/python benchmarks/ict_warm_probe.py --preset mnist-base16 \
        --minutes 12 --seed 0                                                    # ~45 min
    .venv/bin/python benchmarks/ict_warm_probe.py --quick                     # smoke test

Writes benchmarks/results/ict_warm_probe_{digits,mnist16}_seedK{,_quick}.{json,md} (or ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import ict_digits
import torch

from difflab.build.data import training_set
from difflab.build.model import build_model, build_schedule
from difflab.config import load_config
from difflab.distill.consistency_training import seeded
from difflab.parameterization import EpsFromV
from difflab.schedules import Schedule
from difflab.training import consistency_model
from difflab.training.backend import Backend
from difflab.training.consistency import ImprovedConsistencyTraining


class ECTProbe(ImprovedConsistencyTraining):
    """ECT's mapping σ_t → σ_r on iCT's machinery (the "n" entry of a batch holds σ_t)."""

    def __init__(self, *a, q: float = 2.0, k: float = 8.0, b: float = 1.0, stages: int = 8,
                 **kw):
        super().__init__(*a, **kw)
        self.q, self.k, self.b, self.stages = q, k, b, stages

    def draw(self, step: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.data.shape[0], (self.batch,), generator=g)  # (B,)
        x0 = self.data[idx]  # (B, …)
        out = {"x0": x0, **{k: v[idx] for k, v in self.cond_data.items()}}
        t = (self.p_mean + self.p_std * torch.randn(self.batch, generator=g,
                                                     dtype=torch.float64)).exp()  # (B,)
        out["n"] = t.clamp(self.net.sigma_min * 1.0001, self.net.sigma_max)
        out["z"] = torch.randn(x0.shape, generator=g, dtype=x0.dtype)  # (B, …)
        out["seed"] = torch.randint(0, 2**62, (1,), generator=g).repeat(self.batch)
        self._step = step
        return out

    def loss(self, model, batch):
        batch = dict(batch)
        seed = int(batch.pop("seed")[0])
        x0, t, z, cond = self._split(batch)
        stage = min(self._step * self.stages // self.iters, self.stages - 1)
        n_t = 1 + self.k * torch.sigmoid(-self.b * t)
        r = (t * (1 - n_t / self.q ** (stage + 1))).clamp(min=self.net.sigma_min)  # (B,)
        with torch.no_grad(), seeded(seed, x0.device):
            y = model(x0 + Schedule.broadcast(r, x0) * z, r, **cond)
        with seeded(seed, x0.device):
            d = self.distance(model(x0 + Schedule.broadcast(t, x0) * z, t, **cond), y)  # (B,)
        return ((1.0 / (t - r)).to(d.dtype) * d).mean()


def run_arm(kind, cfg, schedule, data, backend, seconds, scorer, init, stages=8):
    """Train ``kind`` ("ect" or "ict") for ``seconds`` from a copy of ``init`` (a v-network)."""
    net = build_model(cfg)
    net.load_state_dict(init.state_dict())
    ct_cfg = dataclasses.replace(cfg, method="consistency-training", eval_sampler="consistency",
                                 ct_init_from="<v-diffusion (W/2)>")

    def wrap(n):
        return consistency_model(ct_cfg, n, schedule)

    model = wrap(net)
    kw = dict(batch=cfg.batch, lr=cfg.lr, lr_decay=True, grad_clip=cfg.grad_clip,
              ema_decay=cfg.ema_decay)

    def make(iters):
        if kind == "ect":
            return ECTProbe(model, data, iters=iters, stages=stages, **kw)
        return ImprovedConsistencyTraining(model, data, iters=iters, **kw)

    steps = max(int(seconds / ict_digits.per_step(make(100), backend)), 16)
    obj = make(steps)
    marks = {max(steps * k // 8, 1) for k in range(1, 9)}
    curve, clock = [], ict_digits.Clock()
    start = wrap(copy.deepcopy(net)).eval()
    v0, _ = scorer(ict_digits.sample(start, schedule, "consistency", 1, scorer))
    print(f"  [{kind}] start FD(1) {v0:.1f}", flush=True)
    curve.append({"step": 0, "fd_1step": v0})

    def on(step, _):
        if step in marks:
            t0 = time.perf_counter()
            f = wrap(obj.modules()["ema"]).eval()
            v, se = scorer(ict_digits.sample(f, schedule, "consistency", 1, scorer))
            curve.append({"step": step, "fd_1step": v})
            print(f"  [{kind}] step {step}/{steps} {clock.seconds():.0f}s FD(1) {v:.1f} ± "
                  f"{se:.1f}", flush=True)
            clock.paused += time.perf_counter() - t0

    done = ict_digits.fit_for(obj, seconds, steps, clock, backend, cfg.seed, hook=on)
    return wrap(obj.modules()["ema"]).eval(), done, clock.seconds(), curve


def report(out: dict) -> str:
    """The Markdown table of a results dict (``main``'s JSON)."""
    rows, ddim50 = out["rows"], out["rows"][0]["fd"]
    lines = [f"## Exact warm start, iCT against ECT, on {out['preset']} "
             "(benchmarks/ict_warm_probe.py)", "",
             f"W = {60 * out['minutes']:.0f} s per model (the warm arms: v-diffusion W/2 + W/2), "
             f"one thread, seed {out['seed']}; FD floor {out['floor']:.1f}; n = "
             f"{out['n_per_draw']} × 3 draws. {out.get('note', '')}", "",
             "| model | sampler | NFE | FD | ÷ DDIM-50 FD | train steps | train s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['label']} | {r['sampler']} | {r['steps']} | {r['fd']:.1f} ± {r['se']:.1f} "
              f"| {r['fd'] / ddim50:.2f} | {r['train_steps']} | {r['sec']:.0f} |" for r in rows]
    lines += ["", "FD (1 step) at the start and at each stage's end:", ""]
    lines += [f"- {k}: " + ", ".join(f"{x['step']}: {x['fd_1step']:.0f}" for x in c)
              for k, c in out["curves"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(ict_digits.PART), default="digits")
    p.add_argument("--minutes", type=float, default=4, help="wall time W of each model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", default="ect,ict")
    p.add_argument("--out", type=Path, default=None, help="results stem (.json, .md); default "
                   "results/ict_warm_probe_{digits,mnist16}_seedK")
    p.add_argument("--quick", action="store_true", help="smoke test: W = 6 s (~2 min)")
    a = p.parse_args()
    if a.out is None:
        part = ict_digits.PART[a.preset]
        a.out = ict_digits.ROOT / "results" / f"ict_warm_probe_{part}_seed{a.seed}"
    if a.quick:
        a.minutes, a.out = 0.1, a.out.with_name(a.out.name + "_quick")
    torch.set_num_threads(1)
    cfg = load_config(a.preset, {"threads": 1, "seed": a.seed})
    backend = Backend(torch.device("cpu"))
    data, cfg, _ = training_set(cfg)
    schedule = build_schedule(cfg)
    fd = ict_digits.fd_evaluator(ict_digits.PART[a.preset])
    scorer = ict_digits.Scorer(fd, 180 if a.preset == "digits" else 500, 3, tuple(data.shape[1:]))
    W = 60 * a.minutes
    rows = []

    def row(label, model, sampler, steps, train_steps, sec, levels=None):
        v, se = scorer(ict_digits.sample(model, schedule, sampler, steps, scorer, levels))
        rows.append(dict(label=label, sampler=sampler, steps=steps, fd=v, se=se,
                         train_steps=train_steps, sec=sec))
        print(f"[{label}] {sampler} {steps}: FD {v:.1f} ± {se:.1f} ({train_steps} steps, "
              f"{sec:.0f}s)", flush=True)

    eps, d_steps, d_sec = ict_digits.diffusion(cfg, schedule, data, backend, W)
    row("diffusion eps W", eps, "ddim", 50, d_steps, d_sec)
    vcfg = load_config(None, {**cfg.to_dict(), "prediction": "v"})
    v_half, h_steps, h_sec = ict_digits.diffusion(vcfg, build_schedule(vcfg), data, backend, W / 2)
    row("diffusion v W/2", EpsFromV(v_half, schedule), "ddim", 50, h_steps, h_sec)
    curves = {}
    for kind in a.arms.split(","):
        f, c_steps, c_sec, curves[kind] = run_arm(kind, cfg, schedule, data, backend, W / 2,
                                                  scorer, v_half)
        for s in (1, 2):
            row(f"{kind} warm (v W/2 + W/2)", f, "consistency", s, c_steps, h_sec + c_sec)
        levels, _ = ict_digits.searched_levels(f, schedule, scorer)
        row(f"{kind} warm searched {levels[0]:.2f}", f, "consistency", 2, c_steps,
            h_sec + c_sec, levels)
    out = {"preset": a.preset, "minutes": a.minutes, "seed": a.seed, "n_per_draw": scorer.n,
           "rows": rows, "curves": curves, "floor": fd.floor()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    md = report(out)
    a.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
