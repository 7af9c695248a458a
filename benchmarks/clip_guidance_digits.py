"""CLIP guidance vs classifier-free guidance on digits, as GLIDE compares them (Nichol et al.
2022, §2.4 and §4.1): which guidance makes samples show what the caption says, at what cost
in FD.

- **CLIP guidance** (Weng eq. 25 with the CLIP logit s · f(x_t, t) · g(c);
  :class:`difflab.guidance.CLIPGuidance`): an unconditional `digits` run guided by a noise-aware
  CLIP (`difflab train-clip --preset digits-noisy-clip`) towards template captions naming each
  digit ("a handwritten seven", "the digit 7", …), every digit in turn.
- **Classifier-free guidance** (eq. 26): a `digits-text` run (captions, p_uncond = 0.1) given
  the same captions.

Both diffusion runs train for the same number of updates (`--train-steps`). Per guidance
weight w: the committed digits classifier's accuracy on the digit the caption names, FD to the
train split at n = 180 (floor: the 180 real test images), and the noisy CLIP's own similarity
s · f(x_0, 1) · g(c) of the samples to their captions (the "CLIP score"; for CLIP guidance it is
the quantity being pushed up, so it flatters it — accuracy is the independent judge). DDIM,
`--eval-steps` steps, means over `--draws` seeds ± their standard error.

    # as run for the results (~25 min on one thread of a shared 2-core machine):
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/clip_guidance_digits.py --eval-steps 25
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/clip_guidance_digits.py --quick  # smoke test
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
WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


def ensure(cmd: list[str], out: Path) -> Path:
    """Run ``difflab cmd --out out`` unless ``out/metrics.json`` exists; return out."""
    if (out / "metrics.json").exists():
        print(f"[reuse] {out}", flush=True)
        return out
    full = [sys.executable, "-m", "difflab", *cmd, "--out", str(out), "--no-progress",
            "--overwrite", "--threads", "1"]
    print(f"[run] {' '.join(full[3:])}", flush=True)
    subprocess.run(full, check=True)
    return out


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return m, se


@torch.no_grad()
def clip_score(clip, x0: torch.Tensor, text: torch.Tensor) -> float:
    """Mean s · f(x_0, 1) · g(c) of samples (n, C, H, W) and their captions' g(c) (n, D)."""
    return float(clip.logit_scale * (clip.encode_image(x0) * text).sum(-1).mean())


def measure(run: Path, clip, clip_cfg, *, w: float, use_clip: bool, draws: int, steps: int,
            n: int) -> dict:
    """Accuracy, FD and CLIP score of ``run``'s samples, every digit's template captions in
    turn, with CLIP guidance (``use_clip``) or classifier-free guidance of weight ``w``."""
    from difflab.build.conditioning import clip_conditions, guided, sample_conditions
    from difflab.runs.evaluate import evaluate_images
    from difflab.runs.load import load_run

    cfg, model, schedule = load_run(run)
    text = clip_conditions(cfg, clip, clip_cfg, n)[0]["clip_text"]  # (n, D): the captions' g(c)
    if use_clip:
        cond, y = clip_conditions(cfg, clip, clip_cfg, n)
        m = guided(model, schedule, cfg, cond, w=w, clip=clip, sampler="ddim", steps=steps)
    else:
        cond, y = sample_conditions(cfg, n)
        m = guided(model, schedule, cfg, cond, w=w, sampler="ddim", steps=steps)
    out: dict[str, list[float]] = {"fd": [], "accuracy": [], "clip_score": []}
    t0 = time.perf_counter()
    for seed in range(draws):
        metrics, x0, _ = evaluate_images(m, schedule, cfg, sampler="ddim", steps=steps, n=n,
                                         seed=seed, labels=y)
        out["fd"].append(metrics["fd"])
        out["accuracy"].append(metrics["accuracy"])
        out["clip_score"].append(clip_score(clip, x0, text))
    res = {"fd_floor": metrics["fd_floor"], "seconds": time.perf_counter() - t0}
    for k, v in out.items():
        res[k], res[k + "_se"] = mean_se(v)
    return res


GRID_WEIGHTS = (0.0, 1.0, 2.0, 4.0)


def picture(runs: dict, clip, clip_cfg, steps: int, path: Path) -> None:
    """A PNG: one row per (guidance, w) of :data:`GRID_WEIGHTS`, CLIP guidance rows first, then
    classifier-free guidance; columns the digits 0-9 twice (the same seed in every row of a
    kind, so a column is one x_T along w)."""
    from difflab.build.conditioning import clip_conditions, guided, sample_conditions
    from difflab.runs.draw import draw
    from difflab.runs.load import load_run
    from difflab.runs.plots import save_image_grid

    rows = []
    for name, use_clip in (("uncond", True), ("text", False)):
        cfg, model, schedule = load_run(runs[name])
        for w in GRID_WEIGHTS:
            if use_clip:
                cond = clip_conditions(cfg, clip, clip_cfg, 20)[0]
                m = guided(model, schedule, cfg, cond, w=w, clip=clip, steps=steps)
            else:
                m = guided(model, schedule, cfg, sample_conditions(cfg, 20)[0], w=w, steps=steps)
            x0 = draw(m, schedule, (20, 1, 8, 8), sampler="ddim", steps=steps, seed=0)[0]
            rows.append(x0.clamp(-1, 1))
    save_image_grid(torch.cat(rows), path, nrow=20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--eval-steps", type=int, default=50, help="DDIM steps")
    p.add_argument("-n", type=int, default=180, help="samples per draw (the FD floor's 180)")
    p.add_argument("--train-steps", type=int, default=1000, help="updates of each diffusion run")
    p.add_argument("--workdir", type=Path, default=Path("runs/bench-clipg"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "clip_guidance_digits")
    p.add_argument("--quick", action="store_true", help="smoke test: 20 updates, 1 draw")
    p.add_argument("--only", choices=("clip", "cfg"), help="measure one kind of guidance and "
                   "stop (the measurements are kept in <out>_partial.json for the full run)")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.train_steps, args.draws, args.eval_steps, args.n = 20, 1, 5, 30
        args.workdir = args.workdir / "quick"
        args.out = args.out.with_name(args.out.name + "_quick")
    short = ["--steps", str(args.train_steps), "--n-eval", "20", "--eval-steps", "10"]
    wd = args.workdir
    runs = {"uncond": ensure(["train", "--preset", "digits", *short], wd / "uncond"),
            "noisy-clip": ensure(["train-clip", "--preset", "digits-noisy-clip",
                                  *(["--steps", "50"] if args.quick else [])],
                                 wd / "noisy-clip")}
    if args.only != "clip":
        runs["text"] = ensure(["train", "--preset", "digits-text", *short], wd / "text")
    from difflab.runs.clip import load_noisy_clip

    clip_cfg, clip = load_noisy_clip(runs["noisy-clip"])
    info = {k: json.loads((v / "metrics.json").read_text()) for k, v in runs.items()}
    res: dict = {"settings": {k: str(v) for k, v in vars(args).items()},
                 "train_seconds": {k: m["train_seconds"] for k, m in info.items()},
                 "train_steps": {k: m["train_steps"] for k, m in info.items()},
                 "clip_zero_shot_at_t": info["noisy-clip"]["zero_shot_at_t"],
                 "clip_logit_scale": clip.logit_scale, "clip": {}, "cfg": {}}
    kw = dict(draws=args.draws, steps=args.eval_steps, n=args.n)
    partial = args.out.with_name(args.out.name + "_partial.json")
    cache = json.loads(partial.read_text()) if partial.exists() else {}
    for w in WEIGHTS:
        for name, run, use_clip in (("clip", "uncond", True), ("cfg", "text", False)):
            if args.only not in (None, name):
                continue
            key = f"{name} w={w} {kw}"
            if key not in cache:
                cache[key] = measure(runs[run], clip, clip_cfg, w=w, use_clip=use_clip, **kw)
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps(cache, indent=1) + "\n")
            r = res[name][w] = cache[key]
            print(f"{name} w={w}: accuracy {r['accuracy']:.3f}, FD {r['fd']:.1f}, "
                  f"CLIP score {r['clip_score']:.2f} ({r['seconds']:.0f} s)", flush=True)
    if args.only:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(res, runs, args, args.out.with_suffix(".md"))
    picture(runs, clip, clip_cfg, args.eval_steps, args.out.with_suffix(".png"))
    print(args.out.with_suffix(".md"))


def write_markdown(res: dict, runs: dict, args, path: Path) -> None:
    floor = next(iter(res["cfg"].values()))["fd_floor"]
    zs = ", ".join(f"{t}: {a:.2f}" for t, a in sorted(res["clip_zero_shot_at_t"].items(),
                                                        key=lambda kv: int(kv[0])))
    secs = ", ".join(f"{k} {v:.0f} s ({res['train_steps'][k]} updates)"
                     for k, v in res["train_seconds"].items())
    lines = [f"# CLIP guidance vs classifier-free guidance on digits ({args.draws} draws of "
             f"n = {args.n}, DDIM {args.eval_steps} steps; FD floor {floor:.1f})", "",
             f"Runs: {', '.join(f'{k} = `{v}`' for k, v in runs.items())}. Training (one "
             f"thread, a shared machine): {secs}. Noisy CLIP's zero-shot accuracy on x_t of "
             f"the test split at t: {zs}; its logit scale s = {res['clip_logit_scale']:.1f}.",
             "", "| w | CLIP guidance accuracy | FD | CLIP score | CFG accuracy | FD | "
             "CLIP score |", "|---:|---|---|---|---|---|---|"]

    def cell(r: dict) -> str:
        return (f"{r['accuracy']:.3f} ± {r['accuracy_se']:.3f} | {r['fd']:.1f} ± "
                f"{r['fd_se']:.1f} | {r['clip_score']:.2f} ± {r['clip_score_se']:.2f}")

    for w in res["clip"]:
        lines.append(f"| {w} | {cell(res['clip'][w])} | {cell(res['cfg'][w])} |")
    lines += ["", f"`{path.with_suffix('.png').name}`: rows CLIP guidance at w = "
              f"{', '.join(map(str, GRID_WEIGHTS))}, then CFG at the same w; columns the "
              "digits 0-9 twice, one x_T per column and kind."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
