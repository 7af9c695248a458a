"""Where and how the one training loop runs: the device, the precision, ``torch.compile`` and the
processes (HF Accelerate, torch.distributed underneath).

- Device: ``"auto"`` is CUDA when present, else CPU (MPS only when asked: several ops the U-Net
  uses are slow or missing there). Every random number of training is drawn on the CPU from the
  run's ``torch.Generator`` and then moved, so a run's draws are the same on every device and a
  CPU run stays bit-identical to the code before devices existed.
- Precision: ``fp32``; ``bf16`` (autocast, no scaler); ``fp16`` (autocast with a gradient scaler,
  CUDA only). The weights, the optimiser and the EMA stay in float32.
- Processes: a run started by ``accelerate launch`` (or ``difflab train --processes N``, which
  calls it) has ``WORLD_SIZE`` > 1; the network is wrapped in DistributedDataParallel by
  Accelerate, every rank draws the same global batch from the same generator and keeps its own
  slice of it (:meth:`Backend.shard`), so ranks see disjoint examples and noise, the gradient
  after the all-reduce is the gradient of the global batch, and a checkpoint does not depend on
  the world size. Rank 0 alone writes files. Each process ends the group at exit
  (:func:`end_process_group`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import DEVICES, PRECISIONS
from ..errors import DifflabError


class BackendError(DifflabError, ValueError):
    """A device or precision that this machine cannot give (the message is one line)."""


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device of ``name`` (one of :data:`DEVICES`, or e.g. "cuda:1")."""
    base = name.split(":")[0]
    if base not in DEVICES:
        raise BackendError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if base == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise BackendError("--device cuda: no CUDA device is available here; use --device cpu "
                           "(or auto)")
    if base == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise BackendError("--device mps: no Apple GPU (MPS) is available here; use --device cpu")
    return torch.device(name)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision (None for fp32)."""
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose one of "
                           f"{', '.join(PRECISIONS)}")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def check_precision(precision: str, device: torch.device) -> None:
    """BackendError for a precision the device cannot train in."""
    autocast_dtype(precision)
    if precision == "fp16" and device.type != "cuda":
        raise BackendError(f"--precision fp16 needs a CUDA device (a gradient scaler), not "
                           f"{device.type}; use --precision bf16 or fp32")


@contextmanager
def torch_threads(n: int):
    """Use ``n`` intra-op threads inside the block (0: leave torch's setting, all cores)."""
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def world() -> tuple[int, int]:
    """(rank, world size) of this process, from the launcher's environment (1 process: (0, 1))."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class Backend:
    """The device, precision and processes of one training run; see the module docstring.

    ``accelerator``: the HF Accelerate ``Accelerator`` when several processes run, else None
    (one process uses plain torch, which keeps CPU runs bit-identical).
    """

    device: torch.device
    precision: str = "fp32"
    compile: bool = False
    rank: int = 0
    world_size: int = 1
    accelerator: object | None = None
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def create(cls, device: str = "auto", precision: str = "fp32",
               compile: bool = False) -> Backend:
        rank, size = world()
        dev = resolve_device(device)
        check_precision(precision, dev)
        accelerator = None
        if size > 1:
            accelerator = _accelerator(dev)
            dev = accelerator.device
            rank, size = accelerator.process_index, accelerator.num_processes
        scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
        return cls(dev, precision, compile, rank, size, accelerator, scaler)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare(self, model: nn.Module) -> nn.Module:
        """The module the loop calls: on the device, compiled if asked, wrapped in DDP when
        several processes run. Parameters are shared with ``model``."""
        model.to(self.device)
        module = model
        if self.compile:
            module = torch.compile(module)
        if self.accelerator is not None:
            module = self.accelerator.prepare_model(module, device_placement=False)
        return module

    def autocast(self):
        dtype = autocast_dtype(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def no_sync(self, module: nn.Module, skip: bool):
        """Skip DDP's all-reduce for a micro-batch that is not the last of an update."""
        if skip and self.accelerator is not None and hasattr(module, "no_sync"):
            return module.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def shard(self, batch: int, micro: int = 0, micro_steps: int = 1) -> slice:
        """The rows of a global batch of ``batch`` that this rank computes in micro-step
        ``micro`` of ``micro_steps``: the global batch is cut into world_size × micro_steps
        equal parts, rank-major within each micro-step."""
        parts = self.world_size * micro_steps
        if batch % parts:
            raise BackendError(f"the batch ({batch}) must divide into {self.world_size} "
                               f"process(es) × {micro_steps} accumulation step(s)")
        size = batch // parts
        k = micro * self.world_size + self.rank
        return slice(k * size, (k + 1) * size)

    def mean(self, value: Tensor) -> Tensor:
        """The mean of a tensor over the processes (itself with one process)."""
        if self.accelerator is None:
            return value
        return self.accelerator.reduce(value.detach().clone(), reduction="mean")

    def gather(self, value: Tensor) -> Tensor:
        """Rank-ordered concatenation along dim 0 over the processes (itself with one)."""
        if self.accelerator is None:
            return value
        return self.accelerator.gather(value.contiguous())

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


# seconds a collective waits for the other processes before it fails (torch's default: 30 min
# for gloo); a process that died closes its connections at once, this bounds a hung one. Above
# the longest checkpoint write (rank 0 writes while the others wait). DIFFLAB_DIST_TIMEOUT sets it.
DIST_TIMEOUT = 600.0


def dist_timeout() -> float:
    """The collectives' timeout in seconds: $DIFFLAB_DIST_TIMEOUT, else :data:`DIST_TIMEOUT`."""
    text = os.environ.get("DIFFLAB_DIST_TIMEOUT", "")
    try:
        value = float(text) if text else DIST_TIMEOUT
    except ValueError:
        raise BackendError(f"DIFFLAB_DIST_TIMEOUT must be a number of seconds, got {text!r}"
                           ) from None
    if not value > 0:
        raise BackendError(f"DIFFLAB_DIST_TIMEOUT must be positive, got {text!r}")
    return value


def _accelerator(device: torch.device):
    try:
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs
    except ImportError:  # pragma: no cover - accelerate is a dependency
        raise BackendError("several processes need HF Accelerate: pip install accelerate") from None
    from datetime import timedelta

    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=dist_timeout()))
    accelerator = Accelerator(cpu=device.type == "cpu", kwargs_handlers=[timeout])
    atexit.unregister(end_process_group)  # registered once, however many runs this process makes
    atexit.register(end_process_group)
    return accelerator


def end_process_group() -> None:
    """Destroy torch.distributed's default process group if it is live (what Accelerate's
    ``end_training`` does); run at interpreter exit by every process whose :class:`Backend`
    started one. Every rank has then left its last collective (rank 0 may still be evaluating
    when the others exit; the group stays usable until the process ends, so one process may
    train several runs). Why: a rank that exits with its gloo group live can abort in the
    interpreter's teardown ("terminate called without an active exception", SIGABRT). On a
    2-core CPU, 2-process launches of a Backend that all-reduces once and exits aborted in 6 of
    80 without this, 0 of 81 with it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
