"""A run directory under stress (issue 18): one trainer at a time (the lock file, a stale one
taken over), and a disk that fills up or a directory that turns read-only while checkpointing
(the previous checkpoint stays intact and loadable, the error is one line, no temporary file is
left, and one left by a killed writer is removed by the next start)."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from difflab.runs import checkpoint as ckpt
from difflab.runs import lock
from helpers import one_error_line, run_cli

TINY = ["--hidden", "32", "--depth", "1", "--batch", "128", "--n-train", "1000", "--n-eval", "200",
        "--eval-steps", "2", "--threads", "1", "--lr-schedule", "constant", "--no-progress",
        "--steps", "20", "--checkpoint-every", "5"]


@pytest.fixture(scope="module")
def stopped_once(tmp_path_factory):
    """A run stopped at step 10 (checkpoints every 5 steps, 20 in all)."""
    from difflab.cli import main

    run = tmp_path_factory.mktemp("guard") / "run"
    assert main(["train", *TINY, "--stop-after", "10", "--out", str(run)]) == 0
    return run


@pytest.fixture
def stopped(stopped_once, tmp_path):
    """A copy of that run for one test."""
    import shutil

    return Path(shutil.copytree(stopped_once, tmp_path / "run"))


def tensors(run) -> dict[str, torch.Tensor]:
    return ckpt.load_tensors(run / ckpt.CHECKPOINT)[0]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def write_lock(run, **record) -> None:
    (run / lock.LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), **record}))


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- the lock ----------------------------------------------------------------------------------
def test_lock_record_and_release(tmp_path):
    path = lock.acquire(tmp_path / "run")
    record = json.loads(path.read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert lock.holder(tmp_path / "run") is None  # our own lock holds nobody else out
    lock.release(tmp_path / "run")
    assert not path.exists()


@pytest.mark.parametrize("where", ["this host", "another host"])
def test_a_second_trainer_refuses_in_one_line(stopped, capsys, where):
    parent = os.getppid()  # a live process that is not this one
    host = socket.gethostname() if where == "this host" else "elsewhere.example"
    (stopped / lock.LOCK_FILE).write_text(json.dumps(
        {"pid": parent, "host": host, "start": lock.process_start(parent)}))
    before = {p.name: p.read_bytes() for p in stopped.iterdir()}
    for argv in (["train", "--resume", stopped], ["train", *TINY, "--out", stopped, "--overwrite"],
                 ["train", "--resume", stopped, "--processes", "2"],  # refused before launching
                 ["train", *TINY, "--out", stopped, "--overwrite", "--processes", "2"],
                 ["distill", "--resume", stopped], ["train-controlnet", "--resume", stopped]):
        code, _, err = run_cli(capsys, *argv)
        assert one_error_line(code, err), err
        assert f"in use by another trainer (pid {parent} on " in err
        assert ("this host" if where == "this host" else "host elsewhere.example") in err
    assert {p.name: p.read_bytes() for p in stopped.iterdir()} == before  # nothing touched


@pytest.mark.parametrize("stale", ["dead pid", "reused pid", "garbage"])
def test_a_stale_lock_is_taken_over(stopped, capsys, stale):
    if stale == "garbage":
        (stopped / lock.LOCK_FILE).write_text("{not json")
    elif stale == "dead pid":
        write_lock(stopped, pid=dead_pid())
    else:  # a live pid, but a process that started after the lock was written
        if lock.process_start(os.getppid()) is None:
            pytest.skip("no process start times here (/proc)")
        write_lock(stopped, pid=os.getppid(), start="0")
    code, _, err = run_cli(capsys, "train", "--resume", stopped)
    assert code == 0, err
    assert ckpt.load_checkpoint(stopped).step == 20
    assert not (stopped / lock.LOCK_FILE).exists()


def test_a_stale_lock_another_trainer_took_over_first_is_left_to_it(tmp_path, monkeypatch):
    """Two trainers judge the same stale lock at once: the first replaces it with its own lock
    before the second acts on its judgment. The second must then refuse, not remove the first's
    fresh lock and take the run too."""
    run = tmp_path / "run"
    run.mkdir()
    write_lock(run, pid=dead_pid())  # stale
    parent = os.getppid()  # the first trainer: a live process that is not this one
    fresh = json.dumps({"pid": parent, "host": socket.gethostname(),
                        "start": lock.process_start(parent)})
    real, calls = lock.holder, []

    def holder(run_dir):
        calls.append(run_dir)
        if len(calls) == 1:  # judged stale; meanwhile the first trainer takes it over
            assert real(run_dir) is None
            (run / lock.LOCK_FILE).unlink()
            (run / lock.LOCK_FILE).write_text(fresh)
            return None
        return real(run_dir)

    monkeypatch.setattr(lock, "holder", holder)
    with pytest.raises(lock.RunLockedError, match=f"pid {parent} on this host"):
        lock.acquire(run)
    assert (run / lock.LOCK_FILE).read_text() == fresh  # the first trainer's lock, untouched
    assert sorted(p.name for p in run.iterdir()) == [lock.LOCK_FILE]  # nothing left aside


# --- failing writes ----------------------------------------------------------------------------
def failing_fsync(name: str, code: int):
    """``os.fsync`` that fails with ``code`` on the temporary files of ``name`` (Linux)."""
    real = os.fsync

    def fsync(fd):
        if f"/.{name}." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(code, os.strerror(code))
        return real(fd)

    return fsync


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_disk_full_while_checkpointing(stopped, capsys, monkeypatch):
    before = tensors(stopped)
    monkeypatch.setattr(os, "fsync", failing_fsync(ckpt.CHECKPOINT, errno.ENOSPC))
    code, _, err = run_cli(capsys, "train", "--resume", stopped)
    monkeypatch.undo()
    assert one_error_line(code, err), err
    assert "cannot write the checkpoint of step 15" in err and "No space left on device" in err
    assert "its checkpoint of step 10 is intact" in err
    assert same(tensors(stopped), before) and ckpt.load_checkpoint(stopped).step == 10
    assert not [p.name for p in stopped.iterdir() if p.name.endswith(".tmp")]
    assert not (stopped / lock.LOCK_FILE).exists()
    # a writer killed mid-write leaves its temporary file: the next start removes it
    leftovers = [stopped / ".checkpoint.safetensors.x1y2.tmp", stopped / ".difflab.lock.z3.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a file")
    code, _, err = run_cli(capsys, "train", "--resume", stopped)
    assert code == 0, err
    assert not any(p.exists() for p in leftovers) and ckpt.load_checkpoint(stopped).step == 20


def test_read_only_run_directory(stopped, capsys, monkeypatch):
    before = tensors(stopped)
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.samefile(dir, stopped):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    code, _, err = run_cli(capsys, "train", "--resume", stopped)
    assert one_error_line(code, err), err
    assert "Read-only file system" in err
    monkeypatch.undo()
    assert same(tensors(stopped), before)
    # a checkpoint itself into a read-only directory: one line, the old one intact
    state = ckpt.load_checkpoint(stopped)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(ckpt.CheckpointWriteError, match="checkpoint of step 10 is intact"):
        ckpt.save_checkpoint(stopped, state, "diffusion")
    monkeypatch.undo()
    assert same(tensors(stopped), before)
