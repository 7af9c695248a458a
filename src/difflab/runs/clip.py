"""CLIP runs (kind ``clip``): loading one, attaching it to an unCLIP prior or decoder run, and
what a finished one writes to metrics.json (Radford et al. 2021, §3.1: zero-shot transfer).

On the held-out test split, with each image's caption encoded by the frozen MiniLM and CLIP's
text tower:

- ``recall_i2t`` / ``recall_t2i``: image → text and text → image retrieval recall@1 among the
  test split's images and captions (a retrieved item is right when its caption is the query's
  own: shapes captions repeat for a lone shape, digits captions name only the class, so the
  match is by caption string for shapes and by class for digits). ``recall_chance``: the same
  for a random ranking (the mean fraction of matching items).
- Zero-shot accuracy, captions as classifiers. Digits (and MNIST): each class's prompt is the
  mean of its templates' embeddings (CLIP's prompt ensembling, §3.1.4); ``zero_shot`` is the
  accuracy of the argmax over the ten classes (chance 0.1). Shapes: for every test image its
  true caption competes with captions that differ in ONE attribute of one shape (the k-th
  image's slot k mod count): ``zero_shot_colour`` (the other 5 colours, chance 1/6),
  ``zero_shot_shape`` (2 other shapes, chance 1/3), ``zero_shot_size`` (chance 1/2),
  ``zero_shot_order`` (the shapes listed in reverse order with the same relation, images of two
  or three shapes that differ, chance 1/2) and ``zero_shot_relation`` (a row described as a
  column or vice versa, chance 1/2); ``zero_shot`` is their mean.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from ..build.data import image_split
from ..build.model import build_model
from ..build.unclip import image_embeddings, text_embeddings
from ..config import TrainConfig
from ..contrastive import recall_at_1
from ..data import captions as cap
from ..data import shapes
from ..errors import ConfigError
from ..nn.clip import CLIP
from ..training.backend import resolve_device
from . import checkpoint as ckpt
from .load import read_run

CLIP_DIR = "clip"  # the CLIP run inside a prior or decoder run
COPIED = ("clip_dim", "clip_width", "clip_text_width")  # its fields a prior/decoder run takes


def load_clip(run_dir: str | Path, device: str | None = None) -> tuple[TrainConfig, CLIP]:
    """The config and frozen CLIP (EMA weights, eval mode) of a CLIP run."""
    kind, cfg, _ = read_run(run_dir)
    if kind != "clip":
        raise ConfigError(f"{run_dir} is a {kind} run; give a run of 'difflab train-clip'")
    net = build_model(cfg)
    try:
        net.load_state_dict(ckpt.load_weights(run_dir, "ema", "clip"))
    except RuntimeError as err:
        raise ckpt.CheckpointError(f"weights in {run_dir} do not fit its config "
                                   f"({ckpt.one_line(err)})") from None
    if device is not None:
        net.to(resolve_device(device))
    return cfg, net.eval().requires_grad_(False)


def attach_clip(cfg: TrainConfig) -> tuple[TrainConfig, CLIP]:
    """A prior or decoder config with its CLIP run's fields, and that CLIP; ConfigError unless
    ``cfg.clip`` is a finished CLIP run of the same dataset and image size."""
    source = Path(cfg.clip)
    try:
        clip_cfg, clip = load_clip(source)
    except ckpt.CheckpointError as err:
        raise ConfigError(f"--clip: {ckpt.one_line(err)}") from None
    if (clip_cfg.dataset, clip_cfg.image_size) != (cfg.dataset, cfg.image_size):
        raise ConfigError(f"--clip {source} was trained on {clip_cfg.dataset} at image size "
                          f"{clip_cfg.image_size or 'default'}; this run is {cfg.dataset} at "
                          f"{cfg.image_size or 'default'}")
    if clip_cfg.clip_noisy:
        raise ConfigError(f"--clip {source} is a noise-aware CLIP (for CLIP guidance); unCLIP "
                          "needs a CLIP of clean images")
    return replace(cfg, **{k: getattr(clip_cfg, k) for k in COPIED}), clip


def copy_clip(source: str | Path, run_dir: str | Path) -> None:
    """Copy a CLIP run's config, EMA weights and metrics into ``run_dir/clip`` (self-contained)."""
    target = Path(run_dir) / CLIP_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in (ckpt.CONFIG, ckpt.weight_file("clip", True), ckpt.METRICS):
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, target / name)


# --- evaluation --------------------------------------------------------------------------------
def encode_captions(clip: CLIP, captions: list[str], text_tokens: int) -> Tensor:
    """CLIP text embeddings (N, D) of captions through the frozen MiniLM."""
    from ..nn.text_encoder import load_text_encoder

    enc = load_text_encoder().encode(list(captions), max_length=text_tokens)
    return text_embeddings(clip, enc.tokens, enc.mask)


def retrieval(img: Tensor, txt: Tensor, keys: list) -> dict[str, float]:
    """Recall@1 both ways for N images (N, D) and their captions (N, D); ``keys`` (N) say which
    items match."""
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    k = torch.tensor([index[key] for key in keys])
    match = k[:, None] == k[None, :]  # (N, N)
    sim = img @ txt.T  # (N, N)
    return {"recall_i2t": float(recall_at_1(sim, match)),
            "recall_t2i": float(recall_at_1(sim.T, match.T)),
            "recall_chance": float(match.double().mean())}


def shapes_variants(att: Tensor, caption: str, k: int) -> dict[str, list[str]]:
    """Captions that differ from ``caption`` (of attribute row ``att``) in one attribute of slot
    k mod count, per attribute (see the module docstring); empty lists where none applies."""
    a = att.tolist()
    count = a[0]
    rev = shapes.caption(a) != caption
    slot = k % count
    out: dict[str, list[str]] = {}
    for name, col, n in (("shape", 0, len(shapes.SHAPES)), ("colour", 1, len(shapes.COLOURS)),
                         ("size", 2, len(shapes.SIZES))):
        alts = []
        for v in range(n):
            if v != a[2 + 3 * slot + col]:
                b = list(a)
                b[2 + 3 * slot + col] = v
                alts.append(shapes.caption(b, rev))
        out[name] = alts
    out["order"], out["relation"] = [], []
    if count >= 2:
        slots = [a[2 + 3 * j: 5 + 3 * j] for j in range(count)][::-1]
        b = a[:2] + sum(slots, []) + a[2 + 3 * count:]
        flipped = shapes.caption(b, rev)
        if flipped != caption:
            out["order"] = [flipped]
        b = list(a)
        b[1] = 3 - a[1]  # row (1) ↔ column (2)
        out["relation"] = [shapes.caption(b, rev)]
    return out


def zero_shot_shapes(clip: CLIP, img: Tensor, att: Tensor, caps: list[str],
                     text_tokens: int) -> dict[str, float]:
    """Per attribute, the fraction of images whose own caption beats its one-attribute variants."""
    variants = [shapes_variants(att[i], caps[i], i) for i in range(len(caps))]
    names = ("shape", "colour", "size", "order", "relation")
    everything = list(dict.fromkeys(caps + [c for v in variants for n in names for c in v[n]]))
    emb = encode_captions(clip, everything, text_tokens)  # (U, D)
    where = {c: i for i, c in enumerate(everything)}
    out = {}
    for n in names:
        right = [float(all((img[i] @ emb[where[c]]) < (img[i] @ emb[where[caps[i]]])
                           for c in v[n])) for i, v in enumerate(variants) if v[n]]
        out[f"zero_shot_{n}"] = sum(right) / max(1, len(right))
    out["zero_shot"] = sum(out[f"zero_shot_{n}"] for n in names) / len(names)
    return out


def zero_shot_digits(clip: CLIP, img: Tensor, y: Tensor, text_tokens: int) -> dict[str, float]:
    """Accuracy of the argmax over the ten classes' ensembled prompts."""
    J = len(cap.DIGIT_TEMPLATES)
    prompts = [cap.digit_caption(k, j) for k in range(10) for j in range(J)]
    emb = encode_captions(clip, prompts, text_tokens).view(10, J, -1).mean(1)  # (10, D)
    emb = torch.nn.functional.normalize(emb, dim=-1)
    return {"zero_shot": float(((img @ emb.T).argmax(1) == y).double().mean())}


@torch.inference_mode()
def evaluate_clip(cfg: TrainConfig, clip: CLIP) -> dict[str, float]:
    """Zero-shot accuracy and retrieval recall@1 of a CLIP on the first ``n_eval`` test images."""
    test = image_split(cfg, "test")
    n = min(cfg.n_eval, len(test))
    img = image_embeddings(clip, test.x[:n])  # (n, D)
    if cfg.dataset == "shapes":
        caps, keys = list(test.captions[:n]), list(test.captions[:n])
    else:
        caps = cap.digit_captions(test.y[:n], seed=cfg.seed)
        keys = test.y[:n].tolist()
    txt = encode_captions(clip, caps, cfg.text_tokens)
    m = {"n_test": n, **retrieval(img, txt, keys),
         "temperature": float((-clip.log_scale).exp())}
    if cfg.dataset == "shapes":
        m.update(zero_shot_shapes(clip, img, test.attributes[:n], caps, cfg.text_tokens))
    else:
        m.update(zero_shot_digits(clip, img, test.y[:n], cfg.text_tokens))
    if cfg.clip_noisy:
        m["zero_shot_at_t"] = zero_shot_at_t(cfg, clip, test, n, caps)
    return m


NOISY_TS = (1, 100, 250, 500, 750, 1000)  # as fractions of T = 1000, as a noisy classifier's


def zero_shot_at_t(cfg: TrainConfig, clip: CLIP, test, n: int, caps: list[str]
                   ) -> dict[str, float]:
    """A noise-aware CLIP's zero-shot accuracy on x_t of the first n test images (one fixed ε
    per image) at t = :data:`NOISY_TS` · T / 1000, as {str(t): accuracy}."""
    from ..build.model import build_schedule

    schedule = build_schedule(cfg)
    x0 = test.x[:n]
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    device = next(clip.parameters()).device
    out = {}
    for t in sorted({max(1, k * cfg.T // 1000) for k in NOISY_TS}):
        tt = torch.full((n,), t, dtype=torch.long)
        x_t = schedule.q_sample(x0, tt, eps)  # Weng eq. (3)
        img = torch.cat([clip.encode_image(xb.to(device), tb.to(device)).cpu()
                         for xb, tb in zip(x_t.split(500), tt.split(500), strict=True)])
        if cfg.dataset == "shapes":
            acc = zero_shot_shapes(clip, img, test.attributes[:n], caps, cfg.text_tokens)
        else:
            acc = zero_shot_digits(clip, img, test.y[:n], cfg.text_tokens)
        out[str(t)] = acc["zero_shot"]
    return out


def load_noisy_clip(run_dir: str | Path, device: str | None = None
                    ) -> tuple[TrainConfig, CLIP]:
    """:func:`load_clip` of a noise-aware CLIP run (``clip_noisy``), for CLIP guidance."""
    cfg, clip = load_clip(run_dir, device)
    if not cfg.clip_noisy:
        raise ConfigError(f"{run_dir} is a CLIP of clean images; CLIP guidance needs a "
                          "noise-aware one (difflab train-clip --preset digits-noisy-clip, or "
                          "--clip-noisy)")
    return cfg, clip


def evaluate_after(cfg: TrainConfig, clip: CLIP, run_dir: Path, extra: dict) -> None:
    """metrics.json of a finished CLIP run."""
    clip = clip.eval()
    ckpt.write_json(run_dir / ckpt.METRICS, {**evaluate_clip(cfg, clip), **extra})
