"""Faults during training that :func:`difflab.training.loop.fit` survives or reports in one line:
a non-finite loss or gradient, and a stop signal (SIGINT, SIGTERM).

- **Non-finite updates.** Before each optimiser step the loop reads the update's loss (its
  mean over the processes) and the global gradient norm — the norm that gradient clipping
  computes anyway, else one extra ``foreach`` norm — together with the stop flag below, as
  ONE small tensor: one device sync per update, the one the loss log always needed. A NaN or
  ±inf in either stops the run with :class:`NonFiniteError`, which names the update and the
  last checkpoint (left as it was: the bad update is never applied, nor saved). With
  ``skip_nonfinite = K`` > 0 such an update is skipped instead — no optimiser step, no EMA
  update, no row in the loss log: the weights and the optimiser's state stay as they were,
  the update's slot and its random draws are used up — and only the (K + 1)-th bad update in a
  row stops the run. Every process sees the same reduced numbers, so all of them skip or stop
  at the same update.
- **Stop signals.** :class:`StopSignals` turns the first SIGINT or SIGTERM into a flag; the
  loop finishes the update in progress, writes a checkpoint of it (every process agrees on the
  update through the same reduced tensor) and raises :class:`TrainingInterrupted`, which the
  command line turns into exit code 128 + the signal (130, 143). A second signal acts at once
  as it would without difflab. Since the checkpoint is the state between two updates, a run
  continued with ``--resume`` is bit-identical (on the CPU) to one never stopped.
- **A lost process.** When one process of a multi-process run dies (killed, out of memory),
  the collective the others wait in fails (gloo: the connection closes at once; NCCL: at the
  process group's timeout, :data:`~difflab.training.backend.DIST_TIMEOUT`) and
  :func:`lost_processes` turns that into :class:`ProcessLostError`, one line naming the update
  and the checkpoint to resume from; the launcher (torchrun) stops the rest.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, DifflabError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class NonFiniteError(DifflabError):
    """An update whose loss or gradient is NaN or infinite (the message is one line and names
    the update and the checkpoint that is kept)."""

    HINT = ("resume with a lower --lr, or add --skip-nonfinite K to skip up to K such updates "
            "in a row")

    def __init__(self, step: int, what: str, value: float, saved: int | None, in_a_row: int = 1,
                 hint: str | None = None):
        self.step, self.what, self.value, self.saved = step, what, value, saved
        self.in_a_row = in_a_row
        kept = (f"the checkpoint of step {saved} is kept" if saved is not None else
                "no checkpoint was written yet")
        row = f" ({in_a_row} such updates in a row)" if in_a_row > 1 else ""
        super().__init__(
            f"step {step}: the {what} is {value}{row}; training stopped without applying "
            f"it and {kept}; {hint or self.HINT}")

    def with_hint(self, hint: str) -> NonFiniteError:
        """The same error with another way out (for commands whose flags differ)."""
        return NonFiniteError(self.step, self.what, self.value, self.saved, self.in_a_row, hint)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by a signal after writing a checkpoint of update ``step``.
    ``exit_code``: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, step: int, saved: bool):
        self.signum, self.step, self.saved = signum, step, saved
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        what = f"a checkpoint of step {step} was written" if saved else "nothing was written"
        super().__init__(f"{name} at step {step}: {what}")


class ProcessLostError(DifflabError):
    """Another process of a multi-process run stopped (one line: the update, the checkpoint)."""


PEER_FAILURES = ("connection closed by peer", "connection reset by peer", "broken pipe",
                 "timed out", "timeout", "socket closed")


def peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another process is gone."""
    dist_error = getattr(torch.distributed, "DistError", ())
    if dist_error and isinstance(err, dist_error):
        return True
    return isinstance(err, RuntimeError) and any(p in str(err).lower() for p in PEER_FAILURES)


@contextmanager
def lost_processes(rank: int, world_size: int, where: Callable[[], tuple[int, int | None]]):
    """Inside the block (the updates of a run of ``world_size`` > 1 processes), a collective
    that fails because another process is gone becomes :class:`ProcessLostError`; ``where()``
    gives (updates done, the last checkpoint's step) for its message."""
    try:
        yield
    except RuntimeError as err:
        if world_size <= 1 or not peer_failure(err):
            raise
        step, saved = where()
        kept = (f"the checkpoint of step {saved} is kept: resume from it with --resume"
                if saved is not None else "no checkpoint was written yet")
        reason = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(err).split()))[:100]
        raise ProcessLostError(f"process {rank} of {world_size}: another process of this run "
                               f"stopped during update {step + 1} ({reason}); {kept}") from None


@contextmanager
def unfit_checkpoint():
    """Inside the block (a checkpoint's state restored into the run's modules, optimiser,
    generators and log), an error of the restoring is a one-line ``CheckpointError``: a
    checkpoint of another network (other shapes, other modules) or one damaged in a way that
    its file format does not show."""
    try:
        yield
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as err:
        reason = " ".join(str(err).split())[:160]
        raise CheckpointError(f"the checkpoint does not fit this run's config ({reason})"
                              ) from None


def grad_norm(params: Iterable[nn.Parameter], clip: float) -> Tensor:
    """The global 2-norm of the gradients (a 0-dim tensor, no sync); with ``clip`` > 0 they are
    clipped to it on the way (the norm is the one before clipping)."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())  # (a module without gradients: on the CPU, it has no device)
    if clip > 0:
        return nn.utils.clip_grad_norm_(params, clip)
    return nn.utils.get_total_norm([p.grad for p in params])


class StopSignals:
    """Inside the block, the first SIGINT or SIGTERM sets :attr:`signum` instead of stopping the
    process, and puts the handler that was there back (so a second one acts at once). Off the
    main thread, where Python cannot handle signals, it does nothing; a signal the process was
    started with ignored (SIG_IGN: a shell's background job without job control, ``nohup``) stays
    ignored, as Python itself leaves it."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if not self.signum:
            self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        self._old = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._old[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


class UpdateGuard:
    """The per-update check of :func:`~difflab.training.loop.fit` (see the module docstring):
    ``skip`` = K, the non-finite updates skipped in a row before the run stops."""

    def __init__(self, skip: int = 0, signals: StopSignals | None = None):
        if skip < 0:
            raise ValueError(f"skip_nonfinite must be >= 0, got {skip}")
        self.skip, self.signals = skip, signals
        self.in_a_row = 0  # non-finite updates skipped in a row
        self.skipped = 0  # in all, this session

    def read(self, loss: Tensor, norm: Tensor, backend) -> tuple[float, float, bool]:
        """(the loss's mean over the processes, the gradient norm, whether any process got a
        stop signal): one collective and one sync."""
        flag = float(self.signals.signum) if self.signals is not None else 0.0
        # (torch.full: a fill on the device, where torch.tensor would be a blocking copy)
        local = torch.stack([loss.detach().float().reshape(()),
                             norm.detach().float().reshape(()).to(loss.device),
                             torch.full((), flag, device=loss.device)])
        value, gnorm, stop = backend.mean(local).tolist()
        return value, gnorm, stop > 0

    def bad(self, step: int, value: float, gnorm: float, saved: int | None) -> bool:
        """After :meth:`read` for update ``step`` (1-based): False if the update is finite (it
        goes ahead); True if it is to be skipped; NonFiniteError if the run must stop."""
        if math.isfinite(value) and math.isfinite(gnorm):
            self.in_a_row = 0
            return False
        what, number = ("loss", value) if not math.isfinite(value) else ("gradient norm", gnorm)
        self.in_a_row += 1
        if self.in_a_row > self.skip:
            raise NonFiniteError(step, what, number, saved, self.in_a_row)
        self.skipped += 1
        return True

    def stop_signal(self) -> int:
        """The signal to report for a stop that the reduced flag announced (this process's own,
        else SIGTERM: another process got it, e.g. from its launcher)."""
        own = self.signals.signum if self.signals is not None else 0
        return own or int(signal.SIGTERM)

    def report(self) -> None:
        """One warning for the updates skipped this session, if any."""
        if self.skipped:
            warnings.warn(f"skipped {self.skipped} update(s) whose loss or gradient was not "
                          f"finite (--skip-nonfinite {self.skip}: at most {self.skip} in a row)",
                          stacklevel=3)
