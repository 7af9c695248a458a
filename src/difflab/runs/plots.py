"""The pictures of a run: samples beside held-out data, the reverse process x_T … x_0 (as in
Weng Fig. 3, after Sohl-Dickstein et al. 2015) as a strip and as an animated GIF, and the loss
curve. Matplotlib with the Agg backend, no display; the GIF is drawn with numpy and Pillow.
Every file is written atomically (:func:`difflab.checkpoint.atomic_write_bytes`)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

from .checkpoint import atomic_write_bytes  # noqa: E402

_LIM = 3.0  # the toys are standardised: ±3 shows nearly every point
_STYLE = {"s": 1.0, "alpha": 0.4, "linewidths": 0}


def _save(fig, path: str | os.PathLike) -> None:
    """Render ``fig`` in the format of ``path``'s suffix and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix[1:] or "png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _scatter(ax, x: Tensor, title: str, color: str) -> None:
    x = x.detach().float().cpu().numpy()  # (n, 2)
    ax.scatter(x[:, 0], x[:, 1], c=color, **_STYLE)
    ax.set_title(title, fontsize=9)
    ax.set_xlim(-_LIM, _LIM)
    ax.set_ylim(-_LIM, _LIM)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_samples(samples: Tensor, data: Tensor, path: str | os.PathLike, title: str = "") -> None:
    """Two panels: model samples (n, 2) and held-out data (m, 2), on the same axes."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2), dpi=100)
    _scatter(axes[0], samples, f"samples (n = {len(samples)})", "tab:blue")
    _scatter(axes[1], data, f"held-out data (n = {len(data)})", "tab:orange")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_points(x: Tensor, path: str | os.PathLike, title: str = "") -> None:
    """One scatter plot of x (n, 2)."""
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=100)
    _scatter(ax, x, title or f"samples (n = {len(x)})", "tab:blue")
    fig.tight_layout()
    _save(fig, path)


def plot_reverse_process(snapshots: Sequence[tuple[str, Tensor]], path: str | os.PathLike
                         ) -> None:
    """One panel per (label, x (k, 2)) snapshot, left to right from x_T to x_0."""
    k = len(snapshots)
    fig, axes = plt.subplots(1, k, figsize=(2.2 * k, 2.5), dpi=100, squeeze=False)
    for ax, (label, x) in zip(axes[0], snapshots, strict=True):
        _scatter(ax, x, label, "tab:blue")
    fig.suptitle("reverse process: x_T → x_0", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


# --- images ----------------------------------------------------------------------------------
def image_grid(x: Tensor, nrow: int, pad: int = 1) -> Tensor:
    """Images x (n, C, H, W) in [-1, 1] → one uint8 picture (H', W', C) of ``nrow`` per row,
    ``pad`` grey pixels between them."""
    import torch

    n, c, h, w = x.shape
    rows = -(-n // nrow)
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 0.5)
    x = (x.detach().float().cpu().clamp(-1, 1) + 1) / 2  # (n, C, H, W) in [0, 1]
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i]
    return (grid * 255).round().to(torch.uint8).permute(1, 2, 0)  # (H', W', C)


def save_image_grid(x: Tensor, path: str | os.PathLike, nrow: int | None = None,
                    scale: int = 4) -> None:
    """A PNG grid of images x (n, C, H, W) in [-1, 1], each pixel a ``scale``×``scale`` block."""
    from PIL import Image

    nrow = nrow or max(1, math.ceil(math.sqrt(len(x))))
    arr = image_grid(x, nrow).repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def plot_image_reverse_process(snapshots: Sequence[tuple[str, Tensor]],
                               path: str | os.PathLike) -> None:
    """One column per (label, x (k, C, H, W)) snapshot, x_T on the left to x_0 on the right;
    one row per image."""
    import torch

    k = len(snapshots[0][1])
    xs = torch.stack([x for _, x in snapshots], dim=1).flatten(0, 1)  # (k·S, C, H, W)
    pic = image_grid(xs, nrow=len(snapshots)).numpy()
    fig, ax = plt.subplots(figsize=(1.3 * len(snapshots) + 0.5, 1.1 * k + 0.8), dpi=100)
    ax.imshow(pic[..., 0] if pic.shape[-1] == 1 else pic, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    h = pic.shape[1] / len(snapshots)
    ax.set_xticks([h * (j + 0.5) for j in range(len(snapshots))])
    ax.set_xticklabels([label for label, _ in snapshots], fontsize=7, rotation=30)
    ax.set_yticks([])
    ax.set_title("reverse process: x_T → x_0", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


# --- the reverse process as an animation ------------------------------------------------------
GIF_FRAME_MS, GIF_HOLD_MS = 80, 1500  # each frame; the first and the last are held longer
_BAR = 4  # height in pixels of the progress bar under every frame


def _with_bar(pic: np.ndarray, progress: float) -> np.ndarray:
    """Append a progress bar (dark for the fraction of the sampler's steps done) under
    ``pic`` (H, W) or (H, W, C) uint8. It also makes consecutive frames differ, so the GIF
    writer keeps every one."""
    bar = np.full((_BAR, *pic.shape[1:]), 225, dtype=np.uint8)
    bar[:, :round(progress * pic.shape[1])] = 60
    return np.concatenate([pic, bar], axis=0)


def image_frame(x: Tensor, progress: float, max_side: int = 320) -> np.ndarray:
    """One frame: images x (k, C, H, W) in [-1, 1] as a square-ish grid, each pixel enlarged to
    fit ``max_side``, over the progress bar. Returns uint8 (H', W') or (H', W', 3)."""
    grid = image_grid(x, nrow=max(1, math.ceil(math.sqrt(len(x))))).numpy()  # (H', W', C)
    scale = max(1, min(8, max_side // max(grid.shape[:2])))
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    return _with_bar(grid[..., 0] if grid.shape[-1] == 1 else grid, progress)


def point_frame(x: Tensor, progress: float, size: int = 256) -> np.ndarray:
    """One frame: points x (n, 2) on ±3 (the scatter plots' window) as 2×2-pixel dots, darker
    where more of them overlap, over the progress bar. Returns uint8 (size + bar, size)."""
    xy = x.detach().float().cpu().numpy()  # (n, 2)
    col = np.floor((xy[:, 0] + _LIM) / (2 * _LIM) * size).astype(np.int64)
    row = np.floor((_LIM - xy[:, 1]) / (2 * _LIM) * size).astype(np.int64)
    inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
    counts = np.bincount(row[inside] * size + col[inside], minlength=size * size)
    counts = counts.reshape(size, size)
    counts[1:] += counts[:-1].copy()  # each point covers 2×2 pixels
    counts[:, 1:] += counts[:, :-1].copy()
    pic = (255 - np.minimum(255, 90 * counts)).astype(np.uint8)
    return _with_bar(pic, progress)


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike) -> None:
    """An animated GIF (looping) of uint8 frames (H, W) or (H, W, 3), all of one size."""
    from PIL import Image

    if not frames:
        raise ValueError("a GIF needs at least one frame")
    ims = [Image.fromarray(f) for f in frames]
    durations = [GIF_FRAME_MS] * len(ims)
    durations[0] = durations[-1] = GIF_HOLD_MS
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=durations,
                loop=0)
    atomic_write_bytes(path, buf.getvalue())


def save_reverse_process_gif(frames: Sequence[tuple[float, Tensor]],
                             path: str | os.PathLike) -> None:
    """The reverse process x_T → x_0 as a GIF: one frame per (progress, x) of
    :class:`difflab.train.Frames` — images x (k, C, H, W) as a grid, or points x (n, 2)."""
    draw = point_frame if frames[0][1].ndim == 2 else image_frame
    save_gif([draw(x, p) for p, x in frames], path)


# --- the loss curve ---------------------------------------------------------------------------
def plot_loss(rows: Sequence[tuple[int, float]], path: str | os.PathLike, every: int = 1,
              title: str = "training loss") -> None:
    """The logged loss (step, mean of ``every`` steps) against the step, with a trailing mean
    over 1/25 of the rows on top of long logs; a log scale when every value is positive."""
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    if rows:
        steps = np.array([s for s, _ in rows])
        values = np.array([v for _, v in rows])
        w = max(1, len(rows) // 25)  # rows per point of the smoothed curve
        ax.plot(steps, values, color="tab:blue", alpha=0.35 if w > 1 else 1.0, lw=0.8,
                label=f"mean of {every} steps")
        if w > 1:
            c = np.concatenate([[0.0], np.cumsum(values)])
            ax.plot(steps[w - 1:], (c[w:] - c[:-w]) / w, color="tab:blue", lw=1.6,
                    label=f"mean of {w * every} steps")
        if values.min() > 0:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no complete block of {every} steps yet", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
