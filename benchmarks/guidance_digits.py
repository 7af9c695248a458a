"""Guidance on digits: the fidelity-diversity trade-off of Weng eq. (24)-(26), thresholding, and
text prompts.

- **CFG** (eq. 26) on the class-conditional `digits-cond` run, and **classifier guidance**
  (eq. 25, DDIM) with a noisy classifier from `difflab train-classifier` on the unconditional
  `digits` run: the committed classifier's accuracy on the requested class, and FD to the train
  split, for w ∈ {0, 0.5, 1, 2, 4, 8}. The post's claim: accuracy (fidelity) rises with w while
  FD, which also measures diversity and coverage of the classes, first falls and then rises.
- **Thresholding** (Imagen) at large CFG weights: none, static, dynamic (p = 0.995, 0.95, 0.9).
- **Text**: the `digits-text` run sampled with prompts such as "a handwritten three"; accuracy
  on the digit the prompt names, for template prompts and for paraphrases not in the templates.

Every run is trained by the real commands (`difflab train --preset digits-cond`, `--preset
digits-text`, `--preset digits`, `difflab train-classifier --preset digits`); a finished run
directory under `--workdir` is reused. Samples are drawn with every class in turn (18 per class in
n = 180), DDIM with `--eval-steps` steps; FD and accuracy are means over `--draws` seeds ± their
standard error, FD at n = 180 beside the floor of the 180 real test images.

    nice -n 19 .venv/bin/python benchmarks/guidance_digits.py            # ~1 h on 2 busy cores
    nice -n 19 .venv/bin/python benchmarks/guidance_digits.py --quick    # smoke test, ~3 min
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
DIFFLAB = str(Path(sys.executable).with_name("difflab"))
WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATE_PROMPT = "a handwritten {w}"  # one of difflab.data.captions.DIGIT_TEMPLATES
PARAPHRASES = ("a drawing of the number {w}", "{d}")  # not among the templates


def ensure(cmd: list[str], out: Path, done: str) -> Path:
    """Run ``difflab cmd --out out`` unless ``out/done`` exists; return out. A run directory
    that another process is still training (a checkpoint written in the last 10 minutes, no
    ``done``) is waited for rather than overwritten."""
    while not (out / done).exists() and (out / "checkpoint.safetensors").exists() and (
            time.time() - (out / "checkpoint.safetensors").stat().st_mtime < 600):
        print(f"[wait] {out} is training elsewhere", flush=True)
        time.sleep(30)
    if (out / done).exists():
        print(f"[reuse] {out}", flush=True)
        return out
    full = [DIFFLAB, *cmd, "--out", str(out), "--no-progress", "--overwrite"]
    print(f"[run] {' '.join(full[1:])}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(full, check=True)
    print(f"[done] {out} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return m, se


class Cache:
    """Measurements kept in a JSON file as they are made, so an interrupted benchmark resumes."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str, run: Path, **kw) -> dict:
        """``measure(run, **kw)``, made once."""
        if key not in self.data:
            self.data[key] = measure(run, **kw)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=1) + "\n")
        print(f"{key}: {self.data[key]}", flush=True)
        return self.data[key]


def measure(run: Path, *, draws: int, steps: int, n: int = 180, **kw) -> dict:
    """FD and accuracy of ``run`` sampled with guidance ``kw`` (see conditioning.guided)."""
    from difflab.build.conditioning import guided, sample_conditions
    from difflab.runs.evaluate import evaluate_images
    from difflab.runs.load import load_run

    cfg, model, schedule = load_run(run)
    labels, prompt = kw.pop("labels", None), kw.pop("prompt", None)
    cond, y = sample_conditions(cfg, n, labels, prompt)
    m = guided(model, schedule, cfg, cond, sampler="ddim", steps=steps, **kw)
    fds, accs, t0 = [], [], time.perf_counter()
    torch.set_num_threads(1)
    for seed in range(draws):
        metrics = evaluate_images(m, schedule, cfg, sampler="ddim", steps=steps, n=n, seed=seed,
                                  labels=y)[0]
        fds.append(metrics["fd"])
        accs.append(metrics["accuracy"])
    fd, fd_se = mean_se(fds)
    acc, acc_se = mean_se(accs)
    return {"fd": fd, "fd_se": fd_se, "accuracy": acc, "accuracy_se": acc_se,
            "fd_floor": metrics["fd_floor"], "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--eval-steps", type=int, default=50, help="DDIM steps")
    p.add_argument("-n", type=int, default=180, help="samples per draw (the FD floor's 180)")
    p.add_argument("--train-steps", type=int, default=1500)
    p.add_argument("--workdir", type=Path, default=Path("runs/bench-cond"))
    p.add_argument("--uncond", type=Path, default=Path("runs/bench-digits/linear-simple"),
                   help="an unconditional `--preset digits` run (trained here if missing)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "guidance_digits")
    p.add_argument("--quick", action="store_true", help="smoke test: 30 training steps, 1 draw")
    args = p.parse_args()
    if args.quick:
        args.train_steps, args.draws, args.eval_steps, args.n = 30, 1, 5, 30
        args.workdir, args.uncond = args.workdir / "quick", args.workdir / "quick" / "uncond"
        args.out = args.out.with_name(args.out.name + "_quick")
    steps = ["--steps", str(args.train_steps)]
    if args.quick:  # and a cheap evaluation after training
        steps += ["--n-eval", "20", "--eval-steps", "5"]
    w = args.workdir
    runs = {
        "cond": ensure(["train", "--preset", "digits-cond", *steps], w / "digits-cond",
                       "metrics.json"),
        "uncond": ensure(["train", "--preset", "digits", *steps],
                         args.uncond, "metrics.json"),
        "classifier": ensure(["train-classifier", "--preset", "digits", "--lr", "1e-3",
                              *steps[:2]],
                             w / "classifier", "metrics.json"),
    }
    from difflab.runs.classifier import load_classifier_run

    clf_cfg, classifier = load_classifier_run(runs["classifier"])
    clf_acc = json.loads((runs["classifier"] / "metrics.json").read_text())["test_accuracy_at_t"]
    kw = dict(draws=args.draws, steps=args.eval_steps, n=args.n)
    res: dict = {"settings": {k: str(v) for k, v in vars(args).items()},
                 "classifier_test_accuracy_at_t": clf_acc, "cfg": {}, "classifier": {},
                 "threshold": {}, "text": {}}
    cache = Cache(args.out.with_name(args.out.name + "_partial.json"))
    for wt in WEIGHTS:
        res["cfg"][wt] = cache.get(f"CFG w={wt}", runs["cond"], w=wt, **kw)
        res["classifier"][wt] = cache.get(f"classifier w={wt}", runs["uncond"], w=wt,
                                          classifier=classifier, labels=range(10), **kw)
    for wt in (4.0, 8.0):
        for th in ("none", "static", "dynamic", "dynamic p=0.95", "dynamic p=0.9"):
            name, _, p_value = th.partition(" p=")  # dynamic at a lower percentile
            extra = {"threshold_p": float(p_value)} if p_value else {}
            res["threshold"][f"{wt}/{th}"] = cache.get(f"threshold w={wt} {th}", runs["cond"],
                                                       w=wt, threshold=name, **extra, **kw)
    runs["text"] = ensure(["train", "--preset", "digits-text", *steps], w / "digits-text",
                          "metrics.json")  # last: it may still be training from another shell
    for wt in (0.0, 2.0):
        for template in (TEMPLATE_PROMPT, *PARAPHRASES):
            accs = []
            for d in range(10):
                prompt = template.format(w=WORDS[d], d=d)
                r = cache.get(f"text w={wt} {prompt!r}", runs["text"], w=wt, prompt=prompt,
                              labels=[d], n=max(2, args.n // 18 * 5), draws=1,
                              steps=args.eval_steps)
                accs.append(r["accuracy"])
            res["text"][f"{wt}/{template}"] = {"per_digit": accs,
                                                "mean": statistics.fmean(accs)}
            print(f"text w={wt} '{template}': {statistics.fmean(accs):.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(res, runs, args, args.out.with_suffix(".md"))
    plot(res, args.out.with_name(args.out.name + ".png"))
    print(args.out.with_suffix(".md"))


def write_markdown(res: dict, runs: dict, args, path: Path) -> None:
    floor = next(iter(res["cfg"].values()))["fd_floor"]
    lines = [f"# Guidance on digits ({args.draws} draws of n = 180, DDIM {args.eval_steps} "
             f"steps; FD floor {floor:.1f})", "",
             f"Runs: {', '.join(f'{k} = `{v}`' for k, v in runs.items())}. Noisy classifier's "
             "test accuracy at t: " + ", ".join(
                 f"{t}: {a:.2f}" for t, a in sorted(res["classifier_test_accuracy_at_t"].items(),
                                                    key=lambda kv: int(kv[0]))) + ".", "",
             "| w | CFG accuracy | CFG FD | classifier guidance accuracy | classifier guidance "
             "FD |",
             "|---:|---|---|---|---|"]
    for wt in WEIGHTS:
        a, b = res["cfg"][wt], res["classifier"][wt]
        lines.append(f"| {wt} | {a['accuracy']:.3f} ± {a['accuracy_se']:.3f} | "
                     f"{a['fd']:.1f} ± {a['fd_se']:.1f} | {b['accuracy']:.3f} ± "
                     f"{b['accuracy_se']:.3f} | {b['fd']:.1f} ± {b['fd_se']:.1f} |")
    lines += ["", "Thresholding of CFG samples at large w:", "",
              "| w / threshold | accuracy | FD |", "|---|---|---|"]
    for key, r in res["threshold"].items():
        lines.append(f"| {key} | {r['accuracy']:.3f} ± {r['accuracy_se']:.3f} | "
                     f"{r['fd']:.1f} ± {r['fd_se']:.1f} |")
    lines += ["", f"Text prompts ({max(2, args.n // 18 * 5)} samples per digit; accuracy on "
              "the digit the prompt names):",
              "", "| w / prompt | mean accuracy | per digit 0-9 |", "|---|---|---|"]
    for key, r in res["text"].items():
        per = " ".join(f"{a:.2f}" for a in r["per_digit"])
        lines.append(f"| {key} | {r['mean']:.3f} | {per} |")
    path.write_text("\n".join(lines) + "\n")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name in ("cfg", "classifier"):
        ws = list(res[name])
        for ax, key in zip(axes, ("accuracy", "fd"), strict=True):
            ax.errorbar(ws, [res[name][w][key] for w in ws],
                        yerr=[res[name][w][key + "_se"] for w in ws], marker="o", capsize=3,
                        label="classifier-free (eq. 26)" if name == "cfg"
                        else "classifier guidance (eq. 25)")
    axes[0].set(xlabel="guidance weight w", ylabel="accuracy on the requested class")
    axes[1].axhline(next(iter(res["cfg"].values()))["fd_floor"], ls="--", c="grey",
                    label="floor (real test images)")
    axes[1].set(xlabel="guidance weight w", ylabel="FD (n = 180)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
