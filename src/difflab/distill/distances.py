"""Distances d(x, y) for the consistency losses — Weng eq. (31)-(32): "ℓ2, ℓ1 or LPIPS".

Each maps two batches (B, …) to per-sample distances (B,), is ≥ 0 and is 0 only when x = y
(for ``feature_distance``: only when the features agree).

- ``l2``: mean over the data dimensions of (x − y)² (Song et al.'s "l2": a squared distance).
- ``l1``: mean of |x − y|.
- ``pseudo_huber``: √(‖x − y‖² + c²) − c, c = 0.00054 √d with d the data dimension (Song &
  Dhariwal 2023, "improved consistency training", §3.3). ≈ ‖x − y‖²/(2c) for small differences
  and ≈ ‖x − y‖ − c for large ones: its gradient has norm < 1, so outliers weigh less than in ℓ2.
- ``feature_distance(features)``: mean squared difference of features(x), features(y) for any
  feature extractor (B, …) → (B, F) — the stand-in for LPIPS (Zhang et al. 2018), whose weights
  cannot be downloaded here. ``classifier_features`` builds one from difflab's committed image
  classifier (``fd.load_classifier``), the network its Fréchet distance uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor
from torch.nn import functional

Distance = Callable[[Tensor, Tensor], Tensor]  # (x (B, …), y (B, …)) -> (B,)


def l2(x: Tensor, y: Tensor) -> Tensor:
    return (x - y).pow(2).flatten(1).mean(1)


def l1(x: Tensor, y: Tensor) -> Tensor:
    return (x - y).abs().flatten(1).mean(1)


def pseudo_huber_c(dim: int) -> float:
    """c = 0.00054 √d (Song & Dhariwal 2023, §3.3; 0.03 for CIFAR-10's d = 3072)."""
    return 0.00054 * math.sqrt(dim)


def pseudo_huber(x: Tensor, y: Tensor, c: float | None = None) -> Tensor:
    """√(‖x − y‖² + c²) − c per sample, c = 0.00054 √d by default."""
    sq = (x - y).pow(2).flatten(1).sum(1)  # (B,)
    if c is None:
        c = pseudo_huber_c(x[0].numel())
    return (sq + c * c).sqrt() - c


def feature_distance(features: Callable[[Tensor], Tensor]) -> Distance:
    """d(x, y) = mean_F (features(x) − features(y))², gradients flowing through features."""

    def d(x: Tensor, y: Tensor) -> Tensor:
        return (features(x) - features(y)).pow(2).flatten(1).mean(1)

    return d


def classifier_features(dataset: str = "digits", size: int = 8) -> Callable[[Tensor], Tensor]:
    """features(x) (B, 128) of difflab's committed classifier for images x (B, 1, size, size) in
    [−1, 1] (MNIST 28×28 padded to 32 as ``fd.FDEvaluator`` does). Frozen weights; unlike the
    evaluator it does not clamp x, so that gradients reach every pixel."""
    from ..data.fd import load_classifier

    padded = (dataset, size) == ("mnist", 28)
    clf, _ = load_classifier(dataset, 32 if padded else size)

    def features(x: Tensor) -> Tensor:
        if padded:
            x = functional.pad(x, (2, 2, 2, 2), value=-1.0)
        return clf.to(x.device).features(x)

    return features
