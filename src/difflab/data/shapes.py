"""``shapes``: a generated, seeded image-caption dataset whose captions are exact.

Each image shows one to three coloured shapes on black, and its caption names them with their
relations: "a small red circle left of a large blue square". The attributes behind the caption
are kept exactly, so a model conditioned on the captions can be scored by whether its images
show what the prompt says (:mod:`difflab.data.shapes_eval`).

Scenes (:func:`scenes`, generated once from :data:`SCENE_SEED` with numpy):

- ``count`` 1, 2 or 3 (uniform); each shape one of :data:`SHAPES` (circle, square, triangle),
  :data:`COLOURS` (red, green, blue, yellow, cyan, magenta) and :data:`SIZES` (small: bounding
  box 0.18 of the image side, large: 0.28), each drawn uniformly and independently (repeats are
  allowed: "a small red circle above a small red circle"). A square fills its box, a circle is
  inscribed in it, a triangle points up with its base on the box's bottom side. (Squares of
  0.85 the box, drawn first, looked so like circles at 32 pixels that the classifier below
  confused them on one shape in ten.)
- Positions: the image is a 3×3 grid of cells; each shape sits in its own cell, its centre
  moved off the cell's centre by a whole number of samples of the 128-grid below, up to ±2
  (±0.016 of the side) per axis. Two or three shapes form a **row** (one grid row, distinct
  columns, sorted left to right) or a **column** (one grid column, top to bottom), with
  probability ½ each; a single shape sits in any cell. No two scenes are alike (duplicates
  are drawn again), so no two images are. The geometry makes the relations
  exact and unambiguous: in a row every two bounding boxes are disjoint horizontally and
  overlap vertically, so "A left of B" holds and "A above B" does not (and vice versa for a
  column). No two shapes overlap.

Attributes (``ImageData.attributes``, int64 (N, :data:`N_ATTRIBUTES`)): what the caption says,
in a canonical order — column 0 the count, 1 the layout (:data:`LAYOUTS`: 0 single, 1 row, 2
column), then per slot k = 0, 1, 2 the shape, colour and size of the k-th shape **from the left
(row) or the top (column)**, -1 for empty slots. The position of slot k is thereby its rank
along the layout's axis; the exact geometry (cells, centres) is in :class:`Scenes`. In a
parsed prompt, -1 in a filled slot means "not said" (``"a green triangle"`` leaves the size
open).

Captions (:func:`caption`): ``"a {size} {colour} {shape}"`` per shape, joined by one relation:
"left of" / "above" in slot order, or "right of" / "below" in reverse order (chosen per image by
the seed), e.g. "a small green triangle right of a large blue square right of a small red
circle". :func:`parse_caption` inverts it exactly: ``parse_caption(caption(a)) == a``.

Pixels: each image is rendered as a hard-edged colour map on a 128×128 grid and average-pooled
to ``size`` (32: 4×4 samples per pixel, 64: 2×2), then rounded to 256 levels per channel in
[-1, 1] (x = -1 + 2k/255). Both sizes therefore show the same scenes, and a 64×64 image
average-pooled 2× equals the 32×32 one up to the rounding (≤ 1 level). The dataset is fixed
(:data:`N_IMAGES` scenes); ``seed`` only permutes it into the test split (the first
``round(test_fraction · N)`` of the permutation) and the train split (the rest), as
:mod:`difflab.data.images` does. The label ``y`` is the kind of the first slot's shape
(``classes`` = :data:`SHAPES`). Scenes and rendered pixels are cached in memory.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional

from ..errors import ConfigError
from .images import SPLITS, TEST_FRACTION, ImageData

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "cyan", "magenta")
RGB = ((255, 0, 0), (0, 220, 0), (40, 90, 255), (255, 230, 0), (0, 230, 230), (235, 0, 235))
SIZES = ("small", "large")
BOX = (0.18, 0.28)  # side of the bounding box of a small / large shape, in image sides
LAYOUTS = ("single", "row", "column")
MAX_SHAPES = 3
N_ATTRIBUTES = 2 + 3 * MAX_SHAPES  # count, layout, (shape, colour, size) per slot
IMAGE_SIZES = (32, 64)
N_IMAGES = 6000
SCENE_SEED = 0
LEVELS = 256
SUPER = 128  # side of the grid of hard-edged samples every size is pooled from
WINDOW = 48  # side of the patch of samples computed around each shape
JITTER = 2  # max offset of a centre from its cell's centre, in samples of the SUPER grid
SQUARE = 1.0  # a square's side relative to its bounding box
RELATIONS = {"left of": (1, False), "right of": (1, True), "above": (2, False),
             "below": (2, True)}  # word -> (layout, slots listed in reverse order)
WORD = {1: ("left of", "right of"), 2: ("above", "below")}  # layout -> (forward, reverse)


@dataclass(frozen=True)
class Scenes:
    """The fixed scenes, in generation order.

    ``attributes``: int64 (N, N_ATTRIBUTES) as in the module docstring. ``cells``: int64
    (N, 3, 2), (row, col) of each slot's grid cell (-1 if empty). ``centres``: float64
    (N, 3, 2), (x, y) of each slot's centre in image sides, y downwards. ``reverse``: bool (N,),
    whether the caption lists the shapes in reverse order ("right of", "below").
    """

    attributes: np.ndarray
    cells: np.ndarray
    centres: np.ndarray
    reverse: np.ndarray

    def __len__(self) -> int:
        return self.attributes.shape[0]


# --- scenes ----------------------------------------------------------------------------------
def make_scenes(n: int = N_IMAGES, seed: int = SCENE_SEED) -> Scenes:
    """``n`` distinct random scenes from ``seed`` (numpy's default_rng; vectorised,
    deterministic): 2n + 100 candidates are drawn and the first n distinct ones kept, in the
    order drawn, so that no two images are the same (at 32 pixels a lone shape has only
    3 · 6 · 2 kinds × 9 cells × 25 offsets of position)."""
    rng = np.random.default_rng(seed)
    m = 2 * n + 100
    count = rng.integers(1, MAX_SHAPES + 1, size=m)  # (m,)
    layout = np.where(count == 1, 0, rng.integers(1, 3, size=m))  # (m,)
    kinds = np.stack([rng.integers(len(names), size=(m, 3)) for names in (SHAPES, COLOURS, SIZES)],
                     axis=-1)  # (m, 3 slots, shape colour size)
    line = rng.integers(3, size=m)  # the grid row (row layout) or column (column layout)
    # the cells along the line: a sorted random subset of {0, 1, 2} of size count
    order = np.argsort(rng.random((m, 3)), axis=1)  # a random permutation per scene
    along = np.sort(np.where(np.arange(3) < count[:, None], order, 99), axis=1)  # (m, 3)
    single = rng.integers(3, size=(m, 2))  # (row, col) of a lone shape
    rows = np.where(layout[:, None] == 1, line[:, None], along)
    cols = np.where(layout[:, None] == 1, along, line[:, None])
    rows[:, 0] = np.where(layout == 0, single[:, 0], rows[:, 0])
    cols[:, 0] = np.where(layout == 0, single[:, 1], cols[:, 0])
    filled = np.arange(3) < count[:, None]  # (m, 3)
    cells = np.where(filled[..., None], np.stack([rows, cols], axis=-1), -1)  # (m, 3, 2)
    offsets = np.where(filled[..., None], rng.integers(-JITTER, JITTER + 1, size=(m, 3, 2)), 0)
    reverse = (rng.integers(2, size=m) == 1) & (count > 1)
    attributes = np.full((m, N_ATTRIBUTES), -1, dtype=np.int64)
    attributes[:, 0], attributes[:, 1] = count, layout
    attributes[:, 2:] = np.where(filled[..., None], kinds, -1).reshape(m, 9)
    key = np.concatenate([attributes, cells.reshape(m, 6), offsets.reshape(m, 6)], axis=1)
    first = np.sort(np.unique(key, axis=0, return_index=True)[1])  # first of each scene
    if len(first) < n:
        raise ValueError(f"could not draw {n} distinct scenes")
    keep = first[:n]
    cells, offsets = cells[keep].astype(np.int64), offsets[keep]
    # (x, y) = the cell's centre + the offset, in image sides; NaN for an empty slot
    centres = (cells[..., ::-1] * 2 + 1) / 6.0 + offsets[..., ::-1] / SUPER
    centres = np.where(cells >= 0, centres, np.nan)
    return Scenes(attributes[keep], cells, centres, reverse[keep])


@functools.lru_cache(maxsize=4)
def scenes(n: int = N_IMAGES) -> Scenes:
    """The dataset's scenes (cached): :func:`make_scenes` with :data:`SCENE_SEED`."""
    return make_scenes(n, SCENE_SEED)


# --- captions --------------------------------------------------------------------------------
def _phrase(shape: int, colour: int, size: int) -> str:
    words = [SIZES[size] if size >= 0 else "", COLOURS[colour] if colour >= 0 else "",
             SHAPES[shape]]
    return "a " + " ".join(w for w in words if w)


def caption(attributes, reverse: bool = False) -> str:
    """The caption of one attribute row (N_ATTRIBUTES ints; -1 colour or size is left out);
    ``reverse`` lists the shapes right to left ("right of") or bottom to top ("below")."""
    a = [int(v) for v in attributes]
    count, layout = a[0], a[1]
    if not 1 <= count <= MAX_SHAPES or layout not in (0, 1, 2) or (layout == 0) != (count == 1):
        raise ValueError(f"not a valid attribute row: {a}")
    slots = [a[2 + 3 * k: 5 + 3 * k] for k in range(count)]
    if any(s[0] < 0 for s in slots):
        raise ValueError(f"every shape needs a kind: {a}")
    phrases = [_phrase(*s) for s in slots]
    if count == 1:
        return phrases[0]
    if reverse:
        phrases.reverse()
    return f" {WORD[layout][int(reverse)]} ".join(phrases)


def captions(attributes, reverse=None) -> tuple[str, ...]:
    """Captions of attribute rows (N, N_ATTRIBUTES); ``reverse`` (N,) bools or None."""
    rows = np.asarray(attributes)
    rev = np.zeros(len(rows), dtype=bool) if reverse is None else np.asarray(reverse)
    return tuple(caption(r, bool(b)) for r, b in zip(rows, rev, strict=True))


_RELATION = re.compile(r"\s+(" + "|".join(RELATIONS) + r")\s+")


def _parse_phrase(text: str, prompt: str) -> list[int]:
    words = text.split()
    if len(words) < 2 or words[0] not in ("a", "an", "one"):
        raise ConfigError(f"cannot read {text!r} in the prompt {prompt!r}; say e.g. "
                          f"'a small red circle'")
    shape = words[-1][:-1] if words[-1].endswith("s") and words[-1][:-1] in SHAPES else words[-1]
    if shape not in SHAPES:
        raise ConfigError(f"unknown shape {words[-1]!r} in {prompt!r}; choose one of "
                          f"{', '.join(SHAPES)}")
    colour = size = -1
    for w in words[1:-1]:
        if w in COLOURS and colour < 0:
            colour = COLOURS.index(w)
        elif w in SIZES and size < 0:
            size = SIZES.index(w)
        else:
            raise ConfigError(f"unexpected word {w!r} in {prompt!r}; a shape is described by "
                              f"'a [{'|'.join(SIZES)}] [{'|'.join(COLOURS)}] "
                              f"{'|'.join(SHAPES)}'")
    return [SHAPES.index(shape), colour, size]


def parse_caption(text: str) -> Tensor:
    """The attributes (int64 (N_ATTRIBUTES,)) a caption states: the inverse of :func:`caption`.

    Accepts one to three shapes "a [size] [colour] shape" joined by ONE relation ("left of",
    "right of", "above", "below"), any case, extra spaces and a final full stop; a size or
    colour that is not said is -1. Raises :class:`~difflab.errors.ConfigError` otherwise.
    """
    clean = " ".join(text.lower().strip().rstrip(".").split())
    parts = _RELATION.split(clean)  # [phrase, relation, phrase, relation, phrase]
    phrases, relations = parts[::2], parts[1::2]
    if len(phrases) > MAX_SHAPES:
        raise ConfigError(f"at most {MAX_SHAPES} shapes per prompt, got {len(phrases)} in "
                          f"{text!r}")
    if len(set(relations)) > 1:
        raise ConfigError(f"one relation per prompt (all shapes in a row or a column), got "
                          f"{', '.join(relations)} in {text!r}")
    slots = [_parse_phrase(p, text) for p in phrases]
    layout, reverse = RELATIONS[relations[0]] if relations else (0, False)
    if reverse:
        slots.reverse()
    out = torch.full((N_ATTRIBUTES,), -1, dtype=torch.int64)
    out[0], out[1] = len(slots), layout
    out[2:2 + 3 * len(slots)] = torch.tensor(sum(slots, []))
    return out


# --- pixels ----------------------------------------------------------------------------------
def render(sc: Scenes, size: int, chunk: int = 1000) -> Tensor:
    """uint8 (N, 3, size, size) images of the scenes: each shape as hard-edged samples on the
    SUPER×SUPER grid, average-pooled to ``size`` (which must divide SUPER) and rounded. Only a
    WINDOW² patch of samples around each shape is computed (the shape fits inside it), aligned to
    the pixels of ``size``, so its pooled coverage adds into the image at its place."""
    if SUPER % size or size > SUPER // 2:
        raise ValueError(f"size must divide {SUPER // 2}, got {size}")
    f, w = SUPER // size, WINDOW // (SUPER // size)  # samples per pixel, window in pixels
    palette = torch.tensor(RGB, dtype=torch.float32)  # (C, 3)
    att = torch.from_numpy(sc.attributes[:, 2:].reshape(-1, 3, 3))  # (N, 3 slots, 3)
    centres = torch.from_numpy(np.nan_to_num(sc.centres, nan=-9.0))  # (N, 3, 2), float64
    out = []
    for a, c in zip(att.split(chunk), centres.split(chunk), strict=True):
        B = a.shape[0]
        # first sample of each window, a multiple of f, with the shape inside the window
        o = ((c * SUPER).floor().long() - WINDOW // 2).div(f, rounding_mode="floor") * f
        o = o.clamp(0, SUPER - WINDOW)  # (B, 3, 2)
        local = torch.arange(WINDOW, dtype=torch.float64) + 0.5
        du = ((o[..., 0, None] + local) / SUPER - c[..., 0, None])[..., None, :]  # (B, 3, 1, W)
        dv = ((o[..., 1, None] + local) / SUPER - c[..., 1, None])[..., :, None]  # (B, 3, W, 1)
        h = (torch.tensor(BOX, dtype=torch.float64)[a[..., 2].clamp(min=0)] / 2)[..., None, None]
        circle = du.square() + dv.square() <= h.square()
        square = (du.abs() <= SQUARE * h) & (dv.abs() <= SQUARE * h)
        triangle = (dv <= h) & (2 * du.abs() <= dv + h)  # apex up, base 2h wide
        kind = a[..., 0, None, None]
        inside = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle))
        inside = inside & (kind >= 0)  # (B, 3, W, W)
        cover = functional.avg_pool2d(inside.float(), f)  # (B, 3, w, w) in [0, 1]
        colour = palette[a[..., 1].clamp(min=0)]  # (B, 3 slots, 3 rgb)
        img = torch.zeros(B, 3, size, size)
        b = torch.arange(B).view(B, 1, 1, 1)
        ch = torch.arange(3).view(1, 3, 1, 1)
        for k in range(3):  # shapes never overlap: their coverages add
            rows = (o[:, k, 1] // f).view(B, 1, 1, 1) + torch.arange(w).view(1, 1, w, 1)
            cols = (o[:, k, 0] // f).view(B, 1, 1, 1) + torch.arange(w).view(1, 1, 1, w)
            value = cover[:, k, None] * colour[:, k, :, None, None]  # (B, 3, w, w)
            img.index_put_((b, ch, rows, cols), value, accumulate=True)
        out.append(img.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


@functools.lru_cache(maxsize=4)
def _pixels(n: int, size: int) -> Tensor:
    return render(scenes(n), size)


def _split(n: int, split: str, seed: int, test_fraction: float) -> Tensor:
    """Indices of one split of range(n), exactly as :mod:`difflab.data.images` splits."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))  # (n,)
    n_test = min(max(round(test_fraction * n), int(test_fraction > 0)), n - 1)
    if split == "test":
        return perm[:n_test]
    return perm[n_test:] if split == "train" else perm


def split_captions(split: str = "test", seed: int = 0, test_fraction: float = TEST_FRACTION,
                   n: int = N_IMAGES) -> tuple[tuple[str, ...], Tensor]:
    """The captions and attributes (int64 (N, N_ATTRIBUTES)) of one split, in the order of
    :func:`shapes`, without rendering its pixels: prompts whose answers are known."""
    sc = scenes(n)
    idx = _split(n, split, seed, test_fraction)
    att = torch.from_numpy(sc.attributes)[idx]  # (N, N_ATTRIBUTES)
    return captions(sc.attributes[idx.numpy()], sc.reverse[idx.numpy()]), att


def shapes(
    split: str = "train",
    size: int = 32,
    seed: int = 0,
    test_fraction: float = TEST_FRACTION,
    n: int = N_IMAGES,
) -> ImageData:
    """The shapes dataset (see the module docstring) as RGB (N, 3, size, size), 256 levels.

    ``size``: 32 or 64. Split 90/10 by ``seed``: 5400 train, 600 test. ``captions`` and
    ``attributes`` (int64 (N, N_ATTRIBUTES)) come with the images; ``y`` is the first slot's
    shape.
    """
    if size not in IMAGE_SIZES:
        raise ConfigError(f"shapes are rendered at {' or '.join(map(str, IMAGE_SIZES))} "
                          f"pixels, got {size}")
    idx = _split(n, split, seed, test_fraction)
    x = _pixels(n, size)[idx].float() * (2.0 / 255.0) - 1.0  # (N, 3, size, size)
    caps, att = split_captions(split, seed, test_fraction, n)
    return ImageData(x.contiguous(), att[:, 2].clone(), LEVELS, "shapes", SHAPES,
                     captions=caps, attributes=att)
