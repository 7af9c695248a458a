"""What :mod:`difflab.runs.checkpoint` needs to survive bad files and failing disks: the framing
check a safetensors file passes before its parser sees it, the one-line error of a write that
failed (disk full, read-only directory), and the step of a checkpoint read from its header
alone (to say which checkpoint a failed write left intact)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CheckpointError

MAX_HEADER = 100_000_000  # bytes of a safetensors header (the safetensors library's own limit)


class CheckpointWriteError(CheckpointError, OSError):
    """A file of a run directory that could not be written (disk full, read-only directory):
    one line, which for a checkpoint says which checkpoint is still there, intact. Also an
    ``OSError``; ``reason`` is the errno of the failure (e.g. ENOSPC)."""

    reason: int | None = None


def write_error(message: str, err: OSError) -> CheckpointWriteError:
    """A CheckpointWriteError of ``message`` caused by ``err``."""
    error = CheckpointWriteError(message)
    error.reason = err.errno
    return error


def header_problem(data: bytes) -> str | None:
    """What is wrong with the framing of a safetensors file's bytes (None: nothing): 8 bytes
    of header length, then that many bytes of JSON, within the file."""
    if len(data) < 8:
        return f"{len(data)} bytes, shorter than a safetensors header"
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER:
        return f"its header claims {n} bytes, more than the {MAX_HEADER} allowed"
    if 8 + n > len(data):
        return f"truncated: its header claims {n} bytes, the file has {len(data) - 8} after it"
    return None


def step_of(path: str | os.PathLike) -> int | None:
    """The ``step`` in the metadata of the checkpoint file ``path``, from its header alone;
    None if there is no such file or it is unreadable."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > MAX_HEADER:
                return None
            return int(json.loads(f.read(n))["__metadata__"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def kept_checkpoint(path: Path) -> str:
    """What a failed write left: the step of the (intact) checkpoint file ``path``."""
    step = step_of(path)
    if step is None:
        return "there is no earlier checkpoint"
    return (f"its checkpoint of step {step} is intact (free some space or make the directory "
            "writable, then resume)")
