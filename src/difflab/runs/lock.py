"""One trainer per run directory: the lock file ``difflab.lock``.

A trainer takes the lock before it writes anything into a run directory and gives it back when
it ends (normally, on an error, or on SIGINT/SIGTERM). The file holds JSON
``{"pid": …, "host": …, "start": …}``: the owner's process id, its host name and, where the
system tells (Linux), the process's start time, so that a pid reused by another process later is
not taken for the owner. A second trainer finds the file and refuses in one line
(:class:`RunLockedError`) — unless the owner is gone: a lock written on this host by a process
that no longer runs (or whose pid now belongs to a process started later) is stale, e.g. left by
a trainer killed with SIGKILL, and is taken over (:func:`remove_stale`: only the lock that was
judged stale is removed, never a fresh one another trainer wrote in the meantime). A lock from
another host cannot be checked from here; the message says which host and pid hold it, and to
delete the file if that trainer is known to be gone.

The file appears atomically with its content (written to a temporary file, then hard-linked to
its name, which fails if the name exists), so a reader never sees a half-written lock; a lock
that cannot be read as such JSON (written by something else, or cut short by a full disk) is
stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from pathlib import Path

from ..errors import DifflabError

LOCK_FILE = "difflab.lock"


class RunLockedError(DifflabError):
    """Another live trainer holds the run directory's lock (the message is one line)."""


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux /proc), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, …
    return fields[19] if len(fields) > 19 else None  # field 22 of stat: starttime


def alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` runs on this host (and, given ``start``, is the same process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    if start is not None:
        now = process_start(pid)
        return now is None or now == start
    return True


def me() -> dict:
    """This process's lock record."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": process_start(pid)}


def read_lock(run_dir: str | os.PathLike) -> dict | None:
    """The lock record in ``run_dir``; None if there is none; {} if it is unreadable."""
    path = Path(run_dir) / LOCK_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not (isinstance(raw, dict) and isinstance(raw.get("pid"), int)
            and isinstance(raw.get("host"), str)):
        return {}
    return raw


def holder(run_dir: str | os.PathLike) -> dict | None:
    """The record of a LIVE owner of ``run_dir``'s lock other than this process, else None (no
    lock, a stale one, or this process's own)."""
    record = read_lock(run_dir)
    if not record:
        return None
    if record["host"] != socket.gethostname():
        return record  # cannot be checked from here: assume it runs
    if record["pid"] == os.getpid():
        return None
    start = record.get("start")
    return record if alive(record["pid"], start if isinstance(start, str) else None) else None


def refusal(run_dir: str | os.PathLike, record: dict) -> RunLockedError:
    path = Path(run_dir) / LOCK_FILE
    where = ("this host" if record["host"] == socket.gethostname()
             else f"host {record['host']}")
    return RunLockedError(f"run directory {run_dir} is in use by another trainer (pid "
                          f"{record['pid']} on {where}, lock file {path}); wait for it to end "
                          "or stop it (delete the lock file only if that trainer is gone)")


def check_unlocked(run_dir: str | os.PathLike) -> None:
    """RunLockedError if a live trainer holds ``run_dir`` (nothing is written)."""
    record = holder(run_dir)
    if record is not None:
        raise refusal(run_dir, record)


class RunDirError(DifflabError):
    """A run directory that cannot be written (read-only, no space; one line)."""


def create(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data``, atomically: False if it exists already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)  # atomic, and fails where the name exists
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create, then write
            pass
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def remove_stale(path: Path, seen: bytes) -> None:
    """Remove the lock file ``path`` if it still holds ``seen``, the stale lock that was judged.
    Two trainers may judge the same stale lock at once; the first replaces it with its own, and
    the second must not remove that: the file is moved aside atomically first, and put back if it
    is not the one judged."""
    aside = path.with_name(f".{path.name}.{os.getpid()}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        if aside.read_bytes() != seen:  # another trainer's fresh lock: give it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
    finally:
        with contextlib.suppress(OSError):
            aside.unlink()


def acquire(run_dir: str | os.PathLike) -> Path:
    """Take the lock of ``run_dir`` (created if missing): RunLockedError if a live trainer
    holds it; a stale lock is replaced (:func:`remove_stale`). Returns the lock file's path."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    data = json.dumps(me()).encode()
    for _ in range(3):  # a stale lock removed, then retried (another trainer may win the race)
        try:
            if create(path, data):
                return path
            seen = path.read_bytes()
        except FileNotFoundError:
            continue  # released in between: try again
        except OSError as err:
            raise RunDirError(f"cannot write in run directory {run_dir}: "
                              f"{err.strerror or err}") from None
        record = holder(run_dir)
        if record is not None:
            raise refusal(run_dir, record)
        remove_stale(path, seen)  # stale (or our own from before): take it over
    raise RunLockedError(f"cannot take the lock {path}: other trainers keep taking it")


def release(run_dir: str | os.PathLike) -> None:
    """Give back this process's lock of ``run_dir`` (nothing if another process holds it)."""
    record = read_lock(run_dir)
    if record and record.get("pid") == os.getpid() and record["host"] == socket.gethostname():
        with contextlib.suppress(OSError):
            (Path(run_dir) / LOCK_FILE).unlink()


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, enabled: bool = True):
    """Hold ``run_dir``'s lock inside the block (``enabled`` False: do nothing, e.g. on the
    processes of a multi-process run other than the first, which writes). A directory that the
    lock created and that is still empty at the end is removed."""
    if not enabled:
        yield
        return
    created = not Path(run_dir).exists()
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)
        if created:  # made for the lock, and nothing was written (an early refusal): remove it
            with contextlib.suppress(OSError):
                Path(run_dir).rmdir()
