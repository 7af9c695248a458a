"""The training loss history: one row per ``every`` steps, kept in the checkpoint.

Row k is (step = k·every, the mean of the losses of steps k·every − every + 1 … k·every). The
rows and the sums of the block in progress are plain float64 tensors saved inside
``checkpoint.safetensors`` with the weights, so a resumed run continues the log exactly where
its checkpoint left it — no row is lost or written twice, whatever moment the run was killed at.
``loss.csv`` is an export of the rows (:meth:`LossLog.csv`), rewritten atomically with every
checkpoint by :mod:`difflab.runs`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor


class LossLog:
    """Mean training loss over blocks of ``every`` steps."""

    def __init__(self, every: int):
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.every = every
        self.rows: list[tuple[int, float]] = []  # (step, mean loss of its block)
        self._sum, self._count = 0.0, 0  # the block in progress

    def record(self, step: int, loss: float) -> None:
        """Add the loss of update number ``step`` (1-based); closes a block at multiples of
        ``every``. A last, partial block is never written (so a longer resumed run agrees)."""
        self._sum += loss
        self._count += 1
        if step % self.every == 0:
            self.rows.append((step, self._sum / self._count))
            self._sum, self._count = 0.0, 0

    def skip(self, step: int) -> None:
        """Update number ``step`` was skipped (a non-finite loss): nothing is added, but its
        block still ends at a multiple of ``every`` (a block with no loss at all: no row)."""
        if step % self.every == 0:
            if self._count:
                self.rows.append((step, self._sum / self._count))
            self._sum, self._count = 0.0, 0

    def state_dict(self) -> dict[str, Tensor]:
        rows = torch.tensor(self.rows, dtype=torch.float64).reshape(-1, 2)  # (N, 2)
        return {"rows": rows, "pending": torch.tensor([self._sum, self._count],
                                                      dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore from :meth:`state_dict`; an empty dict (a run saved before the log existed)
        starts an empty log."""
        if not state:
            self.rows, self._sum, self._count = [], 0.0, 0
            return
        self.rows = [(int(s), float(v)) for s, v in state["rows"].tolist()]
        total, count = state["pending"].tolist()
        self._sum, self._count = float(total), int(count)

    def csv(self) -> str:
        """``step,loss`` and one line per row (losses with full float precision)."""
        return "step,loss\n" + "".join(f"{s},{v!r}\n" for s, v in self.rows)


def read_loss_csv(path: str | os.PathLike) -> list[tuple[int, float]]:
    """The rows of a ``loss.csv`` written from :meth:`LossLog.csv`."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != "step,loss":
        raise ValueError(f"{path} is not a difflab loss log (no 'step,loss' header)")
    return [(int(s), float(v)) for s, v in (line.split(",") for line in lines[1:])]
