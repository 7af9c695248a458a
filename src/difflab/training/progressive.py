"""Progressive distillation (Salimans & Ho 2022, Algorithm 2; Weng Fig. 9-10) as an objective of
the one loop: rounds N → N/2 → … of ``steps_per_round`` updates each; the loss, the target and
the time grid are in :mod:`difflab.distill.progressive`.

Each round starts a fresh AdamW whose learning rate decays linearly to 0 over the round (our
choice: it gives every round a converged end point); from the second round on, the teacher is a
frozen copy of the student as it ended the previous round (Alg. 2: the student becomes the
teacher), and that copy is part of the checkpoint, so a run resumed inside a round is exact.
:func:`progressive_distill` and :func:`progressive_round` run the loop in memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..distill.progressive import Prediction, V, progressive_loss, teacher_grid, truncated_snr
from ..parameterization import Model
from ..schedules import Schedule
from .ema import frozen_copy
from .loop import Objective, fit


class ProgressiveDistillation(Objective):
    """``rounds`` rounds from ``steps_N`` student steps; ``on_round(r, N, student)`` is called
    after each round's last update (and its checkpoint)."""

    def __init__(self, teacher: Model, student: nn.Module, schedule: Schedule, data: Tensor,
                 steps_N: int, rounds: int = 1, *, parameterization: Prediction = V,
                 weighting: Callable[[Tensor], Tensor] = truncated_snr,
                 steps_per_round: int = 2000, batch: int = 256, lr: float = 1e-4,
                 weight_decay: float = 0.0, grad_clip: float = 1.0,
                 cond_data: dict[str, Tensor] | None = None,
                 on_round: Callable[[int, int, nn.Module], None] | None = None):
        if rounds < 1 or steps_N % (2 ** (rounds - 1)):
            raise ValueError(f"steps_N = {steps_N} cannot be halved {rounds - 1} times")
        teacher_grid(schedule.T, steps_N)  # validate before any work
        self.first_teacher, self.teacher = teacher, teacher
        self.net, self.schedule, self.data = student, schedule, data
        self.steps_N, self.rounds, self.per_round = steps_N, rounds, steps_per_round
        self.prediction, self.weighting = parameterization, weighting
        self.batch, self.lr, self.weight_decay, self.grad_clip = batch, lr, weight_decay, grad_clip
        self.cond_data, self.on_round = cond_data or {}, on_round
        self.frozen: nn.Module | None = None  # the previous round's student (rounds ≥ 2)

    @property
    def steps(self) -> int:
        return self.rounds * self.per_round

    def round_of(self, step: int) -> int:
        return min(step // self.per_round, self.rounds - 1)

    def N(self, r: int) -> int:
        return self.steps_N // 2**r

    def _set_teacher(self, frozen: nn.Module | None) -> None:
        self.frozen = frozen
        self.teacher = (self.first_teacher if frozen is None
                        else self.prediction.as_eps(frozen.eval(), self.schedule))

    def new_phase(self, step: int) -> bool:
        if step == 0 or step % self.per_round:
            return False
        self._set_teacher(frozen_copy(self.net))
        self.net.train()
        return True

    def to(self, device: torch.device) -> None:
        self.net.to(device)
        for m in (self.first_teacher, self.frozen):
            if isinstance(m, nn.Module):
                m.to(device)

    def draw(self, step: int, g: torch.Generator) -> dict[str, Tensor]:
        idx = torch.randint(0, self.data.shape[0], (self.batch,), generator=g)  # (B,)
        x0 = self.data[idx]  # (B, …)
        out = {"x0": x0, **{k: v[idx] for k, v in self.cond_data.items()}}
        out["i"] = torch.randint(0, self.N(self.round_of(step)), (self.batch,), generator=g)
        out["eps"] = torch.randn(x0.shape, generator=g, dtype=x0.dtype)  # (B, …)
        self._step = step
        return out

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        cond = {k: v for k, v in batch.items() if k not in ("x0", "i", "eps")}
        return progressive_loss(self.teacher, model, self.schedule, batch["x0"],
                                self.N(self.round_of(self._step)),
                                parameterization=self.prediction, weighting=self.weighting,
                                cond=cond, i=batch["i"], eps=batch["eps"])

    def lr_at(self, step: int) -> float:
        return self.lr * (1 - (step % self.per_round) / self.per_round)

    def end_of_update(self, step: int) -> None:
        if step % self.per_round == 0 and self.on_round is not None:
            r = step // self.per_round - 1
            self.on_round(r, self.N(r), self.net.eval())
            self.net.train()

    def resumed(self, step: int) -> None:
        if step > 0 and step % self.per_round == 0:  # stopped right after a round's last update
            self.end_of_update(step)  # the round's writer skips a round it wrote already

    def state_dict(self) -> dict[str, Tensor]:
        if self.frozen is None:
            return {}
        return {f"teacher.{k}": v for k, v in self.frozen.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        own = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("teacher.")}
        if own:
            frozen = frozen_copy(self.net)
            frozen.load_state_dict(own)
            self._set_teacher(frozen)


def progressive_distill(teacher: Model, student: nn.Module, schedule: Schedule, data: Tensor,
                        steps_N: int, rounds: int = 1, *, parameterization: Prediction = V,
                        callback: Callable[[int, int, nn.Module], None] | None = None,
                        iters: int = 2000, generator: torch.Generator | None = None,
                        log: list[float] | None = None, **kwargs) -> tuple[nn.Module, int]:
    """Rounds N → N/2 → … of Algorithm 2, in memory: the first distils ``teacher`` into
    ``student`` for ``steps_N`` steps; each later one freezes a copy of the student as the
    teacher and keeps training the student itself for half the steps. ``iters`` updates per
    round; ``kwargs``: batch, lr, weight_decay, grad_clip, weighting, cond_data.

    Returns (student in eval mode, its number of steps N_final = steps_N / 2^(rounds−1)).
    ``callback(r, N, student)`` runs after each round; ``log`` receives each update's loss.
    """
    obj = ProgressiveDistillation(teacher, student, schedule, data, steps_N, rounds,
                                  parameterization=parameterization, steps_per_round=iters,
                                  on_round=callback, **kwargs)
    fit(obj, steps=obj.steps, generator=generator or torch.Generator(),
        on_update=None if log is None else lambda _, value: log.append(value))
    return student.eval(), obj.N(rounds - 1)


def progressive_round(teacher: Model, student: nn.Module, schedule: Schedule, data: Tensor,
                      steps_N: int, **kwargs) -> nn.Module:
    """One round of Algorithm 2 (see :func:`progressive_distill`): train ``student`` in place
    to take ``steps_N`` steps where ``teacher``'s DDIM takes 2N; returns it in eval mode."""
    return progressive_distill(teacher, student, schedule, data, steps_N, 1, **kwargs)[0]
