"""Latent diffusion on the generated `shapes` scenes (issue 13): first stages at 64×64 and
text-to-image in latent space against the guidance weight.

1. **Autoencoders at 64×64** (LDM Tab. 8, second dataset): the `shapes-ae-kl-f4` recipe (c = 4,
   widths 16/32/32(/64), L1 + perceptual in the shapes attribute classifier's features) at
   f = 4 and 8, KL and VQ, ``--ae64-steps`` updates of 16 images: test PSNR, rFD (the 600 test
   images' reconstructions against those images, in the 64-pixel attribute classifier's
   features, when it is committed), codebook usage and perplexity (VQ), latent std.
2. **Text-to-image** (LDM eq. 33; Weng "Latent Variable Space"): `shapes-ae-kl-f4` at 32×32,
   then `shapes-latent-text` (a U-Net with cross-attention to the frozen MiniLM's caption
   tokens on the 4×8×8 latents, captions dropped 10 %) for ``--steps`` updates; then, for each
   classifier-free guidance weight w, 600 DDIM-50 samples of the test split's 600 captions:
   prompt accuracy (the committed attribute classifier reads count, layout, and each shape's
   kind, colour and size; ``all`` = the image shows exactly the caption) and FD to the train
   split (floor: real test vs train).

Finished run directories under ``--workdir`` are reused. One thread each.

    nice -n 19 .venv/bin/python benchmarks/latent_shapes.py             # ~1 h on one core
    nice -n 19 .venv/bin/python benchmarks/latent_shapes.py --quick     # smoke, ~3 min
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from latent_mnist import train_run  # the same helper: train a run unless it finished

ROOT = Path(__file__).resolve().parent
WEIGHTS = (0.0, 1.0, 2.0, 3.0, 5.0)


def guided_eval(run_dir: Path, w: float, n: int, steps: int) -> dict:
    """FD and prompt accuracy of ``n`` samples of the test captions at guidance ``w``."""
    from difflab.build.conditioning import guided, sample_conditions
    from difflab.runs.evaluate import evaluate_images
    from difflab.runs.latent import load_codec
    from difflab.runs.load import load_run

    cfg, model, schedule = load_run(run_dir)
    cond, attributes = sample_conditions(cfg, n)
    m = guided(model, schedule, cfg, cond, w=w, sampler="ddim", steps=steps)
    codec = load_codec(run_dir, cfg)
    metrics = evaluate_images(m, schedule, cfg, sampler="ddim", steps=steps, n=n, seed=0,
                              labels=attributes, decode=codec.decode)[0]
    return {"w": w, **{k: metrics[k] for k in metrics if k.startswith(("fd", "prompt"))},
            "sample_seconds": metrics["sample_seconds"]}


def main() -> None:
    from difflab.config import load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("runs/bench-latent-shapes"))
    p.add_argument("--steps", type=int, default=3000, help="text-to-image training steps")
    p.add_argument("--ae-steps", type=int, default=1000)
    p.add_argument("--ae64-steps", type=int, default=600)
    p.add_argument("--parts", default="1,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny budgets")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n, sample_steps = 600, 50
    if args.quick:
        args.steps, args.ae_steps, args.ae64_steps, n, sample_steps = 20, 20, 10, 24, 5
        args.workdir = args.workdir.with_name(args.workdir.name + "-quick")
    args.workdir.mkdir(parents=True, exist_ok=True)
    common = {"threads": args.threads, "checkpoint_every": 10_000}
    parts = {int(k) for k in args.parts.split(",")}
    result: dict = {"threads": args.threads}

    if 1 in parts:
        rows = []
        for kind in ("kl", "vq"):
            for f in (4, 8):
                cfg = load_config("shapes-ae-kl-f4", {
                    "image_size": 64, "ae_type": kind, "ae_factor": f, "batch": 16,
                    "steps": args.ae64_steps, **common})
                m = train_run(cfg, args.workdir / f"ae64-{kind}-f{f}")
                rows.append({"kind": kind, "f": f, **{k: m.get(k) for k in (
                    "psnr", "rfd", "codebook_usage", "perplexity", "latent_std",
                    "latent_shape", "train_seconds")}})
                print(json.dumps(rows[-1]), flush=True)
        result["autoencoders_64"] = rows

    if 2 in parts:
        ae_dir = args.workdir / "ae-kl-f4-32"
        ae = train_run(load_config("shapes-ae-kl-f4", {"steps": args.ae_steps, **common}),
                       ae_dir)
        run_dir = args.workdir / "latent-text"
        cfg = load_config("shapes-latent-text", {
            "steps": args.steps, "autoencoder": str(ae_dir), "n_eval": n,
            "eval_steps": sample_steps, **common})
        m = train_run(cfg, run_dir)
        rows = [guided_eval(run_dir, w, n, sample_steps) for w in WEIGHTS]
        for r in rows:
            print(json.dumps(r), flush=True)
        result["text_to_image"] = {"autoencoder": {k: ae.get(k) for k in (
            "psnr", "rfd", "latent_std", "latent_scale", "train_seconds")},
            "train_seconds": m["train_seconds"], "steps": m["train_steps"], "rows": rows}

    name = "latent_shapes_quick" if args.quick else "latent_shapes"
    out = ROOT / "results" / name
    old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() \
        else {}
    result = {**old, **result}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Latent diffusion on shapes (benchmarks/latent_shapes.py)", ""]
    if "autoencoders_64" in result:
        lines += [f"## 1. Autoencoders at 64×64 ({args.ae64_steps} steps of 16)", "",
                  "| kind | f | latent | PSNR dB | rFD | codebook usage | perplexity | "
                  "latent std | train s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in result["autoencoders_64"]:
            rfd = f"{r['rfd']:.2f}" if r["rfd"] is not None else "–"
            usage = f"{r['codebook_usage']:.2f}" if r["codebook_usage"] is not None else "–"
            perp = f"{r['perplexity']:.1f}" if r["perplexity"] is not None else "–"
            lines.append(f"| {r['kind']} | {r['f']} | {'×'.join(map(str, r['latent_shape']))} "
                         f"| {r['psnr']:.2f} | {rfd} | {usage} | {perp} | "
                         f"{r['latent_std']:.3f} | {r['train_seconds']:.0f} |")
        lines.append("")
    if "text_to_image" in result:
        t = result["text_to_image"]
        a = t["autoencoder"]
        lines += ["## 2. Text-to-image in latent space against the guidance weight", "",
                  f"Autoencoder (32×32 → 4×8×8): PSNR {a['psnr']:.2f} dB, rFD "
                  f"{a.get('rfd') or float('nan'):.2f}, {a['train_seconds']:.0f} s. Denoiser: "
                  f"{t['steps']} steps, {t['train_seconds']:.0f} s. {n} DDIM-{sample_steps} "
                  "samples of the test captions per row.", "",
                  "| w | prompt accuracy (all) | count | shape | colour | size | position | FD "
                  "| FD floor |", "|---|---|---|---|---|---|---|---|---|"]
        for r in t["rows"]:
            lines.append(f"| {r['w']:g} | {r['prompt_accuracy']:.3f} | {r['prompt_count']:.3f} "
                         f"| {r['prompt_shape']:.3f} | {r['prompt_colour']:.3f} | "
                         f"{r['prompt_size']:.3f} | {r['prompt_position']:.3f} | "
                         f"{r['fd']:.1f} | {r['fd_floor']:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md"))


if __name__ == "__main__":
    main()
