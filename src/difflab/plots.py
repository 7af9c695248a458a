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
