"""Cascaded diffusion on MNIST (Ho et al. 2021, "Cascaded Diffusion Models"; Saharia et al. 2022,
Imagen; issue 14): a 16×16 base and a 16 → 32 super-resolution stage, at small budgets.

1. **Augmentation matters** (CDM's ablation): three super-resolution runs at the same budget —
   no augmentation, Gaussian noise augmentation (s ~ U{0..``--aug-max``}, s embedded) and blur
   (σ ~ U[0.4, 0.6]) — each conditioned on the real test images average-pooled to 16×16
   (FD and PSNR) and on the same base samples (FD): the gap fd_base − fd_real is what
   conditioning on a model's samples costs.
2. **Sampling aug level** (Imagen): the cascade's FD against the sampling-time level s of the
   Gaussian run.
3. **Truncated vs non-truncated**: the same Gaussian-trained run, conditioned on the base's x_0
   forward-diffused to s, or on the base chain stopped at step s (its x_s).
4. **Cascade vs one model at 32×32** with the same total training time (base + one
   super-resolution run): FD and sampling throughput (images/s).

Every stage samples by DDIM (``--sample-steps``) with static thresholding of x̂_0 (Imagen; at
these budgets the unclipped chains saturate). FD is of ``-n`` images (default 100) in the
committed 32×32 MNIST classifier's features to the train split; compare it with
``fd_real_images`` (``-n`` real test images, the floor at that n). The budgets are tiny
(hundreds of updates of batch 32 of small U-Nets, one thread) so that the whole benchmark fits
in about 30 minutes on a loaded laptop core: the FDs are far above the floor and the comparisons
are between runs of this benchmark only. Finished runs under ``--workdir`` are reused.

    nice -n 19 .venv/bin/python benchmarks/cascade_mnist.py            # ~20-30 min, 1 thread
    nice -n 19 .venv/bin/python benchmarks/cascade_mnist.py --quick    # smoke, ~2 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
AUGMENTS = ("none", "gaussian", "blur")
# every stage samples with Imagen's static thresholding of x̂_0 (Saharia et al. 2022, §2.3):
# at these budgets the unclipped DDIM chains of the small models saturate to white or black
CLIP = "static"


def configs(args):
    from difflab.config import TrainConfig

    common = dict(dataset="mnist", model="unet", attention="", mid_attention=False, batch=32,
                  lr=2e-3, warmup=50, ema_decay=0.99, threads=1, checkpoint_every=100_000,
                  eval_sampler="ddim", eval_steps=args.sample_steps, n_eval=args.n, seed=0,
                  prediction=args.prediction)
    base = TrainConfig(image_size=16, model_channels=32, channel_mult="1,2",
                       steps=args.base_steps, **common)
    srs = {aug: TrainConfig(image_size=32, model_channels=16, channel_mult="1,2",
                            steps=args.sr_steps, sr_low_res=16, sr_augment=aug,
                            sr_aug_max=args.aug_max if aug == "gaussian" else 0,
                            sr_aug_level=args.aug_level if aug == "gaussian" else 0,
                            **common) for aug in AUGMENTS}
    single = TrainConfig(image_size=32, model_channels=32, channel_mult="1,2,2", steps=10,
                         **common)
    return base, srs, single


def train_timed(cfg, run_dir: Path) -> float:
    """Train ``cfg`` into ``run_dir`` (reused when done); the training seconds."""
    from difflab.runs.train import train

    marker = run_dir / "bench_seconds.json"
    if marker.is_file():
        return json.loads(marker.read_text())["seconds"]
    t0 = time.perf_counter()
    train(cfg, run_dir, overwrite=True, progress=False, evaluate_after=False)
    seconds = time.perf_counter() - t0
    marker.write_text(json.dumps({"seconds": seconds}))
    return seconds


def step_seconds(cfg, probe: int = 8) -> float:
    from difflab.build.data import training_set
    from difflab.build.model import build_schedule
    from difflab.training import OBJECTIVES, fit

    x, cfg, conds = training_set(cfg)
    obj = OBJECTIVES[cfg.method](cfg, build_schedule(cfg), x, conds, None)
    g = torch.Generator().manual_seed(0)
    fit(obj, steps=2, generator=g)
    t0 = time.perf_counter()
    fit(obj, steps=2 + probe, generator=g)
    return (time.perf_counter() - t0) / probe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workdir", default="runs/bench_cascade")
    p.add_argument("-n", type=int, default=100)
    p.add_argument("--base-steps", type=int, default=800)
    p.add_argument("--sr-steps", type=int, default=600)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--aug-max", type=int, default=250)
    p.add_argument("--aug-level", type=int, default=50)
    p.add_argument("--levels", default="0,25,50,100,200")
    p.add_argument("--prediction", default="v", choices=("eps", "v", "x0"),
                   help="what every stage's network predicts (v: Salimans & Ho 2022)")
    args = p.parse_args()
    if args.quick:
        args.n, args.base_steps, args.sr_steps, args.sample_steps = 20, 20, 20, 5
        args.workdir += "_quick"
    torch.set_num_threads(1)
    from difflab.build.data import image_split
    from difflab.pipelines.cascade import cascade, downsample
    from difflab.runs.cascade import fd_evaluator, load_stage, psnr, super_resolve

    work = Path(args.workdir) / args.prediction
    base_cfg, sr_cfgs, single_cfg = configs(args)
    seconds = {"base": train_timed(base_cfg, work / "base16")}
    for aug, cfg in sr_cfgs.items():
        seconds[f"sr_{aug}"] = train_timed(cfg, work / f"sr_{aug}")
    budget = seconds["base"] + seconds["sr_gaussian"]
    done = sorted(work.glob("single32_*/bench_seconds.json"))  # a finished one: reuse it
    if done:
        single_steps = int(done[0].parent.name.split("_")[1])
    else:  # the base's and the SR stage's compute in the single model's steps, from step
        # times probed one after the other now (wall seconds of runs trained at different
        # moments on a shared machine are not comparable)
        probe = {k: step_seconds(c) for k, c in
                 (("base", base_cfg), ("sr", sr_cfgs["gaussian"]), ("single", single_cfg))}
        single_steps = max(10, round((args.base_steps * probe["base"]
                                      + args.sr_steps * probe["sr"]) / probe["single"]))
    single_cfg = dataclasses.replace(single_cfg, steps=single_steps)
    seconds["single32"] = train_timed(single_cfg, work / f"single32_{single_steps}")

    n, levels = args.n, [int(v) for v in args.levels.split(",")]
    fd32, fd16 = fd_evaluator("mnist", 32), fd_evaluator("mnist", 16)
    test = image_split(sr_cfgs["none"], "test").x[:n]  # (n, 1, 32, 32)
    z_real = downsample(test, 16)
    out: dict = {"n": n, "prediction": args.prediction, "train_seconds": seconds, "steps": {
        "base": args.base_steps, "sr": args.sr_steps, "single32": single_steps},
        "sample_steps": args.sample_steps, "aug_max": args.aug_max,
        "fd_real_images": fd32.fd(test), "fd_real_images_16": fd16.fd(z_real)}

    # the base's samples, shared by every super-resolution run
    _, base = load_stage(work / "base16", n, threshold=CLIP)
    g = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    with torch.inference_mode():
        z_base = base.sample(base.model({}), torch.randn((n, *base.shape), generator=g), 0,
                             g).clamp(-1, 1)
    base_seconds = time.perf_counter() - t0
    out["fd_base16"] = fd16.fd(z_base)

    def sr(stage, z, seed=2):
        t = time.perf_counter()
        x = super_resolve(stage, z, torch.Generator().manual_seed(seed))
        return x, time.perf_counter() - t

    # 1. augmentation matters
    table1 = {}
    for aug in AUGMENTS:
        _, stage = load_stage(work / f"sr_{aug}", n, threshold=CLIP)
        x_real, _ = sr(stage, z_real)
        x_base, sr_seconds = sr(stage, z_base)
        table1[aug] = {"fd_real": fd32.fd(x_real), "psnr_real": psnr(x_real, test).mean().item(),
                       "fd_base": fd32.fd(x_base), "aug_level": stage.aug_level,
                       "sr_seconds": sr_seconds}
        table1[aug]["fd_gap"] = table1[aug]["fd_base"] - table1[aug]["fd_real"]
    out["augmentation"] = table1
    bilinear = torch.nn.functional.interpolate(z_real, size=32, mode="bilinear",
                                               align_corners=False)
    out["psnr_bilinear"] = psnr(bilinear, test).mean().item()

    # 2. sampling aug level, 3. truncated vs non-truncated (the gaussian run)
    sweep, trunc = {}, {}
    for s in levels:
        _, stage = load_stage(work / "sr_gaussian", n, aug_level=s, threshold=CLIP)
        x_base, _ = sr(stage, z_base)
        sweep[s] = {"fd_base": fd32.fd(x_base), "fd_real": fd32.fd(sr(stage, z_real)[0])}
        if s == 0:
            continue
        t_stage = dataclasses.replace(stage, augment="truncated")
        x_t = cascade([base, t_stage], n, torch.Generator().manual_seed(1))[-1]
        trunc[s] = {"fd_truncated": fd32.fd(x_t), "fd_non_truncated": sweep[s]["fd_base"]}
    out["aug_level_sweep"], out["truncated"] = sweep, trunc

    # 4. the cascade against one model at 32×32 with the same training time
    _, single = load_stage(work / f"single32_{single_steps}", n, threshold=CLIP)
    g = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    with torch.inference_mode():
        x_single = single.sample(single.model({}),
                                 torch.randn((n, *single.shape), generator=g), 0, g).clamp(-1, 1)
    single_seconds = time.perf_counter() - t0
    cascade_seconds = base_seconds + table1["gaussian"]["sr_seconds"]
    out["cascade_vs_single"] = {
        "cascade": {"fd": table1["gaussian"]["fd_base"], "train_seconds": budget,
                    "images_per_second": n / cascade_seconds},
        "single32": {"fd": fd32.fd(x_single), "train_seconds": seconds["single32"],
                     "images_per_second": n / single_seconds}}
    write(out, args)


def write(out: dict, args) -> None:
    name = "cascade_mnist_quick" if args.quick else f"cascade_mnist_{out['prediction']}"
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    f = lambda v: f"{v:.1f}"  # noqa: E731
    lines = [f"# Cascaded diffusion on MNIST (16 → 32), n = {out['n']}", "",
             f"Every network predicts {out['prediction']}. "
             f"Steps: base {out['steps']['base']}, each SR run {out['steps']['sr']}, single "
             f"32×32 model {out['steps']['single32']} (batch 32, one thread); DDIM "
             f"{out['sample_steps']} steps a stage, static thresholding. FD of {out['n']} real "
             f"test images: "
             f"{f(out['fd_real_images'])} (32×32), {f(out['fd_real_images_16'])} (16×16, through "
             f"the 32 classifier); base samples at 16×16: {f(out['fd_base16'])}. PSNR of bilinear "
             f"upsampling: {out['psnr_bilinear']:.2f} dB.", "",
             "## 1. Augmentation (same budget)", "",
             "| SR run | s at sampling | FD (real low-res) | PSNR (dB) | FD (base samples) | gap |",
             "|---|---|---|---|---|---|"]
    for aug, r in out["augmentation"].items():
        lines.append(f"| {aug} | {r['aug_level']} | {f(r['fd_real'])} | {r['psnr_real']:.2f} | "
                     f"{f(r['fd_base'])} | {f(r['fd_gap'])} |")
    lines += ["", "## 2. Sampling aug level s (gaussian run)", "",
              "| s | FD (base samples) | FD (real low-res) |", "|---|---|---|"]
    for s, r in out["aug_level_sweep"].items():
        lines.append(f"| {s} | {f(r['fd_base'])} | {f(r['fd_real'])} |")
    lines += ["", "## 3. Truncated vs non-truncated (gaussian run, base samples)", "",
              "| s | truncated (base chain stopped at s) | non-truncated (x_0 diffused to s) |",
              "|---|---|---|"]
    for s, r in out["truncated"].items():
        lines.append(f"| {s} | {f(r['fd_truncated'])} | {f(r['fd_non_truncated'])} |")
    c = out["cascade_vs_single"]
    lines += ["", "## 4. Cascade vs one 32×32 model, same training compute", "",
              "The single model's steps match base + SR steps in step times probed side by side "
              "(train s: wall seconds of each run, on a shared machine whose load varied).", "",
              "| model | FD | train s | images/s |", "|---|---|---|---|"]
    for name_, r in c.items():
        lines.append(f"| {name_} | {f(r['fd'])} | {r['train_seconds']:.0f} | "
                     f"{r['images_per_second']:.1f} |")
    (ROOT / "results" / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
