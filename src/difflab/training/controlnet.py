"""The ControlNet objective of the one loop (Weng, "ControlNet"; Zhang et al. 2023, §3.3):
L_simple (Weng eq. 19) of the frozen base with the control branch's residuals,

    L = E_{x_0, t, c_t, c_f, ε} ‖ε − ε_θ(x_t, t, c_t, c_f)‖²,

where c_f is the hint of x_0 (its control image) and c_t the base's own condition (class label
or caption), replaced by ∅ half of the time (the paper drops 50 % of the prompts, so the branch
learns to read the hint without them). Only the control branch (:class:`~difflab.nn.controlnet.
ControlNet`) is trained; the base's weights never change (its encoder runs without gradients).
An EMA of the branch, warm-up and a learning rate as for diffusion (:class:`.diffusion.
LRSchedule`)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..losses import l_simple
from ..nn.controlnet import control_forward
from ..schedules import Schedule
from .diffusion import LRSchedule
from .ema import ema_decay_at, ema_update
from .loop import Objective

P_UNCOND = 0.5  # Zhang et al. 2023, §3.3: 50 % of the text prompts replaced by empty strings


class ControlNetObjective(Objective):
    """Trains ``control`` (the branch of the frozen ``base``) on images ``data`` (N, C, H, W)
    with their ``hints`` (N, C_h, H·d, W·d) and conditions ``conds`` (a
    :class:`difflab.build.conditioning.TrainConditions` or None), dropped to ∅ with probability
    ``p_uncond``."""

    def __init__(self, base: nn.Module, control: nn.Module, schedule: Schedule, data: Tensor,
                 hints: Tensor, *, batch: int, lr: LRSchedule, ema_decay: float, conds=None,
                 p_uncond: float = P_UNCOND, weight_decay: float = 0.0, grad_clip: float = 1.0):
        if len(hints) != len(data):
            raise ValueError(f"{len(hints)} hints for {len(data)} images")
        self.base = base.requires_grad_(False).eval()
        self.net = control
        self.ema = copy.deepcopy(control).requires_grad_(False)
        self.schedule, self.data, self.hints, self.batch = schedule, data, hints, batch
        self.schedule_lr, self.lr, self.ema_decay = lr, lr.lr, ema_decay
        self.conds, self.p_uncond = conds, p_uncond
        self.weight_decay, self.grad_clip = weight_decay, grad_clip

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.net, "ema": self.ema}

    def to(self, device: torch.device) -> None:
        super().to(device)
        self.base.to(device)

    def draw(self, step: int, g: torch.Generator) -> dict[str, Tensor]:
        idx = torch.randint(0, len(self.data), (self.batch,), generator=g)  # (B,)
        cond = self.conds.batch(idx, g, self.p_uncond) if self.conds is not None else {}
        x0 = self.data[idx]  # (B, C, H, W)
        t = torch.randint(1, self.schedule.T + 1, (self.batch,), generator=g)  # (B,)
        noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)  # (B, C, H, W)
        return {"x0": x0, "hint": self.hints[idx], "t": t, "noise": noise, **cond}

    def eps(self, model: nn.Module, x_t: Tensor, t: Tensor, hint: Tensor, **cond) -> Tensor:
        """ε̂ of the base with the branch ``model`` (as the backend prepared it)."""
        return control_forward(self.base)(self.base, model, x_t, t, hint, 1.0, **cond)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        cond = {k: v for k, v in batch.items() if k not in ("x0", "t", "noise")}

        def eps(x_t: Tensor, t: Tensor, **c) -> Tensor:
            return self.eps(model, x_t, t, **c)

        return l_simple(eps, self.schedule, batch["x0"], t=batch["t"], noise=batch["noise"],
                        **cond)

    def lr_at(self, step: int) -> float:
        return self.schedule_lr(step)

    def after_update(self, step: int) -> None:
        ema_update(list(self.ema.parameters()), list(self.net.parameters()),
                   ema_decay_at(self.ema_decay, step))
