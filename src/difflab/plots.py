"""The pictures of a run: samples beside held-out data, and the reverse process x_T … x_0 (as in
Weng Fig. 3, after Sohl-Dickstein et al. 2015). Matplotlib with the Agg backend, no display."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

_LIM = 3.0  # the toys are standardised: ±3 shows nearly every point
_STYLE = {"s": 1.0, "alpha": 0.4, "linewidths": 0}


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
    fig.savefig(path)
    plt.close(fig)


def plot_points(x: Tensor, path: str | os.PathLike, title: str = "") -> None:
    """One scatter plot of x (n, 2)."""
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=100)
    _scatter(ax, x, title or f"samples (n = {len(x)})", "tab:blue")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_reverse_process(snapshots: Sequence[tuple[str, Tensor]], path: str | os.PathLike
                         ) -> None:
    """One panel per (label, x (k, 2)) snapshot, left to right from x_T to x_0."""
    k = len(snapshots)
    fig, axes = plt.subplots(1, k, figsize=(2.2 * k, 2.5), dpi=100, squeeze=False)
    for ax, (label, x) in zip(axes[0], snapshots, strict=True):
        _scatter(ax, x, label, "tab:blue")
    fig.suptitle("reverse process: x_T → x_0", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
    import math

    from PIL import Image

    nrow = nrow or max(1, math.ceil(math.sqrt(len(x))))
    arr = image_grid(x, nrow).repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path, format="PNG")


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
    fig.savefig(path)
    plt.close(fig)
