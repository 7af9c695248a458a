"""Training logs beside ``loss.csv`` (:mod:`difflab.training.losslog`), chosen by the config's
``log``: ``csv`` writes nothing more; ``tensorboard`` also writes TensorBoard event files
(``RUN/tensorboard/``), read with ``tensorboard --logdir RUN/tensorboard``.

Every ``log_every`` updates (at the steps of the rows of ``loss.csv``) the TensorBoard log
holds

- ``train/loss``: the row's value, the mean loss of its block (so it equals ``loss.csv``);
- ``train/lr``: the learning rate of that update;
- ``train/grad_norm``: the mean global gradient norm ‖∇‖₂ of the block's updates, before
  clipping (of this session's updates, after a resume);
- ``train/throughput``: training examples (images, or points of a 2-D run) per second of the
  global batch, over the block's wall-clock time;

and, at the evaluation after training, the evaluation's numeric metrics as ``eval/<name>`` and
its pictures (``samples.png``, ``reverse_process.png``) as images ``eval/samples`` and
``eval/reverse_process``. :func:`difflab.training.fit` calls :meth:`StepLogger.update` on the
main process only, so one process writes in a multi-process run. A resumed run drops the
events of the killed session past its checkpoint (TensorBoard's ``purge_step``), so each step
is logged once.
"""

from __future__ import annotations

import atexit
import json
import math
import time
from pathlib import Path

from torch import Tensor

from ..errors import ConfigError
from .losslog import LossLog

LOG_DIR = "tensorboard"  # inside the run directory
PICTURES = ("samples", "reverse_process")  # the evaluation's pictures, logged where present
TENSORBOARD_PIN = "tensorboard==2.21.0"  # the version difflab's 'tensorboard' extra pins


class StepLogger:
    """What :func:`difflab.training.fit` reports to after every update (on the main process)."""

    def update(self, step: int, loss: float, lr: float, grad_norm: Tensor | None,
               examples: int) -> None:
        """After update ``step`` (1-based) with mean loss ``loss``, learning rate ``lr``, global
        gradient norm ``grad_norm`` before clipping and ``examples`` in its global batch."""

    def evaluation(self, run_dir: Path, step: int) -> None:
        """After the evaluation wrote ``metrics.json`` and its pictures into ``run_dir``."""

    def close(self) -> None:
        pass


class TensorBoardLog(StepLogger):
    """The TensorBoard event files of a run (see the module's docstring); ``log`` is the run's
    :class:`LossLog`, whose rows the loss scalars repeat; ``resume_step``: the step a resumed
    session starts from (events of an earlier session past it are dropped)."""


    def __init__(self, log_dir: str | Path, log: LossLog, resume_step: int | None = None):
        SummaryWriter = tensorboard_writer()
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge, flush_secs=30)
        atexit.register(self.close)  # an interrupted run still flushes what it logged
        self.log = log
        self._norms: Tensor | None = None  # the sum of the block's gradient norms
        self._updates = self._examples = 0
        self._since = time.perf_counter()

    def update(self, step: int, loss: float, lr: float, grad_norm: Tensor | None,
               examples: int) -> None:
        if grad_norm is not None:
            norm = grad_norm.detach().float()
            self._norms = norm if self._norms is None else self._norms + norm
        self._updates += 1
        self._examples += examples
        if not self.log.rows or self.log.rows[-1][0] != step:
            return  # the row of loss.csv closes the block
        now = time.perf_counter()
        w = self.writer
        w.add_scalar("train/loss", self.log.rows[-1][1], step)
        w.add_scalar("train/lr", lr, step)
        if self._norms is not None:
            w.add_scalar("train/grad_norm", self._norms.item() / self._updates, step)
        w.add_scalar("train/throughput", self._examples / max(now - self._since, 1e-9), step)
        self._norms, self._updates, self._examples, self._since = None, 0, 0, now

    def evaluation(self, run_dir: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        run_dir = Path(run_dir)
        metrics = run_dir / "metrics.json"
        if metrics.is_file():
            for name, value in json.loads(metrics.read_text(encoding="utf-8")).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and math.isfinite(value):
                    self.writer.add_scalar(f"eval/{name}", value, step)
        for name in PICTURES:
            path = run_dir / f"{name}.png"
            if path.is_file():
                with Image.open(path) as im:
                    pixels = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
                self.writer.add_image(f"eval/{name}", pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()  # again: a no-op
        atexit.unregister(self.close)


def tensorboard_writer():
    """``torch.utils.tensorboard.SummaryWriter``; a one-line ConfigError where the tensorboard
    package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--log tensorboard needs the tensorboard package: pip install "
                          f"'difflab[tensorboard]' (or {TENSORBOARD_PIN})") from None
    return SummaryWriter


def check_log(name: str) -> None:
    """ConfigError unless the log ``name`` (a key of :data:`LOGGERS`) can be written here."""
    if name not in LOGGERS:
        raise ConfigError(f"unknown log {name!r}; choose one of {', '.join(LOGGERS)}")
    if name == "tensorboard":
        tensorboard_writer()


def open_log(name: str, run_dir: str | Path, log: LossLog,
             resume_step: int | None = None) -> StepLogger | None:
    """The logger of the log ``name`` for the run in ``run_dir`` (None for csv alone)."""
    check_log(name)
    make = LOGGERS[name]
    return None if make is None else make(Path(run_dir) / LOG_DIR, log, resume_step)


# the config's log name -> the logger beside loss.csv (None: loss.csv alone)
LOGGERS = {"csv": None, "tensorboard": TensorBoardLog}
