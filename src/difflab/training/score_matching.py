"""Score matching as an objective of the one loop: a noise-conditional score network (NCSN;
Weng, "Connection with noise-conditioned score networks"; Song & Ermon 2019) trained by denoising
(``"dsm"``) or sliced (``"ssm"``) score matching, every level of the ladder weighted by
λ(σ) = σ² — the losses are :func:`difflab.ncsn.dsm_loss` and :func:`difflab.ncsn.ssm_loss`.

Each update draws, per example, a level i uniform on 1..L, the perturbation z ∼ N(0, I) and, for
SSM, the projection v ∼ N(0, I). The trained module is s_θ = :class:`~difflab.ncsn.ScoreModel`
(net/σ, technique 3 of Song & Ermon 2020); the checkpoint holds the bare network ("model") and
its EMA ("ema", technique 5) — the same files as a diffusion run's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ncsn import ScoreModel, dsm_loss, ssm_loss
from .diffusion import LRSchedule
from .ema import ema_decay_at, ema_update, frozen_copy
from .loop import Objective

SCORE_LOSSES = ("dsm", "ssm")


class ScoreMatchingObjective(Objective):
    """DSM or SSM (``kind``) of ``net`` over the ladder ``sigmas`` (L,) on ``data`` (N, …)."""

    def __init__(self, net: nn.Module, sigmas: Tensor, data: Tensor, *, kind: str, batch: int,
                 lr: LRSchedule, ema_decay: float, weight_decay: float = 0.0,
                 grad_clip: float = 1.0, variance_reduction: bool = True):
        if kind not in SCORE_LOSSES:
            raise ValueError(f"kind must be one of {', '.join(SCORE_LOSSES)}, got {kind!r}")
        self.net = ScoreModel(net, sigmas)
        self.ema = ScoreModel(frozen_copy(net), sigmas)
        self.kind, self.data, self.batch = kind, data, batch
        self.schedule_lr, self.lr, self.ema_decay = lr, lr.lr, ema_decay
        self.weight_decay, self.grad_clip = weight_decay, grad_clip
        self.variance_reduction = variance_reduction

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.net.net, "ema": self.ema.net}

    def draw(self, step: int, g: torch.Generator) -> dict[str, Tensor]:
        idx = torch.randint(0, len(self.data), (self.batch,), generator=g)  # (B,)
        x0 = self.data[idx]  # (B, …)
        out = {"x0": x0,
               "i": torch.randint(1, self.net.levels + 1, (self.batch,), generator=g),  # (B,)
               "noise": torch.randn(x0.shape, generator=g, dtype=x0.dtype)}  # (B, …) z
        if self.kind == "ssm":
            out["v"] = torch.randn(x0.shape, generator=g, dtype=x0.dtype)  # (B, …) projections
        return out

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        if self.kind == "dsm":
            return dsm_loss(model, self.net.sigmas, batch["x0"], batch["i"],
                            batch["noise"]).mean()
        return ssm_loss(model, self.net.sigmas, batch["x0"], batch["i"], batch["noise"],
                        batch["v"], self.variance_reduction).mean()

    def lr_at(self, step: int) -> float:
        return self.schedule_lr(step)

    def metrics(self) -> dict[str, float]:
        """The ladder, for metrics.json: σ_1, σ_L and L."""
        sigmas = self.net.sigmas
        return {"sigma_max": float(sigmas[0]), "sigma_min": float(sigmas[-1]),
                "sigma_levels": int(sigmas.shape[0])}

    def after_update(self, step: int) -> None:
        ema_update(list(self.ema.net.parameters()), list(self.net.net.parameters()),
                   ema_decay_at(self.ema_decay, step))
