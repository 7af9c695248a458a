"""A multi-process run that loses a process (issue 18): one rank killed with SIGKILL, the other
stops within seconds with one line naming the checkpoint to resume from (no hang, no process
left), and the run resumes from that checkpoint. Launched as tests/test_distributed.py launches
its runs (2 CPU processes under ``accelerate launch``, skipped where that cannot run)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

import difflab
from difflab.runs import checkpoint as ckpt
from difflab.runs.lock import LOCK_FILE
from helpers import run_cli

pytest.importorskip("accelerate", reason="several processes need HF Accelerate")
psutil = pytest.importorskip("psutil", reason="finds the launcher's workers")
from test_distributed import (  # noqa: E402 - the launcher, its environment and the probe
    ARGS,
    checkpoint_step,
    environment,
    home,  # noqa: F401 - a fixture of the probe
    kill_tree,
    launch,
    probe,  # noqa: F401 - skips the module where 2 processes cannot be launched
)

pytestmark = pytest.mark.slow
SRC = str(Path(difflab.__file__).resolve().parents[1])  # the children import this difflab
STOP_WITHIN = 60  # seconds from the kill to the launcher's exit


def worker(launcher: subprocess.Popen, rank: int):
    """The process of ``rank`` under the launcher (None until it has started)."""
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "difflab" in child.cmdline():
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_a_killed_rank_stops_the_others_and_the_run_resumes(home, capsys):  # noqa: F811
    run = home / "lost"
    env = dict(environment(home), PYTHONPATH=SRC)
    args = [*ARGS, "--lr-schedule", "constant"]
    args[args.index("--steps") + 1] = "100000"  # a long run: it is stopped
    launcher = subprocess.Popen([*launch(2), "-m", "difflab", "train", *args, "--out", run.name],
                                cwd=home, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while checkpoint_step(run) is None and launcher.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint in 240 s"
            time.sleep(0.01)
        victim = worker(launcher, 1)
        assert victim is not None and launcher.poll() is None
        survivors = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                     if p.pid != victim.pid]
        victim.kill()
        killed_at = time.monotonic()
        out, _ = launcher.communicate(timeout=STOP_WITHIN)
        assert time.monotonic() - killed_at < STOP_WITHIN
    finally:
        if launcher.poll() is None:
            kill_tree(launcher)
    assert launcher.returncode != 0
    _, alive = psutil.wait_procs(survivors, timeout=10)
    assert not alive, f"processes left running: {alive}"
    saved = checkpoint_step(run)
    lines = [line for line in out.splitlines() if line.startswith("difflab: error: process 0")]
    assert len(lines) == 1, out[-3000:]
    assert "another process of this run stopped" in lines[0]
    assert f"the checkpoint of step {saved} is kept" in lines[0]
    assert not (run / LOCK_FILE).exists()  # rank 0 gave its lock back
    # resumed (on one process) from that checkpoint
    end = str(saved + 10)
    code, _, err = run_cli(capsys, "train", "--resume", run, "--steps", end, "--threads", "1",
                           "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert ckpt.load_checkpoint(run).step == saved + 10 and (run / ckpt.METRICS).is_file()
