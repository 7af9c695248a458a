"""AdamW's settings for improved consistency training, at an equal number of updates: β2,
weight decay, the gradient clip and the learning-rate schedule.

Improved consistency training doubles its number of levels N every K/8 updates (Song &
Dhariwal 2023, eq. 8) and weights the loss by 1/(σ_{n+1} − σ_n), which doubles with N. The
gradient norm before clipping doubles with it, stage after stage (this script records its median
per stage), so the run's gradient clip at 1 binds in every stage. Each variant ``B:W[:C[:L]]`` of
``--variants`` is AdamW with β2 = B and decoupled weight decay W, the gradient clipped to norm C
(default 1, the presets'; 0: not clipped) and the learning-rate schedule L = ``kind/warm-up/
floor`` (default ``linear/0/0``, the method's own; ``cosine/100/0.05`` is what the presets give
diffusion), on runs built as ``difflab train --method consistency-training --adam-beta2 B
--weight-decay W --grad-clip C --lr-schedule kind --warmup warm-up --lr-min-ratio floor`` builds
them (the objective from ``difflab.training.OBJECTIVES``, on the preset's config):

- **digits** (where the default was chosen): the digits preset's U-Net, ``--steps`` updates
  (default 800, the updates iCT makes in the 4 minutes of one core of ``ict_digits.py``), seeds
  0-3; FD of the EMA (sampled by the library) and of the raw weights, in 1 step and in 2 steps
  re-noised to the default level (n = 180 × 3, the committed digits classifier, against the
  train split);
- **mnist16** (held out): the mnist-base16 preset (MNIST at 16×16, batch 64), ``--steps-mnist``
  updates, FD through the 32×32 MNIST classifier as the cascade's base stage;
- **2d** (held out, another network): the default preset's MLP on two exact mixtures of
  ``samplers_oracle.py`` (ring8-2d, aniso-2d), ``--steps-2d`` updates; sliced W1 to a true
  sample and the mode error in 1 and 2 steps.

``--reuse FILE``: rows of an earlier run (its JSON, or a log of its printed rows) are kept
instead of being trained again. The committed results (``benchmarks/results/ict_optimiser.md``)
were made one part per core, e.g.

    taskset -c 0 .venv/bin/python benchmarks/ict_optimiser.py --parts digits \
        --out benchmarks/results/ict_optimiser_digits                        # ~5 min a run
    taskset -c 1 .venv/bin/python benchmarks/ict_optimiser.py --parts mnist16 \
        --out benchmarks/results/ict_optimiser_mnist16
    .venv/bin/python benchmarks/ict_optimiser.py --quick             # smoke test (~1 min)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from difflab.build.data import training_set
from difflab.build.model import build_schedule
from difflab.config import CONSISTENCY_TRAINING_LR, load_config
from difflab.training import OBJECTIVES, consistency_model, lr_schedule
from difflab.training.backend import Backend
from difflab.training.loop import fit

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from ict_noise_input import (  # noqa: E402
    MIXTURES,
    fd_evaluator,
    fd_scores,
    mean,
    mixture,
    mixture_scores,
)

N_FD = 180


def lr_spec(fields: dict) -> str:
    """A schedule's config lr fields as ``kind/warm-up/floor``."""
    return "{lr_schedule}/{warmup}/{lr_min_ratio:g}".format(**fields)


DEFAULT_LR = lr_spec(CONSISTENCY_TRAINING_LR)  # consistency training's own: "linear/0/0"
PRESETS = {"digits": "digits", "mnist16": "mnist-base16"}  # part → preset


class StageNorms:
    """A loop logger that keeps each update's gradient norm before clipping."""

    def __init__(self):
        self.norms: list[tuple[int, float]] = []

    def update(self, step, loss, lr, grad_norm, batch) -> None:
        self.norms.append((step, float(grad_norm)))

    def evaluation(self, run_dir, step) -> None:
        pass

    def close(self) -> None:
        pass

    def medians(self, steps: int, stages: int = 8) -> list[float]:
        size = max(steps // stages, 1)
        parts = [[v for s, v in self.norms if k * size < s <= (k + 1) * size]
                 for k in range(stages)]
        return [round(statistics.median(p), 3) for p in parts if p]


def lr_fields(spec: str) -> dict:
    """The config's lr fields of a schedule ``kind/warm-up/floor``."""
    kind, warmup, floor = spec.split("/")
    return {"lr_schedule": kind, "warmup": int(warmup), "lr_min_ratio": float(floor)}


def train(cfg, schedule, data, variant: tuple, seed: int, steps: int):
    """iCT as ``difflab train --method consistency-training --adam-beta2 B --weight-decay W
    --grad-clip C --lr-schedule … --steps steps --seed seed`` builds it (``variant`` = (B, W, C,
    L)); returns (f_θ of the EMA, f_θ of the raw weights, stage norms)."""
    beta2, wd, clip, lr = variant
    cfg = load_config(None, {**cfg.to_dict(), **lr_fields(lr),
                             "method": "consistency-training", "steps": steps,
                             "seed": seed, "adam_beta2": beta2, "weight_decay": wd,
                             "grad_clip": clip, "eval_sampler": "consistency",
                             "eval_steps": 1})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        obj = OBJECTIVES["consistency-training"](cfg, schedule, data, None, None)
    group = obj.optimizer().param_groups[0]
    assert group["betas"] == (0.9, beta2) and group["weight_decay"] == wd
    assert obj.grad_clip == clip and obj.lr_at(0) == lr_schedule(cfg)(0)
    norms = StageNorms()
    fit(obj, steps=steps, generator=torch.Generator().manual_seed(seed),
        backend=Backend(torch.device("cpu")), logger=norms)
    return (consistency_model(cfg, obj.modules()["ema"], schedule).eval(),
            consistency_model(cfg, obj.modules()["model"], schedule).eval(), norms.medians(steps))


def key(row: dict) -> tuple:
    """What identifies a row: part (or 2-D target), variant, seed."""
    return (row.get("part", row.get("target")), row["beta2"], row.get("weight_decay", 0.0),
            row.get("grad_clip", 1.0), row.get("lr", DEFAULT_LR), row["seed"])


def read_reuse(path: Path | None) -> dict[tuple, dict]:
    """Rows of an earlier run: its JSON (``images`` and ``2d``) or a log of printed rows."""
    if path is None:
        return {}
    text = path.read_text()
    try:
        out = json.loads(text)
        rows = out["images"] + out["2d"]
    except json.JSONDecodeError:
        rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return {key(r): r for r in rows}


def images(part: str, variants, seeds, steps: int, draws: int, reuse: dict,
           only_reused: bool = False) -> list[dict]:
    cfg = load_config(PRESETS[part], {"threads": 1})
    data, cfg, _ = training_set(cfg)
    schedule = build_schedule(cfg)
    fd = fd_evaluator(part)
    rows = []
    for variant in variants:
        for k in seeds:
            old = reuse.get((part, *variant, k))
            if old is not None and old["steps"] == steps:
                rows.append({**old, **fields(variant)})
                continue
            if only_reused:
                continue
            t0 = time.perf_counter()
            ema, raw, norms = train(cfg, schedule, data, variant, cfg.seed + k, steps)
            row = {"part": part, **fields(variant), "seed": k,
                   "steps": steps, "train_s": round(time.perf_counter() - t0),
                   "grad_norm_stages": norms}
            x_T = torch.randn(N_FD * draws, *data.shape[1:],
                              generator=torch.Generator().manual_seed(1234))
            for which, f in (("ema", ema), ("raw", raw)):
                row.update({f"fd{S}_{which}": v
                            for S, v in fd_scores(f, schedule, x_T, fd, seed=1235).items()})
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def two_d(variants, seeds, steps: int, reuse: dict, only_reused: bool = False) -> list[dict]:
    rows = []
    for name in MIXTURES:
        mix, data, truth = mixture(name)
        for variant in variants:
            for k in seeds:
                if (name, *variant, k) in reuse:
                    rows.append({**reuse[(name, *variant, k)], **fields(variant)})
                    continue
                if only_reused:
                    continue
                cfg = load_config(None, {"threads": 1})
                ema, _, norms = train(cfg, build_schedule(cfg), data, variant, k, steps)
                row = {"target": name, **fields(variant), "seed": k, "grad_norm_stages": norms,
                       **mixture_scores(ema, build_schedule(cfg), mix, truth, seed=10)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def fields(variant) -> dict:
    """A row's fields of ``variant`` (B, W, C, L)."""
    return dict(zip(("beta2", "weight_decay", "grad_clip", "lr"), variant, strict=True))


def label(variant) -> str:
    clip = "" if variant[2] == 1.0 else f", clip {variant[2] or 'off'}"
    lr = "" if variant[3] == DEFAULT_LR else f", lr {variant[3]}"
    return f"β2 {variant[0]}, wd {variant[1]}{clip}{lr}"


def report(args, variants, rows, rows_2d, seconds: float) -> str:
    lines = ["## AdamW's β2, weight decay, the gradient clip and the learning-rate schedule for "
             "improved consistency training (benchmarks/ict_optimiser.py)", "",
             "iCT from a fresh F_θ as `difflab train --method consistency-training --adam-beta2 "
             "B --weight-decay W --grad-clip C --lr-schedule …` builds it (C = 1 and the lr "
             f"{DEFAULT_LR} (kind/warm-up/floor) unless the row says), at equal updates. "
             + "; ".join(
                 [f"{p}: {r[0]['steps']} updates" for p in PRESETS
                  if (r := [x for x in rows if x["part"] == p])] +
                 ([f"2-D: {args.steps_2d} updates, seeds {args.seeds_2d}"] if rows_2d else [])) +
             f". FD n = {N_FD} × {args.draws}, 2 steps re-noised to the default level. "
             f"{seconds:.0f} s on 1 thread (rows reused from `--reuse` not counted).", ""]
    for part in PRESETS:
        mine = [r for r in rows if r["part"] == part]
        if not mine:
            continue
        role = "tuning" if part == "digits" else "held out"
        seeds = sorted({r["seed"] for r in mine})
        lines += [f"### {part} ({role}): FD, EMA (raw weights), 1 step / 2 steps", "",
                  "| AdamW | " + " | ".join(f"seed {k}" for k in seeds) +
                  " | mean 1 step EMA (raw) | mean 2 steps EMA (raw) |",
                  "| --- |" + " ---: |" * (len(seeds) + 2)]
        for v in variants:
            by_seed = {r["seed"]: r for r in mine if key(r)[1:-1] == v}
            if not by_seed:
                continue
            cells = [f"{r['fd1_ema']:.0f} ({r['fd1_raw']:.0f}) / {r['fd2_ema']:.0f} "
                     f"({r['fd2_raw']:.0f})" if (r := by_seed.get(k)) else "–" for k in seeds]
            m = {f: mean(mine, f, **fields(v))
                 for f in ("fd1_ema", "fd1_raw", "fd2_ema", "fd2_raw")}
            lines.append(f"| {label(v)} | " + " | ".join(cells) + f" | {m['fd1_ema']:.1f} "
                         f"({m['fd1_raw']:.1f}) | {m['fd2_ema']:.1f} ({m['fd2_raw']:.1f}) |")
        first = mine[0]
        lines += ["", f"Median gradient norm before clipping per curriculum stage "
                  f"({label(key(first)[1:-1])}, "
                  f"seed {first['seed']}): "
                  f"{first['grad_norm_stages']}", ""]
    if rows_2d:
        lines += ["### 2-D mixtures (held out): mean over seeds, 1 / 2 steps", "",
                  "| target | AdamW | sliced W1 | mode error |", "| --- | --- | ---: | ---: |"]
        for name in MIXTURES:
            for v in variants:
                if not any(key(r)[:-1] == (name, *v) for r in rows_2d):
                    continue
                m = {f: mean(rows_2d, f, target=name, **fields(v))
                     for f in ("swd1", "swd2", "mode1", "mode2")}
                lines.append(f"| {name} | {label(v)} | {m['swd1']:.4f} / {m['swd2']:.4f} | "
                             f"{m['mode1']:.3f} / {m['mode2']:.3f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def variant(text: str) -> tuple:
    """(β2, weight decay, clip, lr schedule) of ``B:W[:C[:L]]``."""
    parts = text.split(":")
    if not 2 <= len(parts) <= 4:
        raise SystemExit(f"--variants: {text!r} is not B:W[:C[:L]]")
    floats = [float(x) for x in (parts[:3] + ["1"])[:3]]
    if len(parts) < 4:
        return (*floats, DEFAULT_LR)
    f = lr_fields(parts[3])  # written as DEFAULT_LR is, so that reused rows match
    return (*floats, lr_spec(f))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="0.999:0,0.99:0,0.999:0.01,0.99:0.01",
                   help="comma-separated B:W[:C[:L]], AdamW's β2 and weight decay (and the "
                   "gradient clip, default 1; 0: off; and the lr schedule kind/warm-up/floor, "
                   f"default {DEFAULT_LR})")
    p.add_argument("--seeds", default="0,1,2,3", help="seed offsets of the digits runs")
    p.add_argument("--seeds-mnist", default="0,1,2")
    p.add_argument("--seeds-2d", default="0,1,2")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--steps-mnist", type=int, default=500)
    p.add_argument("--steps-2d", type=int, default=1500)
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--parts", default="digits,mnist16,2d",
                   help="comma-separated: digits, mnist16, 2d")
    p.add_argument("--reuse", type=Path, help="rows of an earlier run (JSON or log) to keep")
    p.add_argument("--only-reused", action="store_true",
                   help="train nothing: report the rows of --reuse only")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "ict_optimiser")
    p.add_argument("--quick", action="store_true", help="smoke test: 16 updates, one seed")
    args = p.parse_args()
    if args.quick:
        args.steps = args.steps_mnist = args.steps_2d = 16
        args.seeds = args.seeds_mnist = args.seeds_2d = "0"
        args.draws = 1
        args.out = args.out.with_name(args.out.name + "_quick")
    torch.set_num_threads(1)
    variants = [variant(v) for v in args.variants.split(",")]
    parts = args.parts.split(",")
    reuse = read_reuse(args.reuse)
    t_all = time.perf_counter()
    rows = []
    if "digits" in parts:
        rows += images("digits", variants, [int(s) for s in args.seeds.split(",")], args.steps,
                       args.draws, reuse, args.only_reused)
    if "mnist16" in parts:
        rows += images("mnist16", variants, [int(s) for s in args.seeds_mnist.split(",")],
                       args.steps_mnist, args.draws, reuse, args.only_reused)
    rows_2d = (two_d(variants, [int(s) for s in args.seeds_2d.split(",")], args.steps_2d, reuse,
                     args.only_reused) if "2d" in parts else [])
    seconds = time.perf_counter() - t_all
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "images": rows, "2d": rows_2d,
           "seconds": seconds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    md = report(args, variants, rows, rows_2d, seconds)
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
