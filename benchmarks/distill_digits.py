"""Fast sampling on sklearn digits: FD against the number of network evaluations (NFE) for the
ε-samplers of a trained digits model, its progressive-distillation students (Salimans & Ho
2022, Alg. 2; Weng Fig. 9-10), consistency distillation (Song et al. 2023, Alg. 2; Weng eq. 31)
with Euler and Heun solvers, and consistency training (Alg. 3; eq. 32).

The teacher is a `difflab train --preset digits` run directory (default
`runs/bench-digits/linear-simple`, written by `benchmarks/digits_figures.py`). Students are
written by the library calls behind `difflab distill` and `difflab train --method
consistency-training` into `--workdir`; a finished run directory is reused (delete it to redo).

    nice -n 19 .venv/bin/python benchmarks/distill_digits.py            # ~3 h on 2 cores
    nice -n 19 .venv/bin/python benchmarks/distill_digits.py --quick    # smoke test, 4-10 min

Faster on 2 cores, as the committed results were made: two processes of one thread each with
disjoint --parts (they share the row cache), then one plain run that reuses everything and
writes the table:

    nice -n 19 .venv/bin/python benchmarks/distill_digits.py --parts progressive --threads 1 &
    nice -n 19 .venv/bin/python benchmarks/distill_digits.py --parts cd,cd-ablation,ct \
        --threads 1
    nice -n 19 .venv/bin/python benchmarks/distill_digits.py --threads 1

Measured that way (a third process ran beside them part of the time): progressive 7 rounds ×
1000 updates 5664 s (652-996 s a round); consistency distillation 2000 updates 1692 s (Euler),
1551 s (Heun), 2269 s (Heun, fresh F_θ); consistency training 3000 steps 2244 s; FD rows a few
seconds each. About 1 h 35 min wall in all.

FD follows `benchmarks/digits_figures.py`: the Fréchet distance in the committed digits
classifier's features against the train split, n = 180 per draw (the floor's size), mean ±
standard error over `--draws` independent draws (one seeded batch, split), samples clamped to
[−1, 1]. NFE is counted by a forward hook on the model, so Heun's and EDM's extra evaluations
are what the table shows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
N_FD = 180

# (sampler, steps, spacing or None for the run's default) for the teacher
TEACHER_FULL = ([("ddim", 50, None)]
                + [("ddpm", s, None) for s in (10, 20, 50)]
                + [("ddim", s, None) for s in (5, 10, 20)]
                + [("ddim", s, "trailing") for s in (1, 2, 4, 8)]
                + [("heun", s, None) for s in (3, 5, 10)]
                + [("dpm++", s, None) for s in (5, 10, 20)]
                + [("edm-heun", s, None) for s in (3, 5, 10)])
TEACHER_QUICK = [("ddim", 10, None), ("ddpm", 5, None), ("ddim", 2, "trailing"),
                 ("heun", 3, None), ("dpm++", 5, None), ("edm-heun", 3, None)]


def fd_row(run: Path, sampler: str, steps: int, spacing: str | None, draws: int,
           label: str) -> dict:
    """FD of ``draws`` independent sets of 180 samples of the run (one seeded batch, split)."""
    from difflab.build.data import image_shape
    from difflab.config import spacing_for
    from difflab.data.fd import FDEvaluator
    from difflab.runs.draw import draw
    from difflab.runs.load import load_run

    cfg, model, schedule = load_run(run)
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))  # NFE
    spacing = spacing_for(cfg, sampler, spacing)
    x0, _, seconds = draw(model, schedule, (N_FD * draws, *image_shape(cfg)), sampler=sampler,
                          steps=steps, spacing=spacing, seed=1234)
    fd = FDEvaluator.for_dataset("digits", cfg.image_size)
    vals = [fd.fd(chunk.clamp(-1, 1)) for chunk in x0.split(N_FD)]
    row = {"label": label, "sampler": sampler, "steps": steps, "spacing": spacing,
           "nfe": calls[0], "fd": statistics.fmean(vals),
           "fd_se": statistics.stdev(vals) / len(vals) ** 0.5 if len(vals) > 1 else 0.0,
           "fd_floor": fd.floor(), "seconds": seconds}
    print(f"[{label}] {sampler} S={steps} NFE={row['nfe']}: FD {row['fd']:.1f} ± "
          f"{row['fd_se']:.1f} ({seconds:.1f} s)", flush=True)
    return row


def done(run: Path) -> bool:
    return (run / "metrics.json").is_file() and (run / "ema.safetensors").is_file()


def progressive(teacher: Path, workdir: Path, args) -> list[Path]:
    from difflab.runs.distill import distill_progressive, round_steps

    out = workdir / "progressive"
    steps = round_steps(args.start_steps, args.rounds, 1000)
    dirs = [out / f"steps-{n}" for n in steps]
    if all(done(d) for d in dirs):
        print(f"[progressive] reusing {out}", flush=True)
        return dirs
    t0 = time.perf_counter()
    dirs = distill_progressive(teacher, out, rounds=args.rounds, start_steps=args.start_steps,
                               steps_per_round=args.steps_per_round, prediction="v",
                               init=args.init, overwrite=True, evaluate=False,
                               threads=args.threads,
                               report=lambda d, m: print(f"[progressive] {d.name}: "
                                                         f"{m['train_seconds']:.0f} s",
                                                         flush=True))
    print(f"[progressive] {time.perf_counter() - t0:.0f} s", flush=True)
    return dirs


def consistency_distilled(teacher: Path, workdir: Path, solver: str, init: str, args) -> Path:
    from difflab.runs.distill import distill_consistency

    out = workdir / (f"cd-{solver}" if init == args.cd_init else f"cd-{solver}-{init}")
    if done(out):
        print(f"[{out.name}] reusing {out}", flush=True)
        return out
    t0 = time.perf_counter()
    distill_consistency(teacher, out, solver=solver, N=18, iters=args.cd_iters, init=init,
                        overwrite=True, evaluate=False, threads=args.threads)
    print(f"[{out.name}] {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def consistency_trained(teacher: Path, workdir: Path, args) -> Path:
    from difflab.config import CONSISTENCY_TRAINING_LR, load_config
    from difflab.runs.load import read_run_config
    from difflab.runs.train import train

    out = workdir / "ct"
    if done(out):
        print(f"[ct] reusing {out}", flush=True)
        return out
    base = read_run_config(teacher).to_dict()  # the teacher's data, network and batch
    base.update(CONSISTENCY_TRAINING_LR)  # the teacher's lr schedule is a diffusion run's
    base.update(method="consistency-training", steps=args.ct_steps, lr=args.ct_lr,
                threads=args.threads if args.threads is not None else base["threads"],
                eval_sampler="consistency", eval_steps=1, eval_eta=0.0, n_eval=N_FD, out="")
    cfg = load_config(None, base)
    t0 = time.perf_counter()
    train(cfg, out, overwrite=True, progress=False, evaluate_after=False)
    (out / "metrics.json").write_text(json.dumps({"train_steps": cfg.steps}))  # done
    print(f"[ct] {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, default=Path("runs/bench-digits/linear-simple"))
    p.add_argument("--workdir", type=Path, default=Path("runs/bench-distill"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "distill_digits")
    p.add_argument("--draws", type=int, default=3, help="independent FD draws of 180 samples")
    p.add_argument("--start-steps", type=int, default=64, help="first student's steps")
    p.add_argument("--rounds", type=int, default=7, help="progressive rounds (64 → 1: 7)")
    p.add_argument("--steps-per-round", type=int, default=1000)
    p.add_argument("--init", default="copy", choices=("auto", "copy", "fresh"),
                   help="first progressive student (copy: warm start from the ε-teacher)")
    p.add_argument("--cd-iters", type=int, default=2000)
    p.add_argument("--cd-init", default="copy", choices=("fresh", "copy"),
                   help="CD student: a v-parameterised copy of the teacher (default, as "
                   "'difflab distill'), or a fresh F_θ")
    p.add_argument("--ct-steps", type=int, default=3000)
    p.add_argument("--ct-lr", type=float, default=1e-3)
    p.add_argument("--parts", default="teacher,progressive,cd,cd-ablation,ct",
                   help="comma-separated subset to train and measure; two processes with "
                        "disjoint parts can share the row cache (a last run writes the table)")
    p.add_argument("--threads", type=int, help="torch threads of the training (default: the "
                   "teacher's); 1 each for two --parts processes on 2 cores")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 draw, 2 rounds 2 → 1 of 5 updates, 5 CD/CT updates")
    args = p.parse_args()
    teacher_cells = TEACHER_FULL
    if args.quick:
        args.draws, args.start_steps, args.rounds, args.steps_per_round = 1, 2, 2, 5
        args.cd_iters, args.ct_steps = 5, 5
        args.workdir = args.workdir.with_name(args.workdir.name + "-quick")
        args.out = args.out.with_name(args.out.name + "_quick")
        teacher_cells = TEACHER_QUICK
    if not (args.teacher / "config.json").is_file():
        p.error(f"no teacher run at {args.teacher}: train one with 'difflab train --preset "
                "digits --out DIR' (or benchmarks/digits_figures.py) and pass --teacher DIR")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads or 2)

    rows = []
    cache_path = args.out.with_name(args.out.name + "_partial.json")  # resume an interrupted run
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}

    parts = set(args.parts.split(","))
    budget = {"teacher": "", "progressive": f"{args.start_steps}/{args.rounds}x"
              f"{args.steps_per_round}/{args.init}", "cd": f"{args.cd_iters}/{args.cd_init}",
              "cd-ablation": f"{args.cd_iters}/not-{args.cd_init}",
              "ct": f"{args.ct_steps}/{args.ct_lr:g}"}

    def row(run: Path, sampler: str, steps: int, spacing: str | None, label: str,
            part: str) -> None:
        key = f"{label} {sampler} {steps} {spacing} {budget[part]}".rstrip()
        if key not in cache:
            value = fd_row(run, sampler, steps, spacing, args.draws, label)
            if cache_path.exists():  # another process (--parts) may have added rows
                cache.update(json.loads(cache_path.read_text()))
            cache[key] = value
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            tmp.replace(cache_path)
        rows.append(cache[key])

    if "teacher" in parts:
        for sampler, steps, spacing in teacher_cells:
            row(args.teacher, sampler, steps, spacing, "teacher", "teacher")
    if "progressive" in parts:
        for d in progressive(args.teacher, args.workdir, args):
            n = int(d.name.split("-")[1])
            if n <= 8:
                row(d, "ddim", n, None, "progressive (v)", "progressive")
    if "cd" in parts:
        for solver in ("euler", "heun"):
            run = consistency_distilled(args.teacher, args.workdir, solver, args.cd_init, args)
            for steps in (1, 2):
                row(run, "consistency", steps, None, f"CD ({solver})", "cd")
    if "cd-ablation" in parts:  # the other start of F_θ, Heun only
        other = "fresh" if args.cd_init == "copy" else "copy"
        run = consistency_distilled(args.teacher, args.workdir, "heun", other, args)
        for steps in (1, 2):
            row(run, "consistency", steps, None, f"CD (heun, {other} F_θ)", "cd-ablation")
    if "ct" in parts:
        run = consistency_trained(args.teacher, args.workdir, args)
        for steps in (1, 2):
            row(run, "consistency", steps, None, "CT", "ct")
    result = {"teacher": str(args.teacher), "draws": args.draws, "quick": args.quick,
              "progressive": {"start_steps": args.start_steps, "rounds": args.rounds,
                              "steps_per_round": args.steps_per_round, "init": args.init},
              "cd_iters": args.cd_iters, "cd_init": args.cd_init, "ct_steps": args.ct_steps,
              "ct_lr": args.ct_lr,
              "rows": rows}
    if parts != {"teacher", "progressive", "cd", "cd-ablation", "ct"}:
        print(f"--parts {args.parts}: rows cached in {cache_path}; rerun without --parts for "
              "the table")
        return
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(table(result))
    print(table(result))


def table(r: dict) -> str:
    pr = r["progressive"]
    lines = [f"Digits, teacher `{r['teacher']}`; FD: mean ± s.e. of {r['draws']} draws of "
             f"{N_FD} (floor {r['rows'][0]['fd_floor']:.1f}). Progressive: v-students, "
             f"{pr['rounds']} rounds from {pr['start_steps']} steps, {pr['steps_per_round']} "
             f"updates each (init {pr['init']}); CD: N = 18, {r['cd_iters']} updates, "
             f"student init {r.get('cd_init', 'fresh')}; CT: "
             f"{r['ct_steps']} steps at lr {r['ct_lr']:g}.", "",
             "| model | sampler | steps | spacing | NFE | FD | sample s |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for row in sorted(r["rows"], key=lambda x: (x["label"] != "teacher", x["nfe"])):
        spacing = "—" if row["sampler"] == "consistency" else row["spacing"] or "default"
        lines.append(f"| {row['label']} | {row['sampler']} | {row['steps']} | {spacing} | "
                     f"{row['nfe']} | {row['fd']:.1f} ± {row['fd_se']:.1f} | "
                     f"{row['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
