"""The diffusion objective of the one loop: L_simple (Weng eq. 19; Ho et al. 2020, Algorithm 1),
L_hybrid = L_simple + λ L_vlb with the stop-gradient on μ_θ (Weng eq. 23 and the text after
it; Nichol & Dhariwal 2021) or L_vlb alone (eq. 16; ibid. §3.3), t uniform or
importance-sampled, conditions dropped to ∅ with probability p_uncond (Ho & Salimans 2021,
Algorithm 1); an EMA of the weights; a warm-up, then a constant, cosine or linear learning
rate."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..losses import l_simple
from ..schedules import Schedule
from ..vlb import ImportanceSampler, l_hybrid, l_vlb
from .backend import Backend
from .ema import ema_decay_at, ema_update
from .loop import Objective


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up over ``warmup`` updates, then constant, a cosine decay to
    ``min_ratio · lr`` at update ``steps − 1``, or a linear decay that would reach
    ``min_ratio · lr`` at update ``steps`` (with ``warmup = 0`` and ``min_ratio = 0``:
    lr · (1 − step / steps), what consistency training uses, Song et al. 2023)."""

    lr: float
    steps: int
    warmup: int = 0
    kind: str = "cosine"  # "constant" | "cosine" | "linear"
    min_ratio: float = 0.05

    def __call__(self, step: int) -> float:
        """Learning rate of update number ``step`` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.lr
        if self.kind == "linear":
            left = 1 - min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
            return self.lr * (self.min_ratio + (1 - self.min_ratio) * left)
        progress = (step - self.warmup) / max(1, self.steps - 1 - self.warmup)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.min_ratio + (1 - self.min_ratio) * cos)


class _SharedSampler:
    """The importance sampler as seen by one of several processes: weights from the shared
    history, updates with every rank's (t, L_t) so that the history stays identical."""

    def __init__(self, sampler: ImportanceSampler, backend: Backend):
        self.sampler, self.backend = sampler, backend

    def weights(self, t: Tensor) -> Tensor:
        return self.sampler.weights(t)

    def update(self, t: Tensor, losses: Tensor) -> None:
        self.sampler.update(self.backend.gather(t), self.backend.gather(losses.detach()))


class DiffusionObjective(Objective):
    """ε-prediction training of ``net`` on ``data`` (N, …) with conditions ``conds``
    (:class:`difflab.build.conditioning.TrainConditions` or None); with ``prediction`` "v" or
    "x0" the network regresses v or x_0 instead (:func:`~difflab.losses.l_simple`).

    ``loss``: "simple", "hybrid" (with ``hybrid_lambda``) or "vlb"; both bounds use
    ``levels`` (K of K-level image data for the bound's L_0, None for continuous data);
    ``t_sampler``: an
    :class:`~difflab.vlb.ImportanceSampler` or None (uniform t).
    """

    def __init__(self, net: nn.Module, schedule: Schedule, data: Tensor, *, batch: int,
                 lr: LRSchedule, ema_decay: float, conds=None, p_uncond: float = 0.0,
                 loss: str = "simple", hybrid_lambda: float = 0.001,
                 t_sampler: ImportanceSampler | None = None, levels: int | None = None,
                 weight_decay: float = 0.0, grad_clip: float = 1.0,
                 backend: Backend | None = None, prediction: str = "eps"):
        self.net, self.schedule, self.data, self.batch = net, schedule, data, batch
        self.ema = copy.deepcopy(net).requires_grad_(False)
        self.schedule_lr, self.lr, self.ema_decay = lr, lr.lr, ema_decay
        self.conds, self.p_uncond = conds, p_uncond
        self.kind, self.hybrid_lambda, self.levels = loss, hybrid_lambda, levels
        self.t_sampler = t_sampler
        self.weight_decay, self.grad_clip = weight_decay, grad_clip
        self.backend = backend
        self.sample_shape = tuple(data.shape[1:])  # of x_0 and ε (a latent run: the latents')
        if loss not in ("simple", "hybrid", "vlb"):
            raise ValueError(f"loss must be simple, hybrid or vlb, got {loss!r}")
        if prediction not in ("eps", "v", "x0") or (prediction != "eps" and loss != "simple"):
            raise ValueError(f"prediction must be eps, or v / x0 with loss simple, got "
                             f"{prediction!r} with loss {loss!r}")
        self.prediction = prediction

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.net, "ema": self.ema}

    def draw(self, step: int, g: torch.Generator) -> dict[str, Tensor]:
        # the order of the draws is that of the loop before devices existed: bit-exact on CPU
        idx = torch.randint(0, len(self.data), (self.batch,), generator=g)  # (B,)
        cond = self.conds.batch(idx, g, self.p_uncond) if self.conds is not None else {}
        x0 = self.data[idx]  # (B, …)
        out = {"x0": x0, **cond}
        if self.t_sampler is not None:
            out["t"] = self.t_sampler.sample(self.batch, g)[0]  # (B,) ∼ p_t
        else:
            out["t"] = torch.randint(1, self.schedule.T + 1, (self.batch,), generator=g)
        out["noise"] = torch.randn((self.batch, *self.sample_shape), generator=g,
                                   dtype=x0.dtype)  # (B, …)
        return out

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        x0, t, noise = batch["x0"], batch["t"], batch["noise"]
        cond = {k: v for k, v in batch.items() if k not in ("x0", "t", "noise")}
        if self.kind in ("hybrid", "vlb"):
            sampler = self.t_sampler
            if sampler is not None and self.backend is not None and self.backend.world_size > 1:
                sampler = _SharedSampler(sampler, self.backend)
            if self.kind == "vlb":  # the bound alone (Nichol & Dhariwal 2021, §3.3)
                return l_vlb(model, self.schedule, x0, t=t, noise=noise, sampler=sampler,
                             levels=self.levels, **cond)
            return l_hybrid(model, self.schedule, x0, self.hybrid_lambda, t=t, noise=noise,
                            sampler=sampler, levels=self.levels, **cond)
        return l_simple(model, self.schedule, x0, t=t, noise=noise, prediction=self.prediction,
                        **cond)

    def lr_at(self, step: int) -> float:
        return self.schedule_lr(step)

    def after_update(self, step: int) -> None:
        ema_update(list(self.ema.parameters()), list(self.net.parameters()),
                   ema_decay_at(self.ema_decay, step))

    def state_dict(self) -> dict[str, Tensor]:
        if self.t_sampler is None:
            return {}
        return {f"tsampler.{k}": v for k, v in self.t_sampler.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if self.t_sampler is None:
            return
        own = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("tsampler.")}
        if not own:
            raise CheckpointError("the checkpoint has no importance sampler state; it cannot "
                                  "resume exactly")
        self.t_sampler.load_state_dict(own)
