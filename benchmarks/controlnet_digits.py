"""ControlNet on digits (Weng, "ControlNet"; Zhang et al. 2023): hint adherence against training
steps beside FD, zero convolutions against their ablations, and the control scale.

A small unconditional U-Net base is trained on sklearn digits (8×8) with `difflab.runs.train`;
then a ControlNet with Sobel edge hints (`difflab.data.hints.edges`, threshold 0.5) is trained
on it three ways for the same number of updates, batch and learning rate:

- **zero**: ControlNet as in the paper (trainable copy of the encoder, 1×1 zero convolutions);
- **random**: the same branch with every connecting convolution (skips, middle, the hint
  encoder's last layer) at PyTorch's default initialisation — the paper's ablation "without zero
  convolutions";
- **finetune**: no copy: the whole base is fine-tuned with the hint encoder (its last layer
  zero) added to the stem's output (what ControlNet avoids).

Each is scored on the hints of the 180 held-out digits: **edge F1** between each hint and the
same detector applied to its sample (1 = every edge where the hint has one; the chance level is
the F1 between the hints and the edges of *other* real digits), and **FD** of the samples to the
train split beside the floor of the real test images (n = 180 both), DDIM 20 steps, seed 0.

1. Adherence and FD against training steps (the zero-conv branch's raw weights at each step):
   does adherence jump suddenly ("sudden convergence", Zhang et al. §4.3)?
2. Step 0 and the last step of the three variants: how much the random connections hurt the
   untouched model at step 0 (FD), and where each ends.
3. The control scale s ∈ {0, 0.25, 0.5, 1, 1.5, 2} of the zero-conv branch (EMA weights), and
   classifier-free guidance on the hint alone: ε̄ = (w+1) ε(x_t, hint) − w ε_base(x_t) (the
   unconditional branch WITHOUT the hint), w ∈ {0, 1, 3}. With an unconditional base, CFG with the
   hint in both branches is the plain controlled model (w has nothing to act on): the w = 0 row.
4. A class-conditional base (the same U-Net with labels, p_uncond 0.1) and its ControlNet
   (labels dropped 50 %, `difflab.runs.controlnet.train_controlnet`): CFG on the label with the
   hint kept in the unconditional branch (what `difflab sample --guidance` does) against an
   unconditional branch without the hint (the frozen base at ∅), w ∈ {0, 1, 3}: edge F1, FD and
   the committed classifier's accuracy on the requested label.

    nice -n 19 .venv/bin/python benchmarks/controlnet_digits.py           # ~6 min on 1 thread
    nice -n 19 .venv/bin/python benchmarks/controlnet_digits.py --quick   # smoke test, ~10 s

Writes results/controlnet_digits.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from difflab.build.data import image_split
from difflab.config import TrainConfig
from difflab.data import hints as hl
from difflab.data.fd import FDEvaluator
from difflab.nn.controlnet import HintEncoder, control_branch, controlled
from difflab.runs.controlnet_model import load_base
from difflab.runs.draw import draw
from difflab.runs.train import train
from difflab.training import fit
from difflab.training.controlnet import ControlNetObjective
from difflab.training.diffusion import LRSchedule

ROOT = Path(__file__).resolve().parent
SCALES = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
WEIGHTS = (0.0, 1.0, 3.0)


def base_config(steps: int, cond: str = "none") -> TrainConfig:
    return TrainConfig.from_dict(dict(
        dataset="digits", model_channels=16, channel_mult="1,2", num_res_blocks=1,
        attention="", steps=steps, batch=64, lr=2e-3, warmup=50, threads=1, device="cpu",
        checkpoint_every=10_000, seed=0, cond=cond))


def ensure_base(workdir: str, steps: int, cond: str = "none") -> Path:
    base_dir = Path(workdir) / f"base-{cond}-{steps}"
    if not (base_dir / "denoiser.ema.safetensors").is_file():
        t0 = time.perf_counter()
        train(base_config(steps, cond), base_dir, overwrite=True, progress=False,
              evaluate_after=False)
        print(f"base ({cond}): {steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    return base_dir


def class_conditional(args, scorer: Scorer) -> list[dict]:
    """A ControlNet on a class-conditional base (labels dropped 50 %), sampled with the test
    digits' labels and hints under CFG of weight w, the hint kept in the unconditional branch
    (``guidance.ClassifierFree``, what ``difflab sample`` does) or dropped with the label."""
    from difflab.build.conditioning import null_cond
    from difflab.guidance import ClassifierFree
    from difflab.runs.controlnet import train_controlnet
    from difflab.runs.load import load_run

    base_dir = ensure_base(args.workdir, args.base_steps, "class")
    out = Path(args.workdir) / f"controlnet-class-{args.steps}"
    if not (out / "control.ema.safetensors").is_file() or not (out / "metrics.json").is_file():
        train_controlnet(base_dir, out, steps=args.steps, lr=args.lr, batch=64, device="cpu",
                         threads=1, evaluate=False, overwrite=True)
    cfg, model, _ = load_run(out)
    _, base, _ = load_base(base_dir)
    rows = []
    for w in WEIGHTS:
        both = ClassifierFree(model, w, null_cond(cfg))
        rows.append({"w": w, "uncond": "hint kept", **scorer(both, labels=True)})
        if w:
            rows.append({"w": w, "uncond": "no hint",
                         **scorer(NoHintUncond(model, base, w, cfg.num_classes), labels=True)})
    return rows


class HintedUNet(nn.Module):
    """The 'finetune' ablation: the base itself, trained, with the hint encoder's features
    added to its stem's output (no copy, no zero convolutions on the skips)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base.requires_grad_(True)
        self.hint_encoder = HintEncoder(1, base.skip_channels[0])

    def forward(self, x_t: Tensor, t: Tensor, hint: Tensor | None = None, **cond) -> Tensor:
        b = self.base
        c = b.condition(t, **cond)
        h = b.inp(x_t)
        if hint is not None:
            h = h + self.hint_encoder(hint)
        skips = []
        for stage in b.down:
            h = stage(h, c)
            skips.append(h)
        return b.decode(b.mid(h, c), skips, c)


class FineTune(ControlNetObjective):
    def eps(self, model, x_t, t, hint, **cond):
        return model(x_t, t, hint=hint, **cond)


class HintGuided(nn.Module):
    """ε̄ = (w+1) ε(x_t, t, hint) − w ε_base(x_t, t): CFG with the hint as the condition."""

    def __init__(self, model: nn.Module, base: nn.Module, w: float):
        super().__init__()
        self.model, self.base, self.w = model, base, w

    def forward(self, x_t: Tensor, t: Tensor, hint: Tensor) -> Tensor:
        eps = self.model(x_t, t, hint=hint)
        return eps if self.w == 0 else (self.w + 1) * eps - self.w * self.base(x_t, t)


class NoHintUncond(nn.Module):
    """ε̄ = (w+1) ε(x_t, t, y, hint) − w ε_base(x_t, t, ∅): CFG on the label whose
    unconditional branch drops the hint too (the frozen base alone)."""

    def __init__(self, model: nn.Module, base: nn.Module, w: float, null: int):
        super().__init__()
        self.model, self.base, self.w, self.null = model, base, w, null

    def forward(self, x_t: Tensor, t: Tensor, hint: Tensor, y: Tensor) -> Tensor:
        eps = self.model(x_t, t, hint=hint, y=y)
        if self.w == 0:
            return eps
        return (self.w + 1) * eps - self.w * self.base(x_t, t, y=torch.full_like(y, self.null))


class Scorer:
    def __init__(self, cfg: TrainConfig, schedule, n: int, steps: int):
        test = image_split(cfg, "test")
        self.x, self.y = test.x[:n], test.y[:n]
        self.hints = hl.edges(self.x)  # (n, 1, 8, 8)
        self.schedule, self.steps = schedule, steps
        self.fd = FDEvaluator.for_dataset("digits", 8)
        self.floor = self.fd.floor()
        self.chance = hl.edge_f1(hl.edges(self.x.roll(1, 0)), self.hints)["f1"]

    @torch.inference_mode()
    def __call__(self, model: nn.Module, labels: bool = False) -> dict:
        was = model.training
        model.eval()
        cond = {"hint": self.hints, **({"y": self.y} if labels else {})}

        def bound(x_t, t):
            return model(x_t, t, **cond)

        x0 = draw(bound, self.schedule, tuple(self.x.shape), sampler="ddim", steps=self.steps,
                  seed=0)[0].clamp(-1, 1)
        model.train(was)
        f = hl.edge_f1(hl.edges(x0), self.hints)
        out = {"edge_f1": f["f1"], "precision": f["precision"], "recall": f["recall"],
               "fd": self.fd.fd(x0)}
        if labels:
            out["accuracy"] = self.fd.accuracy(x0, self.y)
        return out


def train_variant(name: str, base_dir: Path, scorer: Scorer, steps: int, lr: float,
                  eval_at: tuple[int, ...], seed: int = 0
                  ) -> tuple[list[dict], nn.Module, nn.Module, float]:
    """Train one variant with ``seed`` (the hint encoder's initialisation, the batches and
    noise); returns (rows at the steps ``eval_at``, the trained model, its base, seconds of
    training alone)."""
    cfg, base, schedule = load_base(base_dir)
    torch.manual_seed(1 + seed)
    train_x = image_split(cfg, "train").x
    sched = LRSchedule(lr, steps, warmup=20, kind="cosine")
    if name == "finetune":
        model = HintedUNet(base)
        obj = FineTune(nn.Identity(), model, schedule, train_x, hl.edges(train_x), batch=64,
                       lr=sched, ema_decay=0.999, grad_clip=1.0)
        scored = model
    else:
        control = control_branch(base, zero=name == "zero")
        obj = ControlNetObjective(base, control, schedule, train_x, hl.edges(train_x),
                                  batch=64, lr=sched, ema_decay=0.999, grad_clip=1.0)
        scored = controlled(base, control)
    rows, seconds = [], [0.0]
    if 0 in eval_at:
        rows.append({"variant": name, "seed": seed, "step": 0, **scorer(scored)})
    clock = [time.perf_counter()]

    def on_update(step: int, loss: float) -> None:
        if step in eval_at:
            seconds[0] += time.perf_counter() - clock[0]
            rows.append({"variant": name, "seed": seed, "step": step, "loss": loss,
                         **scorer(scored)})
            print(f"  {name} seed {seed} step {step}: {rows[-1]}", flush=True)
            clock[0] = time.perf_counter()

    fit(obj, steps=steps, generator=torch.Generator().manual_seed(seed), on_update=on_update)
    if name != "finetune":
        scored = controlled(base, obj.ema.eval())  # the EMA branch, as sampled
    return rows, scored, base, seconds[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny budgets")
    p.add_argument("--base-steps", type=int, default=1500)
    p.add_argument("--steps", type=int, default=600, help="updates of each ControlNet variant")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n", type=int, default=180, help="held-out hints scored (180: all)")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--seeds", type=int, default=2, help="seeds of the zero-convolution curve")
    p.add_argument("--workdir", default="runs/bench-controlnet", help="where the base run is kept "
                   "(reused when present)")
    p.add_argument("--out", default=str(ROOT / "results" / "controlnet_digits"))
    args = p.parse_args()
    if args.quick:
        args.base_steps, args.steps, args.n, args.sample_steps = 40, 20, 40, 5
        args.out += "_quick"
        args.workdir += "_quick"
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    base_dir = ensure_base(args.workdir, args.base_steps)
    cfg, base, schedule = load_base(base_dir)
    scorer = Scorer(cfg, schedule, args.n, args.sample_steps)
    S = args.steps
    curve_at = tuple(sorted({0, *(k for k in (25, 50, 100, 150, 200, 300, 400, 500) if k < S),
                             S}))
    results: dict = {"settings": vars(args), "fd_floor": scorer.floor,
                     "chance_edge_f1": scorer.chance,
                     "base_params": sum(p.numel() for p in base.parameters())}
    curve, zero_model, zero_base, zero_s = train_variant("zero", base_dir, scorer, S, args.lr,
                                                         curve_at)
    for seed in range(1, args.seeds):
        curve += train_variant("zero", base_dir, scorer, S, args.lr, curve_at, seed)[0]
    results["curve"] = curve
    ends = [row for row in curve if row["seed"] == 0 and row["step"] in (0, S)]
    seconds = {"zero": zero_s}
    for name in ("random", "finetune"):
        rows, _, _, s = train_variant(name, base_dir, scorer, S, args.lr, (0, S))
        ends += rows
        seconds[name] = s
    results["variants"] = ends
    results["train_seconds"] = seconds
    scales = []
    for s in SCALES:
        zero_model.conditioning_scale = s
        scales.append({"scale": s, **scorer(zero_model)})
    zero_model.conditioning_scale = 1.0
    results["scales"] = scales
    results["cfg"] = [{"w": w, **scorer(HintGuided(zero_model, zero_base, w))} for w in WEIGHTS]
    results["class_cfg"] = class_conditional(args, scorer)
    results["seconds"] = time.perf_counter() - t_all
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    a = r["settings"]
    lines = ["# ControlNet on digits (8×8, edge hints)\n",
             f"Base: U-Net 16 channels ({r['base_params']:,} parameters), {a['base_steps']} "
             f"steps. Each variant: {a['steps']} updates, batch 64, lr {a['lr']} (warm-up 20, "
             f"cosine). Scored on the hints of {a['n']} held-out digits, DDIM "
             f"{a['sample_steps']} steps, seed 0. FD floor {r['fd_floor']:.1f}; chance edge F1 "
             f"(hints vs other digits' edges) {r['chance_edge_f1']:.3f}; real digits 1.000. "
             f"Run time {r['seconds']:.0f} s (1 thread).\n",
             "## 1. Adherence and FD against steps (zero convolutions, raw weights)\n"]
    seeds = sorted({row["seed"] for row in r["curve"]})
    lines += ["| step | " + " | ".join(f"edge F1 (seed {k}) | FD (seed {k})" for k in seeds)
              + " | loss (seed 0) |", "|---" * (2 * len(seeds) + 2) + "|"]
    by = {(row["seed"], row["step"]): row for row in r["curve"]}
    for step in sorted({row["step"] for row in r["curve"]}):
        cells = [f"{by[k, step]['edge_f1']:.3f} | {by[k, step]['fd']:.1f}" for k in seeds]
        loss = by[0, step].get("loss")
        lines.append(f"| {step} | " + " | ".join(cells) + " | "
                     + (f"{loss:.4f}" if loss is not None else "–") + " |")
    lines += ["\n## 2. Zero convolutions against their ablations (raw weights)\n",
              "| variant | step | edge F1 | FD | train s |", "|---|---|---|---|---|"]
    for row in r["variants"]:
        lines.append(f"| {row['variant']} | {row['step']} | {row['edge_f1']:.3f} | "
                     f"{row['fd']:.1f} | {r['train_seconds'][row['variant']]:.0f} |")
    lines += ["\n## 3. Control scale and hint guidance (zero convolutions, EMA weights)\n",
              "| control scale | edge F1 | FD |", "|---|---|---|"]
    lines += [f"| {row['scale']} | {row['edge_f1']:.3f} | {row['fd']:.1f} |"
              for row in r["scales"]]
    lines += ["\n| CFG w (uncond branch: base, no hint) | edge F1 | FD |", "|---|---|---|"]
    lines += [f"| {row['w']} | {row['edge_f1']:.3f} | {row['fd']:.1f} |" for row in r["cfg"]]
    lines += ["\n## 4. A class-conditional base: CFG on the label, with and without the hint in "
              "the unconditional branch\n",
              "ControlNet trained with the labels dropped 50 % (same updates and lr, the base's "
              "warm-up); samples with the test digits' labels and hints; accuracy: the committed "
              "classifier's, on the requested label.\n",
              "| w | unconditional branch | edge F1 | FD | accuracy |", "|---|---|---|---|---|"]
    lines += [f"| {row['w']} | {row['uncond']} | {row['edge_f1']:.3f} | {row['fd']:.1f} | "
              f"{row['accuracy']:.3f} |" for row in r["class_cfg"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
