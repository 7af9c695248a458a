"""unCLIP on the shapes scenes (Weng eq. 34; Ramesh et al. 2022): the claims of issue 15, measured
on a CLIP, a prior and a decoder run trained by the CLI (this script trains nothing):

    difflab train-clip --preset shapes-clip --threads 1 --out runs/unclip-bench/clip
    difflab train --preset shapes-unclip-prior --clip runs/unclip-bench/clip --threads 1 \\
        --out runs/unclip-bench/prior
    difflab train --preset shapes-unclip-decoder --clip runs/unclip-bench/clip --threads 1 \\
        --out runs/unclip-bench/decoder
    python benchmarks/unclip_shapes.py --runs runs/unclip-bench

results/unclip_shapes.md holds the shapes measurement (the preset's v-prediction decoder, 2000
updates of 32); results/unclip_shapes_linear.md and unclip_shapes_3500.md the earlier
ε-prediction decoders, which diverged (results/shapes_eps_vs_v.md). On digits
(results/unclip_digits.md; class accuracy by the committed digits classifier in place of the
attributes)::

    difflab train-clip --preset digits-clip --threads 1 --out runs/unclip-digits/clip
    difflab train --preset digits-unclip-prior --clip runs/unclip-digits/clip --threads 1 \
        --out runs/unclip-digits/prior
    difflab train --preset digits-unclip-decoder --clip runs/unclip-digits/clip --threads 1 \
        --out runs/unclip-digits/decoder
    python benchmarks/unclip_shapes.py --runs runs/unclip-digits --name unclip_digits

1. The prior helps (Ramesh et al. 2022, §5.1 compares unCLIP with and without a prior): for the
   first P test captions, k samples each, from (a) prior + decoder, (b) the same with the
   prior's best of 2, (c) the decoder given the caption's CLIP TEXT embedding c_t in place of an
   image embedding, (d) the decoder given the caption alone (image embedding ∅). Prompt
   accuracy (the committed attribute classifier, all attributes right), FD to the 600 test
   images (n = P·k, so read it against the floor: n real training images), diversity (the mean
   RMS pixel distance between two samples of one prompt) and the CLIP score cos(c_i(x), c_t).
2. Variations keep semantics: for V test images, k variations each (their c_i decoded without
   the caption): the attribute accuracy of the variations against their source's attributes
   (all and per attribute) beside that against another source's (the chance level), pixel
   diversity among them, and cos(c_i(variation), c_i(source)) against random pairs.
3. The CLIP run's zero-shot accuracy and retrieval recall@1 (its metrics.json).

Writes benchmarks/results/unclip_shapes.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from difflab.build.data import image_split
from difflab.data.fd import FDEvaluator
from difflab.data.shapes_eval import prompt_accuracy
from difflab.pipelines.unclip import Captions, cosine
from difflab.runs import checkpoint as ckpt
from difflab.runs.unclip import captions_for, load_unclip, random_pairs_cos, test_captions

RESULTS = Path(__file__).parent / "results"


def diversity(x: torch.Tensor, k: int) -> float:
    """Mean RMS pixel distance between two of the k samples of each group (groups of k rows)."""
    g = x.view(-1, k, x[0].numel())  # (P, k, CHW)
    d = torch.cdist(g, g) / g.shape[-1] ** 0.5  # (P, k, k)
    return float(d.sum((1, 2)).mean() / (k * (k - 1)))


def rows(y: Captions, idx: slice) -> Captions:
    return Captions(y.tokens[idx], y.mask[idx], y.text_emb[idx])


def in_batches(fn, n: int, size: int = 80) -> torch.Tensor:
    return torch.cat([fn(slice(s, min(n, s + size))).cpu() for s in range(0, n, size)])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", default="runs/unclip-bench")
    p.add_argument("--prompts", type=int, default=40)
    p.add_argument("--per-prompt", type=int, default=4)
    p.add_argument("--variations", type=int, default=40)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--prior-guidance", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="unclip_shapes", help="results file name")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.runs)
    t0 = time.perf_counter()
    cfg, u = load_unclip(root / "decoder", root / "prior", decoder_steps=args.steps,
                         prior_steps=64, decoder_guidance=args.guidance,
                         prior_guidance=args.prior_guidance)
    test, train = image_split(cfg, "test"), image_split(cfg, "train")
    is_shapes = cfg.dataset == "shapes"
    fd = FDEvaluator.for_dataset(cfg.dataset, test.x.shape[-1])
    P, k = args.prompts, args.per_prompt
    _, test_caps, _, _ = test_captions(cfg, P + args.variations)
    caps = [c for c in test_caps[:P] for _ in range(k)]  # (P·k,)
    # what a sample should show: shapes' attributes, or the digit's class
    att = (test.attributes if is_shapes else test.y)[:P].repeat_interleave(k, 0)
    y = captions_for(u, caps, cfg.text_tokens)
    n = len(caps)
    out: dict = {"settings": vars(args), "dataset": cfg.dataset, "n_samples": n,
                 "fd_floor": fd.fd(train.x[:n], reference=test.x)}

    def accuracy(x: torch.Tensor, target: torch.Tensor) -> dict:
        if not is_shapes:
            return {"prompt_accuracy": fd.accuracy(x, target)}
        acc = prompt_accuracy(x, target, fd.classifier)
        return {"prompt_accuracy": acc["all"], **{f"acc_{a}": v for a, v in acc.items()
                                                  if a != "all"}}

    def score(x: torch.Tensor, attributes, c_t) -> dict:
        return {**accuracy(x, attributes),
                "fd": fd.fd(x, reference=test.x), "diversity": diversity(x, k),
                "clip_score": float(cosine(u.image_embeddings(x).cpu(), c_t).mean())}

    g = torch.Generator().manual_seed(0)
    modes = {
        "prior": lambda s: u.text_to_image(rows(y, s), g),
        "prior_best_of_2": lambda s: u.text_to_image(rows(y, s), g, best_of=2),
        "text_embedding": lambda s: u.decode(y.text_emb[s], rows(y, s), g),
        "caption_only": lambda s: u.decode(torch.zeros_like(y.text_emb[s]), rows(y, s), g),
    }
    out["text_to_image"] = {}
    for name, fn in modes.items():
        x = in_batches(fn, n)
        out["text_to_image"][name] = score(x, att, y.text_emb)
        print(name, out["text_to_image"][name], f"{time.perf_counter() - t0:.0f} s", flush=True)
    real = test.x[:P].repeat_interleave(k, 0)
    out["text_to_image"]["real_images"] = {
        "prompt_accuracy": accuracy(real, att)["prompt_accuracy"],
        "clip_score": float(cosine(u.image_embeddings(real).cpu(), y.text_emb).mean())}

    V = args.variations
    src = test.x[P:P + V]
    var = torch.cat([u.variations(src[s:s + 20], k, g).cpu() for s in range(0, V, 20)])
    c_src = u.image_embeddings(src).cpu()
    src_att = (test.attributes if is_shapes else test.y)[P:P + V]
    own = accuracy(var, src_att.repeat_interleave(k, 0))
    shuffled = torch.roll(src_att, 1, 0).repeat_interleave(k, 0)  # another source's attributes
    other = accuracy(var, shuffled)
    out["variations"] = {
        "attribute_accuracy": own["prompt_accuracy"],
        "per_attribute": {a[4:]: v for a, v in own.items() if a.startswith("acc_")},
        "attribute_accuracy_other_source": other["prompt_accuracy"],
        "per_attribute_other_source": {a[4:]: v for a, v in other.items()
                                       if a.startswith("acc_")},
        "pixel_diversity": diversity(var, k),
        "real_pair_pixel_distance": diversity(src[: (V // k) * k], k),
        "cos_to_source": float(cosine(u.image_embeddings(var).cpu(),
                                      c_src.repeat_interleave(k, 0)).mean()),
        "cos_random_pairs": random_pairs_cos(c_src)}
    print("variations", out["variations"], flush=True)
    out["clip"] = {key: v for key, v in ckpt.read_json(root / "clip" / ckpt.METRICS).items()
                   if key.startswith(("zero_shot", "recall", "temperature", "train"))}
    out["runs"] = {s: {key: v for key, v in ckpt.read_json(root / s / ckpt.METRICS).items()
                       if isinstance(v, float | int)} for s in ("prior", "decoder")
                   if (root / s / ckpt.METRICS).is_file()}  # a stopped run has none
    out["seconds"] = time.perf_counter() - t0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(out))
    print(markdown(out))


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [f"# unCLIP on {r['dataset']} ({r['n_samples']} samples: {s['prompts']} test captions "
             f"× {s['per_prompt']}; decoder DDIM {s['steps']} steps, w = {s['guidance']}; prior "
             f"DDIM 64 steps, w = {s['prior_guidance']})", "",
             f"Produced by `python benchmarks/unclip_shapes.py --runs {s['runs']} --name "
             f"{s['name']}` on the runs its docstring trains. Prompt accuracy: all attributes "
             "right (shapes, the committed attribute classifier) or the class (digits). One "
             "seed; FD at this n is biased upwards: its floor "
             f"(n real training images vs the test split) is {r['fd_floor']:.1f}.", "",
             "## 1. Text → image: does the prior help?", "",
             "| conditioning of the decoder | prompt acc. | count | shape | colour | size | "
             "position | FD | diversity | CLIP score |", "|---" * 10 + "|"]
    for name, m in r["text_to_image"].items():
        if name == "real_images":
            continue
        per = " | ".join(f"{m[f'acc_{a}']:.2f}" if f"acc_{a}" in m else "–"
                         for a in ("count", "shape", "colour", "size", "position"))
        lines.append(f"| {name} | {m['prompt_accuracy']:.3f} | {per} | {m['fd']:.1f} | "
                     f"{m['diversity']:.3f} | {m['clip_score']:.3f} |")
    real = r["text_to_image"]["real_images"]
    lines += [f"| (the test images themselves) | {real['prompt_accuracy']:.3f} | | | | | | | | "
              f"{real['clip_score']:.3f} |", "", "## 2. Variations", ""]
    v = r["variations"]
    lines += [f"- attribute accuracy of the variations against their source's attributes: "
              f"{v['attribute_accuracy']:.3f} (against another source's, the chance level: "
              f"{v['attribute_accuracy_other_source']:.3f})"]
    if v.get("per_attribute"):
        lines.append("- per attribute, own source / another source: " + ", ".join(
            f"{a} {x:.2f} / {v['per_attribute_other_source'][a]:.2f}"
            for a, x in v["per_attribute"].items()))
    lines += [
              f"- pixel diversity among the variations of one image: {v['pixel_diversity']:.3f} "
              f"(two different test images: {v['real_pair_pixel_distance']:.3f})",
              f"- cos(c_i(variation), c_i(source)) {v['cos_to_source']:.3f}, random pairs of "
              f"test images {v['cos_random_pairs']:.3f}", "", "## 3. The CLIP", ""]
    lines += [f"- {key}: {val:.4g}" for key, val in sorted(r["clip"].items())]
    lines += ["", "## The prior and decoder runs' own metrics.json", ""]
    for stage, m in r["runs"].items():
        lines.append(f"- {stage}: " + ", ".join(f"{key} {val:.4g}" for key, val in
                                                 sorted(m.items())))
    lines += ["", f"Total {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
