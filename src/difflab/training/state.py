"""The state of a training run between two updates, as plain tensors and numbers: what a
checkpoint holds (written and read by :mod:`difflab.runs.checkpoint`) and what
:func:`difflab.training.loop.fit` resumes from exactly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class TrainState:
    """Everything a resumed run needs.

    ``modules``: the objective's named modules (e.g. {"model": θ, "ema": θ_ema}) as state dicts;
    ``extra``: the objective's own state (the importance sampler's history, a progressive round's
    teacher), flat named tensors; ``log``: the loss log's.
    """

    step: int
    modules: dict[str, dict[str, Tensor]]
    optimizer: dict[str, Any]  # torch.optim state_dict
    generator: Tensor  # uint8 state of the batch / noise torch.Generator
    torch_rng: Tensor  # uint8 state of torch's global CPU generator (dropout)
    elapsed: float = 0.0  # training seconds so far, over all sessions
    extra: dict[str, Tensor] = field(default_factory=dict)
    log: dict[str, Tensor] = field(default_factory=dict)
