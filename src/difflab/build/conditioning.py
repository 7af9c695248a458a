"""Conditioning of a run: class labels or captions → the network's keyword arguments, the
condition dropout that trains one network for both ε_θ(x_t, t, y) and ε_θ(x_t, t, ∅), and the
guided model a sampler sees (Weng eq. 24-26; Imagen's thresholding).

The network is called as ``net(x_t, t, **cond)`` with ``cond`` = ``{"y": labels (B,)}`` for a
class-conditional run (``cond = "class"``; label K is ∅) or ``{"context": tokens (B, L, D),
"context_mask": (B, L) bool}`` for a text-conditional one (``cond = "text"``; the frozen
all-MiniLM-L6-v2 of :mod:`difflab.nn.text_encoder`, an all-False mask is ∅). Captions of the
built-in datasets come from :data:`difflab.data.captions.DIGIT_TEMPLATES`, a fresh template per
example and step; an image folder's from its ``captions.csv``.

Training (:class:`TrainConditions`): every distinct condition is encoded once into a table;
each example has a row of allowed table entries (its label; its label's templates; its
caption), and a batch draws one of them per example and then replaces it by ∅ with probability
``p_uncond`` (Ho & Salimans 2021, Algorithm 1), from the run's one generator.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..data import captions as cap
from ..data import shapes
from ..data.images import ImageData
from ..errors import ConfigError
from ..guidance import (
    AncestralClassifierGuidance,
    Bound,
    ClassifierFree,
    ClassifierGuidance,
    CLIPGuidance,
    Thresholded,
    dynamic_threshold,
    static_threshold,
)
from ..schedules import Schedule

THRESHOLDS = {"none": None, "static": static_threshold, "dynamic": dynamic_threshold}


@dataclass
class TrainConditions:
    """The conditions of a training set, ready to batch.

    ``table``: each keyword's distinct values, stacked along dim 0 (U rows). ``choices``: int64
    (N, m), the table rows example i may take (one drawn uniformly per step). ``null``: ∅ as one
    row per keyword.
    """

    table: dict[str, Tensor]
    choices: Tensor
    null: dict[str, Tensor]

    def batch(self, idx: Tensor, generator: torch.Generator, p_uncond: float) -> dict:
        """The conditions of the examples ``idx`` (B,): one allowed row each, then ∅ with
        probability ``p_uncond``. Returns {keyword: (B, …)}."""
        B, m = idx.shape[0], self.choices.shape[1]
        col = torch.randint(m, (B,), generator=generator) if m > 1 else idx.new_zeros(B)
        rows = self.choices[idx, col]  # (B,)
        drop = torch.rand(B, generator=generator) < p_uncond  # (B,) True → ∅
        out = {}
        for key, values in self.table.items():
            chosen = values[rows]  # (B, …)
            keep = drop.view(B, *[1] * (chosen.ndim - 1))
            out[key] = torch.where(keep, self.null[key].expand_as(chosen), chosen)
        return out


def _text_table(captions: Sequence[str], cfg: TrainConfig) -> dict[str, Tensor]:
    from ..nn.text_encoder import load_text_encoder

    enc = load_text_encoder().encode(list(captions), max_length=cfg.text_tokens)
    return {"context": enc.tokens, "context_mask": enc.mask}  # (U, L, D), (U, L)


def null_cond(cfg: TrainConfig) -> dict[str, Tensor]:
    """∅ of the run as one row per keyword: label K, or zero tokens with an all-False mask."""
    if cfg.cond == "class":
        return {"y": torch.tensor([cfg.num_classes])}
    if cfg.cond == "text":
        from ..nn.text_encoder import MiniLMConfig

        L, D = cfg.text_tokens, MiniLMConfig().dim
        return {"context": torch.zeros(1, L, D),
                "context_mask": torch.zeros(1, L, dtype=torch.bool)}
    raise ValueError("an unconditional run has no null condition")


def resolve(cfg: TrainConfig, data: ImageData) -> TrainConfig:
    """``cfg`` with ``num_classes`` filled in from the data (class runs); checks the labels."""
    if cfg.cond != "class":
        return cfg
    K = cfg.num_classes or len(data.classes)
    if K < 2:
        raise ConfigError(f"class conditioning needs at least 2 classes; {data.name} has "
                         f"{len(data.classes)} (a folder's classes are its top-level subfolders)")
    if int(data.y.max()) >= K:
        raise ConfigError(f"num_classes = {K} but the data has label {int(data.y.max())}")
    return replace(cfg, num_classes=K)


def train_conditions(cfg: TrainConfig, data: ImageData) -> TrainConditions | None:
    """The :class:`TrainConditions` of a run's training set (None for an unconditional run)."""
    if cfg.cond == "none":
        return None
    y = data.y.long()  # (N,)
    if cfg.cond == "class":
        return TrainConditions({"y": torch.arange(cfg.num_classes)}, y[:, None], null_cond(cfg))
    if data.name in ("digits", "mnist"):  # every template of the example's digit
        J = len(cap.DIGIT_TEMPLATES)
        captions = [cap.digit_caption(k, j) for k in range(10) for j in range(J)]
        choices = y[:, None] * J + torch.arange(J)  # (N, J)
    else:  # each image's own caption: shapes' generated ones, or a folder's captions.csv
        per_file = (list(data.captions) if data.captions
                    else cap.captions_for(data.files, cap.read_captions(cfg.data)))
        captions = list(dict.fromkeys(per_file))
        where = {c: i for i, c in enumerate(captions)}
        choices = torch.tensor([[where[c]] for c in per_file])  # (N, 1)
    return TrainConditions(_text_table(captions, cfg), choices, null_cond(cfg))


def sample_conditions(cfg: TrainConfig, n: int, labels: Sequence[int] | None = None,
                      prompt: str | None = None) -> tuple[dict, Tensor | None]:
    """The conditions of ``n`` samples of a conditional run, and the labels they should show.

    Class runs: ``labels`` cycled over the n samples (default: every class in turn). Text runs:
    the ``prompt`` for every sample, or else template captions of the labels (default: every
    digit in turn, the templates in turn). Labels come back for the accuracy of the samples
    (None when only a prompt was given). An unconditional run gets {} (labels pass through, for
    classifier guidance). Text-conditional shapes runs: :func:`shapes_text_conditions`.
    """
    if prompt is not None and not prompt.strip():
        raise ConfigError("empty prompt; give a caption such as 'a handwritten seven'")
    if prompt is not None and cfg.cond != "text":
        raise ConfigError(f"--prompt needs a text-conditional run; this one has cond {cfg.cond!r}")
    if cfg.dataset == "shapes" and cfg.cond == "text":
        return shapes_text_conditions(cfg, n, labels, prompt)
    K = cfg.num_classes if cfg.cond == "class" else 10
    y = None
    if labels is not None or (cfg.cond != "none" and prompt is None):
        base = torch.tensor(list(labels) if labels is not None else range(K), dtype=torch.long)
        bad = base[(base < 0) | (base >= K)]
        if len(base) == 0 or len(bad):
            raise ConfigError(f"class labels must lie in 0..{K - 1}, got "
                             f"{bad.tolist() if len(bad) else 'none'}")
        y = base.repeat(-(-n // len(base)))[:n]  # (n,)
    if cfg.cond == "class":
        return {"y": y}, y
    if cfg.cond == "none":
        return ({"y": y} if y is not None else {}), y
    if cfg.dataset == "folder" and prompt is None:
        raise ConfigError("a text-conditional folder run needs --prompt")
    if prompt is not None:
        captions = cap.prompt_captions(prompt, n)
    else:
        J = len(cap.DIGIT_TEMPLATES)
        captions = [cap.digit_caption(int(k), (i // K) % J) for i, k in enumerate(y)]
    cond = _text_table(captions, cfg)
    if y is not None:
        cond["y"] = y  # for classifier guidance; the text network never sees it
    return cond, y


def shapes_text_conditions(cfg: TrainConfig, n: int, labels: Sequence[int] | None = None,
                           prompt: str | None = None) -> tuple[dict, Tensor | None]:
    """:func:`sample_conditions` of a text-conditional shapes run: the ``prompt`` for every
    sample, or else the captions of the test split in turn; with them, in place of labels, the
    attributes (n, A) the samples should show (:func:`difflab.data.shapes.parse_caption`; None
    for a prompt it cannot read), which the evaluation turns into prompt accuracy."""
    if labels is not None:
        raise ConfigError("a text-conditional shapes run takes --prompt, not class labels")
    if prompt is not None:
        captions = cap.prompt_captions(prompt, n)
        try:
            attributes = shapes.parse_caption(prompt).expand(n, -1).clone()  # (n, A)
        except ConfigError:  # free text: sampled, but nothing to check
            attributes = None
    else:
        test_captions, test_attributes = shapes.split_captions("test")
        idx = torch.arange(n) % len(test_captions)
        captions = [test_captions[i] for i in idx.tolist()]
        attributes = test_attributes[idx]  # (n, A)
    return _text_table(captions, cfg), attributes


@torch.no_grad()
def clip_conditions(cfg: TrainConfig, clip: nn.Module, clip_cfg: TrainConfig, n: int,
                    labels: Sequence[int] | None = None, prompt: str | None = None
                    ) -> tuple[dict, Tensor | None]:
    """The conditions of ``n`` CLIP-guided samples of an unconditional run: the caption
    embeddings g(c) (n, D) of the noise-aware ``clip`` (its run's config ``clip_cfg``) as
    ``{"clip_text": …}``, and the labels the samples should show. The captions are those of
    :func:`sample_conditions` for a text-conditional run of the same data: the ``prompt`` for
    every sample, or template captions of the labels (digits; default every digit in turn),
    or the test split's captions (shapes, with their attributes in place of labels)."""
    text_cfg = replace(cfg, cond="text", text_tokens=clip_cfg.text_tokens)
    cond, y = sample_conditions(text_cfg, n, labels, prompt)
    device = next(clip.parameters()).device
    tokens, mask = cond["context"].to(device), cond["context_mask"].to(device)
    return {"clip_text": clip.encode_text(tokens, mask)}, y  # (n, D) unit norm


def guided(model, schedule: Schedule, cfg: TrainConfig, cond: dict, *, w: float = 0.0,
           classifier=None, threshold: str = "none", threshold_p: float = 0.995,
           sampler: str = "ddim", steps: int | None = None,
           variance: str | None = None, clip=None) -> nn.Module:
    """The ε-model a sampler sees: ``model`` with classifier-free guidance of weight ``w``
    (Weng eq. 26) or, with ``classifier``, classifier guidance of weight ``w`` (eq. 25; for
    ``ddpm`` on the full chain, ``steps`` None or T, Dhariwal & Nichol's Algorithm 1, the mean
    shift with ``variance``), then Imagen's ``threshold``
    ("none", "static", "dynamic", the latter at percentile ``threshold_p``) on x̂_0, bound to
    ``cond``. w = 0 and no threshold: the plain (conditional) model.

    With ``clip`` (a noise-aware :class:`~difflab.nn.noisy_clip.NoisyCLIP`): CLIP guidance of
    weight ``w`` (GLIDE; :class:`~difflab.guidance.CLIPGuidance`) of an unconditional run, the
    caption embeddings g(c) (n, D) in ``cond["clip_text"]``."""
    if threshold not in THRESHOLDS:
        raise ValueError(f"unknown threshold {threshold!r}; choose one of {', '.join(THRESHOLDS)}")
    from ..samplers.consistency import is_consistency_model

    if is_consistency_model(model) and (w or classifier is not None or clip is not None
                                            or threshold != "none"):
        raise ValueError("guidance and thresholding act on an ε-model; this run is a "
                         "consistency model (distil the guided teacher instead)")
    m = model
    if clip is not None:
        if classifier is not None or cfg.cond != "none":
            raise ValueError("CLIP guidance guides an unconditional run, without a classifier")
        if "clip_text" not in cond:
            raise ValueError("CLIP guidance needs the caption embeddings (cond['clip_text'])")
        m = CLIPGuidance(m, clip.encode_image, schedule, w, scale=clip.logit_scale)
    elif classifier is not None:
        if "y" not in cond:
            raise ValueError("classifier guidance needs class labels (--class)")
        takes_y = cfg.cond == "class"
        if sampler == "ddpm" and steps in (None, schedule.T):
            m = AncestralClassifierGuidance(m, classifier, schedule, w, model_takes_y=takes_y,
                                            variance=variance or "beta_tilde")
        else:
            m = ClassifierGuidance(m, classifier, schedule, w, model_takes_y=takes_y)
    elif w > 0:
        if cfg.cond == "none":
            raise ValueError("classifier-free guidance needs a conditional run (cond class or "
                             "text); for an unconditional one give a --classifier")
        m = ClassifierFree(m, w, null_cond(cfg))
    elif w < 0:
        raise ValueError(f"guidance weight must be >= 0, got {w}")
    if not 0 < threshold_p <= 1:
        raise ValueError(f"threshold_p must lie in (0, 1], got {threshold_p}")
    clip = THRESHOLDS[threshold]
    if clip is dynamic_threshold:
        clip = functools.partial(dynamic_threshold, p=threshold_p)
    if clip is not None:
        m = Thresholded(m, schedule, clip)
    if cfg.cond != "class" and classifier is None:
        cond = {k: v for k, v in cond.items() if k != "y"}
    return Bound(m, **cond)
