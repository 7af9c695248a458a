"""Control images ("hints") for ControlNet (Weng, "ControlNet"; Zhang et al. 2023): edge maps
computed from any image dataset, and user-supplied control images for image folders.

- :func:`sobel` / :func:`edges`: the Sobel gradient of an image in torch, its magnitude
  thresholded to a binary edge map, optionally thinned to one pixel by Canny's non-maximum
  suppression along the gradient direction (Canny 1986; no hysteresis). Images are (B, C, H, W)
  in [-1, 1]; the magnitude is scaled so that a full-range step edge (−1 → 1) has magnitude 1.
- :func:`mask_hint`: the silhouette of bright objects on a dark background (digits, MNIST,
  the ``shapes`` dataset), scored by :func:`mask_iou`.
- :data:`HINTS`: the hint kinds by name (``edges``, ``edges-thin``, ``mask``), each an image →
  hint function; a run names its kind and every part of difflab computes hints the same way.
- :func:`edge_f1`: the agreement of two edge maps (precision, recall and F1, with an optional
  tolerance of a few pixels): how well samples follow their hint.
- Folders (:func:`read_controls`, :func:`control_images`): a file ``controls.csv`` at the
  folder's top, with the header ``file,control`` and one row per image, like ``captions.csv``::

      file,control
      cats/tabby.jpg,.controls/cats/tabby.png

  ``control`` is the path of the control image relative to the folder; keep control images in a
  hidden subfolder (``.controls/``) or outside the folder, since every image under the folder is
  a training image. They are read with Pillow at the training images' size (no resizing: a
  control image of another size is an error), as grey (1 channel) or RGB (3), in [0, 1].

Hints are float tensors (B, C_h, H, W) in [0, 1] (1 = edge).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional

from ..errors import ConfigError

CONTROLS_FILE = "controls.csv"
EDGE_THRESHOLD = 0.5  # of the magnitude of a full-range step edge (1)
SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])  # ∂/∂x (columns)
SOBEL_NORM = 8.0  # |G| of a step of height 2 (−1 → 1): 2 · (1 + 2 + 1)


def grey(x: Tensor) -> Tensor:
    """(B, C, H, W) → (B, 1, H, W), the mean of the channels."""
    if x.ndim != 4:
        raise ConfigError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
    return x.mean(dim=1, keepdim=True)


def sobel(x: Tensor) -> tuple[Tensor, Tensor]:
    """The Sobel gradient (g_x, g_y), each (B, 1, H, W), of the grey image of x (B, C, H, W),
    divided by :data:`SOBEL_NORM`; borders replicated (an image's edge is not an edge)."""
    g = functional.pad(grey(x.float()), (1, 1, 1, 1), mode="replicate")  # (B, 1, H+2, W+2)
    kx = SOBEL_X.to(g.device)
    k = torch.stack([kx, kx.T])[:, None] / SOBEL_NORM  # (2, 1, 3, 3): ∂/∂x, ∂/∂y
    gx, gy = functional.conv2d(g, k).unbind(dim=1)  # (B, H, W) each
    return gx[:, None], gy[:, None]


def magnitude(x: Tensor) -> Tensor:
    """|∇x| (B, 1, H, W) of :func:`sobel`: 1 on both sides of a full-range step edge."""
    gx, gy = sobel(x)
    return torch.sqrt(gx * gx + gy * gy)


def thin(mag: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """Canny's non-maximum suppression: keep a pixel of ``mag`` (B, 1, H, W) where it is at
    least its neighbour on the gradient's negative side and more than the one on its positive
    side, the direction rounded to 0°, 45°, 90° or 135° (ties go to the positive side, so a
    two-pixel-wide step edge thins to one). Returns the kept magnitudes (others 0)."""
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180.0  # (B, 1, H, W) in [0, 180)
    sector = (((angle + 22.5) // 45) % 4).long()  # 0: horizontal gradient, 1: 45°, 2: 90°, 3: 135°
    p = functional.pad(mag, (1, 1, 1, 1))  # zeros outside
    H, W = mag.shape[-2:]

    def at(dy: int, dx: int) -> Tensor:  # the neighbour (row + dy, column + dx)
        return p[..., 1 + dy:1 + dy + H, 1 + dx:1 + dx + W]

    # (dy, dx) of the positive neighbour along each sector's direction (y grows downwards)
    steps = ((0, 1), (1, 1), (1, 0), (1, -1))
    keep = torch.zeros_like(mag, dtype=torch.bool)
    for s, (dy, dx) in enumerate(steps):
        local = (mag >= at(-dy, -dx)) & (mag > at(dy, dx))
        keep |= (sector == s) & local
    return torch.where(keep, mag, torch.zeros_like(mag))


def edges(x: Tensor, threshold: float = EDGE_THRESHOLD, thinned: bool = False) -> Tensor:
    """Binary edge map (B, 1, H, W) in {0, 1} of images x (B, C, H, W) in [-1, 1]: the Sobel
    magnitude above ``threshold`` (1 = a full-range step), after non-maximum suppression
    (:func:`thin`) with ``thinned``."""
    gx, gy = sobel(x)
    mag = torch.sqrt(gx * gx + gy * gy)
    if thinned:
        mag = thin(mag, gx, gy)
    return (mag > threshold).to(torch.float32)


def edge_hint(x: Tensor) -> Tensor:
    """The ``edges`` hint: :func:`edges` at the default threshold."""
    return edges(x)


def thin_edge_hint(x: Tensor) -> Tensor:
    """The ``edges-thin`` hint: :func:`edges` thinned by non-maximum suppression."""
    return edges(x, thinned=True)


MASK_THRESHOLD = -0.5  # a pixel is foreground where a channel exceeds this (dark background)


def mask_hint(x: Tensor) -> Tensor:
    """The ``mask`` hint: the silhouette (B, 1, H, W) in {0, 1} of the bright objects on a dark
    background (digits, MNIST, shapes): where any channel of x exceeds :data:`MASK_THRESHOLD`."""
    if x.ndim != 4:
        raise ConfigError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
    return (x.amax(dim=1, keepdim=True) > MASK_THRESHOLD).to(torch.float32)


# the hints computed from images, by name: image (B, C, H, W) in [-1, 1] → hint (B, C_h, H, W)
HINTS: dict[str, Callable[[Tensor], Tensor]] = {"edges": edge_hint, "edges-thin": thin_edge_hint,
                                                "mask": mask_hint}
HINT_CHANNELS = {"edges": 1, "edges-thin": 1, "mask": 1}
FILE_HINT = "file"  # a folder's own control images (controls.csv)


def edge_f1(pred: Tensor, target: Tensor, tolerance: int = 0) -> dict[str, float]:
    """Precision, recall and F1 of a binary edge map ``pred`` against ``target`` (both
    (B, 1, H, W) in {0, 1}), pooled over the batch. With ``tolerance`` k > 0 a predicted edge
    pixel counts as correct when a target edge lies within k pixels (Chebyshev), and a target
    pixel as found when a predicted one does. Two empty maps agree (F1 = 1)."""
    if pred.shape != target.shape:
        raise ValueError(f"edge maps differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
    p, t = pred.float() > 0.5, target.float() > 0.5

    def grow(m: Tensor) -> Tensor:
        if tolerance <= 0:
            return m
        k = 2 * tolerance + 1
        return functional.max_pool2d(m.float(), k, stride=1, padding=tolerance) > 0.5

    n_pred, n_true = int(p.sum()), int(t.sum())
    hit_p = int((p & grow(t)).sum())  # predicted edges near a true one
    hit_t = int((t & grow(p)).sum())  # true edges near a predicted one
    precision = hit_p / n_pred if n_pred else float(n_true == 0)
    recall = hit_t / n_true if n_true else float(n_pred == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def mask_iou(pred: Tensor, target: Tensor) -> float:
    """|pred ∩ target| / |pred ∪ target| of two binary maps, pooled over the batch (1 when
    both are empty)."""
    p, t = pred.float() > 0.5, target.float() > 0.5
    union = int((p | t).sum())
    return int((p & t).sum()) / union if union else 1.0


# --- folders: the user's own control images --------------------------------------------------
def read_controls(folder: str | Path, name: str = CONTROLS_FILE) -> dict[str, str]:
    """The ``file → control image`` mapping of ``folder/name`` (CSV with header file,control)."""
    path = Path(folder) / name
    if not path.is_file():
        raise ConfigError(f"no control file {str(path)!r}: write a CSV with the header "
                          "file,control (paths relative to the folder)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header != ["file", "control"]:
            raise ConfigError(f"{str(path)!r}: the first line must be file,control, got {header}")
        controls: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2 or not row[1].strip():
                raise ConfigError(f"{str(path)!r} line {line}: expected file,control (2 "
                                  f"non-empty fields), got {row}")
            file = row[0].strip().replace("\\", "/")
            if file in controls:
                raise ConfigError(f"{str(path)!r} line {line}: {file!r} has a control already")
            controls[file] = row[1].strip().replace("\\", "/")
    return controls


def read_hint_image(path: str | Path, size: tuple[int, int], channels: int) -> Tensor:
    """One control image as (channels, H, W) float32 in [0, 1], read with Pillow: grey or RGB
    (transparency over black), exactly ``size`` = (H, W) — another size is a ConfigError, as is
    a missing or unreadable file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"hint image {str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            if (im.height, im.width) != tuple(size):
                raise ConfigError(f"hint image {str(path)!r} is {im.height}×{im.width} pixels; "
                                  f"this model needs {size[0]}×{size[1]}")
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, "black"), rgba)
            grey_mode = im.mode in ("1", "L", "I", "I;16", "F", "LA")
            if channels == 1 and not grey_mode and _colourful(im.convert("RGB")):
                raise ConfigError(f"hint image {str(path)!r} is in colour; this model takes a "
                                  "grey (1-channel) hint")
            if channels == 3 and grey_mode:
                raise ConfigError(f"hint image {str(path)!r} is grey; this model takes an RGB "
                                  "(3-channel) hint")
            arr = np.asarray(im.convert("RGB" if channels == 3 else "L"), dtype=np.float32)
    except ConfigError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ConfigError(f"cannot read hint image {str(path)!r} "
                          f"({' '.join(str(err).split())[:120]})") from None
    arr = arr.reshape(size[0], size[1], channels) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (C, H, W)


def _colourful(im) -> bool:
    """True when an RGB image's channels differ anywhere (a grey image saved as RGB is fine)."""
    a = np.asarray(im, dtype=np.int16)
    return bool((a != a[..., :1]).any())


def control_images(folder: str | Path, files: Sequence[str], size: tuple[int, int],
                   channels: int = 1) -> Tensor:
    """The control image of each of ``files`` (paths relative to ``folder``, as in
    ``ImageData.files``) from ``controls.csv``: (N, channels, H, W) in [0, 1]. ConfigError
    naming the first image without a row, a control that is itself a training image, or a
    control image that cannot be read or has another size."""
    controls = read_controls(folder)
    missing = [f for f in files if f not in controls]
    if missing:
        raise ConfigError(f"{len(missing)} of {len(files)} image(s) have no row in "
                          f"{CONTROLS_FILE}, e.g. {missing[0]!r}")
    images = set(files)
    root = Path(folder)
    out = []
    for f in files:
        if controls[f] in images:
            raise ConfigError(f"the control image of {f!r}, {controls[f]!r}, is one of the "
                              "training images; keep control images in a hidden subfolder "
                              "(.controls/) or outside the folder")
        out.append(read_hint_image(root / controls[f], size, channels))
    return torch.stack(out) if out else torch.zeros(0, channels, *size)
