"""Do the digits models copy their 1617 training images? Nearest-neighbour distances on sklearn
digits, for the question benchmarks/guidance_digits.py left open: the class-conditional model's
FD (15) lies far below the floor (50, held-out real digits against the train split).

For each model, 3 draws of 180 samples (DDIM, 50 steps, clamped to [−1, 1]; a conditional run
takes every class in turn), and for the 180 held-out test digits as the reference, the
Euclidean distance (over the 64 pixels in [−1, 1]) from each image to its nearest training
image. Reported: the median distance, and the fraction of images closer to a training image
than 95 % of the test digits are (the 5th percentile of the test distances; about 0.05 for
images as novel as held-out digits) and than the closest test digit is ("near copies"). Also
the FD of random sets of 180 train digits to the train split, beside the floor.

    nice -n 10 .venv/bin/python benchmarks/memorisation_digits.py          # ≈ 2-5 min
    nice -n 10 .venv/bin/python benchmarks/memorisation_digits.py --quick  # smoke test

Runs (defaults: those of benchmarks/guidance_digits.py and digits_figures.py): the
unconditional `digits` run and the `digits-cond` run at w = 0 and w = 2. Writes
benchmarks/results/memorisation_digits.{md,json}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
N, DRAWS, STEPS = 180, 3, 50


def nn_distance(x: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """(n,) Euclidean distance of each image of x (n, …) to its nearest row of train (N, …)."""
    return torch.cdist(x.flatten(1).double(), train.flatten(1).double()).min(1).values


def samples(run: Path, w: float | None) -> torch.Tensor:
    """DRAWS × N samples of ``run`` (DDIM, STEPS steps); conditional runs: every class in turn,
    classifier-free guidance of weight w."""
    from difflab.build.conditioning import guided, sample_conditions
    from difflab.runs.draw import draw
    from difflab.runs.load import load_run

    cfg, model, schedule = load_run(run)
    if cfg.cond != "none":
        cond, _ = sample_conditions(cfg, DRAWS * N)
        model = guided(model, schedule, cfg, cond, w=w or 0.0, sampler="ddim", steps=STEPS)
    x0, _, _ = draw(model, schedule, (DRAWS * N, 1, cfg.image_size, cfg.image_size),
                    sampler="ddim", steps=STEPS, seed=1234)
    return x0.clamp(-1, 1)


def summary(d: torch.Tensor, q05: float, q00: float) -> dict:
    return {"median": d.median().item(), "below_test_q05": (d < q05).double().mean().item(),
            "below_test_min": (d < q00).double().mean().item(), "n": len(d)}


def main() -> None:
    from difflab.data.images import digits

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uncond", type=Path, default=Path("runs/bench-digits/linear-simple"))
    p.add_argument("--cond", type=Path, default=Path("runs/bench-cond/digits-cond"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "memorisation_digits")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 draw of 20 samples, "
                   "5 steps; writes memorisation_digits_quick.*")
    args = p.parse_args()
    global N, DRAWS, STEPS
    if args.quick:
        N, DRAWS, STEPS = 20, 1, 5
        args.out = args.out.with_name(args.out.name + "_quick")
    torch.set_num_threads(1)
    train, test = digits("train").x, digits("test").x  # (1617, 1, 8, 8), (180, 1, 8, 8)
    d_test = nn_distance(test, train)
    q05, q00 = torch.quantile(d_test, 0.05).item(), d_test.min().item()
    rows = {"held-out test digits": summary(d_test, q05, q00)}
    for label, run, w in (("unconditional digits", args.uncond, None),
                          ("digits-cond, w = 0", args.cond, 0.0),
                          ("digits-cond, w = 2", args.cond, 2.0)):
        rows[label] = summary(nn_distance(samples(run, w), train), q05, q00)
        print(label, rows[label], flush=True)
    from difflab.data.fd import FDEvaluator

    fd = FDEvaluator.for_dataset("digits", 8)  # FD of train images to their own split
    g = torch.Generator().manual_seed(0)
    fd_train = [fd.fd(train[torch.randperm(len(train), generator=g)[:N]]) for _ in range(5)]
    result = {"runs": {"uncond": str(args.uncond), "cond": str(args.cond)},
              "draws": DRAWS, "n": N, "steps": STEPS, "test_q05": q05, "test_min": q00,
              "rows": rows, "fd_floor_test": fd.floor(), "fd_train_subsets": fd_train}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["Nearest-training-image distance (L2 over 64 pixels in [−1, 1]) on sklearn digits "
             f"(1617 train images); samples: DDIM {STEPS} steps, {DRAWS} × {N}. Test digits' "
             f"5th percentile {q05:.2f}, minimum {q00:.2f}.", "",
             "| images | median distance | closer than 95 % of test digits | closer than "
             "every test digit |", "| --- | ---: | ---: | ---: |"]
    for label, r in rows.items():
        lines.append(f"| {label} (n = {r['n']}) | {r['median']:.2f} | "
                     f"{r['below_test_q05']:.3f} | {r['below_test_min']:.3f} |")
    lines += ["", f"FD to the train split (the benchmarks' FD): the held-out test digits (the "
              f"floor) {fd.floor():.1f}; five random sets of {N} train digits "
              + ", ".join(f"{v:.1f}" for v in fd_train) + ". A model that matches the train "
              "split's distribution without copying it can score below the floor."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
