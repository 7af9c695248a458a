"""Several processes through HF Accelerate (issue 11, point 4), on 2 CPU processes (gloo).

Every rank draws the same GLOBAL batch from the same seeded generator and computes its slice
(``Backend.shard``), so a 2-process run ends within float rounding of the 1-process run with the
same ``--batch``; gradient accumulation splits that batch further; a checkpoint does not depend
on the world size (a run killed with SIGKILL resumes on 2 processes and on 1); rank 0 alone
writes files.

The runs are real ``difflab train`` commands, launched as users are told to launch them:
``python -m accelerate.commands.launch --multi_gpu --num_processes 2 …`` (Accelerate's torchrun
launcher, which also starts CPU processes), each on a free port, with a private ``HF_HOME`` so
that a user's ``accelerate config`` cannot change them. A probe (2 processes that all-reduce,
no difflab) skips the module where this machine cannot launch them. The runs are shared by the
tests (module fixtures): the probe and seven runs, 35 s on an idle 2-core machine (60 s at load
5).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate", reason="several processes need HF Accelerate")
psutil = pytest.importorskip("psutil", reason="the SIGKILL test finds the launcher's workers "
                             "with psutil")
from safetensors import SafetensorError, safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

pytestmark = pytest.mark.slow

# float rounding differences between world sizes grow with the steps at the default lr (max |Δw|
# 1e-7 at 100 steps, 3e-6 at 200, 3e-5 at 300), so the runs are short; a 2-process run still
# trains for a second or more after its first checkpoint, when it is killed
STEPS = 100
CKPT_EVERY = 20
ARGS = ["--steps", str(STEPS), "--batch", "256", "--hidden", "32", "--n-train", "4096",
        "--n-eval", "200", "--eval-steps", "2", "--threads", "1", "--device", "cpu",
        "--checkpoint-every", str(CKPT_EVERY), "--no-progress"]
ATOL = 1e-5  # max |Δw| between runs of different world sizes or accumulation (seen: ~1e-7)
RTOL = 1e-5  # loss.csv values
TIMEOUT = 240  # seconds per launch: a hung rendezvous fails instead of hanging the suite
WEIGHTS = ("denoiser.safetensors", "denoiser.ema.safetensors")
PORT_TAKEN = re.compile(r"address already in use|EADDRINUSE", re.IGNORECASE)
# what the module-wide probe runs in 2 processes: Accelerate, gloo and an all-reduce, no difflab
PROBE = """
import torch
from accelerate import Accelerator

acc = Accelerator(cpu=True)
total = acc.reduce(torch.ones(1), reduction="sum")
assert acc.num_processes == 2 and total.item() == 2.0, (acc.num_processes, total)
acc.end_training()  # as difflab's runs end their group (training.backend.end_process_group)
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int) -> list[str]:
    """``accelerate launch`` of ``processes`` CPU processes on this machine, on a free port."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(free_port())]


def command(processes: int, args: list[str]) -> list[str]:
    """``difflab train ARGS`` in 1 process, or under ``accelerate launch`` in ``processes``."""
    if processes == 1:
        return [sys.executable, "-m", "difflab", "train", *args]
    return [*launch(processes), "-m", "difflab", "train", *args]


def environment(home: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HOME=str(home / "hf-home"), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # pytest itself under a launcher: start clean
    return env


def train_many(home: Path, *jobs: tuple[int, list[str]]) -> list[subprocess.CompletedProcess]:
    """Run the ``difflab train`` commands ``jobs`` = (processes, args) side by side (cwd
    ``home``; each of its runs is single-threaded, and side by side they fill the cores that
    imports, the rendezvous and rank 0's evaluation leave idle) and wait for all; fail with
    the output of the first that fails (the probe fixture has shown that launching works)."""
    def start(processes: int, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(command(processes, args), cwd=home, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=environment(home))

    def finish(job: tuple[int, list[str]], popen: subprocess.Popen,
               attempt: int = 0) -> subprocess.CompletedProcess:
        processes, args = job
        try:
            out, err = popen.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            popen.kill()
            out, err = popen.communicate()
            pytest.fail(f"difflab train ({processes} process(es)) ran past {TIMEOUT} s:\n"
                        f"{(out + err)[-4000:]}")
        done = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
        if done.returncode == 0:
            return done
        output = out + err
        if processes > 1 and attempt == 0 and PORT_TAKEN.search(output):
            # the free port was taken between free_port() and the bind: once more
            return finish(job, start(*job), attempt + 1)
        pytest.fail(f"difflab train ({processes} process(es)) exited {done.returncode}:\n"
                    f"{output[-4000:]}")

    popens = [start(*job) for job in jobs]
    try:
        return [finish(job, popen) for job, popen in zip(jobs, popens, strict=True)]
    finally:
        for popen in popens:  # after a failure: leave nothing running
            if popen.poll() is None:
                popen.kill()
                popen.wait()


def train(home: Path, processes: int, *args: str) -> subprocess.CompletedProcess:
    """One ``difflab train ARGS`` (the tiny run of this module and ``args``) to the end."""
    return train_many(home, (processes, [*ARGS, *args]))[0]


def weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(run / name)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def losses(run: Path) -> tuple[list[int], list[float]]:
    with open(run / "loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]


def assert_close_runs(a: Path, b: Path, atol: float = ATOL, rtol: float = RTOL) -> None:
    """Raw and EMA weights within ``atol``; loss.csv: the same steps, values within ``rtol``."""
    for name in WEIGHTS:
        diff = max_diff(weights(a, name), weights(b, name))
        assert diff < atol, f"{name}: max |Δ| = {diff:.3g} between {a.name} and {b.name}"
    steps_a, loss_a = losses(a)
    steps_b, loss_b = losses(b)
    assert steps_a == steps_b and steps_a[-1] == STEPS
    torch.testing.assert_close(torch.tensor(loss_a, dtype=torch.float64),
                               torch.tensor(loss_b, dtype=torch.float64), rtol=rtol, atol=0)


def checkpoint_step(run: Path) -> int | None:
    """The step of ``run``'s checkpoint, None while there is none (written atomically)."""
    try:
        with safe_open(str(run / "checkpoint.safetensors"), framework="pt") as f:
            return int(f.metadata()["step"])
    except (OSError, SafetensorError, KeyError, ValueError):
        return None


def kill_tree(launcher: subprocess.Popen) -> None:
    """SIGKILL the launcher's process group and every process under it. torchrun starts each
    worker in a session of its own, so killing the launcher's group alone would leave the
    workers training as orphans."""
    try:
        workers = psutil.Process(launcher.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    os.killpg(launcher.pid, signal.SIGKILL)
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.send_signal(signal.SIGKILL)
    launcher.wait(timeout=30)
    psutil.wait_procs(workers, timeout=30)


# --- the runs, shared by the tests ---------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module", autouse=True)
def probe(home) -> None:
    """Skip the module where ``accelerate launch`` cannot start 2 CPU processes that all-reduce
    (no loopback networking, a sandbox that forbids the rendezvous port, …): a reason of the
    machine, not of difflab. After this, every failed launch is a failure."""
    script = home / "probe.py"
    script.write_text(PROBE)
    # up to three tries: the free port may be taken before the launcher binds it, and a worker
    # once failed to start in a fresh-clone run whose next run passed. (A probe that exited with
    # its group live aborted in 5 of 50 launches here; it ends the group, as difflab's
    # processes do at exit)
    for _ in range(3):
        try:
            proc = subprocess.run([*launch(2), str(script)], cwd=home, text=True,
                                  capture_output=True, env=environment(home), timeout=120)
        except subprocess.TimeoutExpired:
            pytest.skip("accelerate launch of 2 CPU processes did not finish in 120 s here")
        if proc.returncode == 0:
            return
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines()
             if line.strip(" =-")] or ["(no output)"]
    errors = [line for line in lines if re.match(r"[\w.]*(Error|Exception)\b", line)]
    exits = [line for line in lines if "exitcode" in line]
    pytest.skip(f"accelerate launch cannot run 2 CPU processes here (exit {proc.returncode}): "
                f"{(errors[:1] or exits[-1:] or lines[-1:])[0][:200]}")


@pytest.fixture(scope="module")
def ones(home) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """1-process runs, side by side: ``one``, the reference (the global batch in one piece),
    and ``accum-1`` (the same in 2 micro-batches, --grad-accum 2)."""
    names = {"one": [], "accum-1": ["--grad-accum", "2"]}
    done = train_many(home, *((1, [*ARGS, *args, "--out", name])
                              for name, args in names.items()))
    return {name: (home / name, proc) for name, proc in zip(names, done, strict=True)}


@pytest.fixture(scope="module")
def one(ones) -> tuple[Path, subprocess.CompletedProcess]:
    return ones["one"]


@pytest.fixture(scope="module")
def two(home) -> tuple[Path, subprocess.CompletedProcess]:
    """2 processes (gloo), the same global batch."""
    return home / "two", train(home, 2, "--out", "two")


@pytest.fixture(scope="module")
def killed(home) -> Path:
    """A 2-process run SIGKILLed (launcher and workers) after its first checkpoint."""
    run = home / "killed"
    log = open(home / "killed.log", "w")  # noqa: SIM115 - closed below
    launcher = subprocess.Popen(command(2, [*ARGS, "--out", "killed"]), cwd=home,
                                env=environment(home), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    try:
        while (checkpoint_step(run) or 0) < CKPT_EVERY:
            if launcher.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.005)
    finally:
        if launcher.poll() is None:
            kill_tree(launcher)
        log.close()
    output = (home / "killed.log").read_text()
    step = checkpoint_step(run)
    if step is None:
        pytest.fail(f"no checkpoint before the kill (exit {launcher.returncode}):\n"
                    f"{output[-4000:]}")
    assert launcher.returncode == -signal.SIGKILL, (
        f"the run was not killed mid-run (exit {launcher.returncode}):\n{output[-4000:]}")
    assert CKPT_EVERY <= step < STEPS, step
    assert not (run / "metrics.json").exists()
    return run


@pytest.fixture(scope="module")
def resumed(home, killed) -> dict[int, Path]:
    """Copies of the killed run resumed to the end on 2 processes and on 1, side by side."""
    runs = {n: home / f"resumed-{n}" for n in (2, 1)}
    for run in runs.values():
        shutil.copytree(killed, run)
    train_many(home, *((n, ["--resume", run.name, "--threads", "1", "--device", "cpu",
                            "--no-progress"]) for n, run in runs.items()))
    return runs


# --- a. 2 processes = 1 process with the same global batch --------------------------------------


def test_two_processes_match_one(one, two):
    assert_close_runs(one[0], two[0])


def test_two_processes_metrics_and_checkpoint_match_one(one, two):
    """The same config.json (but for --out), the same figures in metrics.json (within
    rounding) and the same checkpoint layout: nothing records the world size."""
    (a, _), (b, _) = one, two
    config_a, config_b = (json.loads((r / "config.json").read_text()) for r in (a, b))
    for config in (config_a, config_b):
        config["config"]["run"].pop("out")
    assert config_a == config_b
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert ma.keys() == mb.keys() and ma["train_steps"] == mb["train_steps"] == STEPS
    assert mb["loss"] == pytest.approx(ma["loss"], rel=1e-5)
    with safe_open(str(a / "checkpoint.safetensors"), "pt") as fa, \
            safe_open(str(b / "checkpoint.safetensors"), "pt") as fb:
        assert set(fa.keys()) == set(fb.keys())
        meta_a, meta_b = fa.metadata(), fb.metadata()
        assert {k: v for k, v in meta_a.items() if k != "elapsed"} == \
            {k: v for k, v in meta_b.items() if k != "elapsed"}


# --- b. gradient accumulation -------------------------------------------------------------------


def test_grad_accum_matches_one_batch(ones):
    assert_close_runs(ones["one"][0], ones["accum-1"][0])


def test_two_processes_with_grad_accum_match_one(home, one):
    run = home / "accum-2"
    train(home, 2, "--grad-accum", "2", "--out", run.name)
    assert_close_runs(one[0], run)


# --- c. SIGKILL, then resume on 2 processes and on 1 --------------------------------------------


def test_killed_run_resumes_on_two_processes(resumed, one, two):
    run = resumed[2]
    # the same world size: bit-identical to the uninterrupted 2-process run
    for name in WEIGHTS:
        assert max_diff(weights(run, name), weights(two[0], name)) == 0.0, name
    assert losses(run) == losses(two[0])
    assert_close_runs(one[0], run)


def test_killed_run_resumes_on_one_process(resumed, one):
    """The checkpoint does not depend on the world size: 2 processes, then 1."""
    assert_close_runs(one[0], resumed[1])


# --- d. rank 0 alone writes ---------------------------------------------------------------------


def test_only_rank_zero_writes(one, two):
    (a, out_a), (b, out_b) = one, two
    files_a, files_b = sorted(os.listdir(a)), sorted(os.listdir(b))
    assert files_b == files_a
    stray = [n for n in files_b if n.startswith(".") or n.endswith(".tmp")]
    assert not stray, f"stray files in the 2-process run directory: {stray}"
    # rank 0 alone reports: one summary line, and the run directory as the last line
    assert out_b.stdout.count("trained ") == out_a.stdout.count("trained ") == 1
    assert out_b.stdout.strip().splitlines()[-1] == "two"


# --- e. an autoencoder: VQ assignments gathered over the ranks, the GAN term under DDP ----------
AE_ARGS = ["--method", "autoencoder", "--dataset", "digits", "--image-size", "16",
           "--ae-type", "vq", "--ae-factor", "2", "--ae-channels", "8", "--codebook-size", "32",
           "--disc-weight", "0.5", "--disc-start", "5", "--steps", "20", "--batch", "32",
           "--warmup", "2", "--threads", "1", "--device", "cpu", "--checkpoint-every", "10",
           "--no-progress"]


# two runs' Backends in one launched process share the group, which ends at exit
END_AT_EXIT = """
import atexit

import torch
import torch.distributed as dist
from difflab.training.backend import Backend


@atexit.register  # registered first, so it runs after difflab's handler
def report():  # one file per rank: two ranks printing to one pipe can interleave their lines
    with open(f"live-at-exit-{rank}.txt", "w") as f:
        f.write(str(dist.is_initialized()))


for k in range(2):
    backend = Backend.create("cpu")
    rank = backend.rank
    assert backend.world_size == 2 and dist.is_initialized()
    assert backend.mean(torch.tensor([float(rank + k)])).item() == 0.5 + k
"""


def test_process_group_ends_at_exit(home):
    """The group stays usable for a second run in the same process, and every rank destroys it
    at exit (end_process_group): a rank that exited with gloo live could abort ("terminate
    called without an active exception")."""
    script = home / "end_at_exit.py"
    script.write_text(END_AT_EXIT)
    answers = [home / f"live-at-exit-{r}.txt" for r in range(2)]
    for f in answers:
        f.unlink(missing_ok=True)
    proc = subprocess.run([*launch(2), str(script)], cwd=home, text=True, capture_output=True,
                          env=environment(home), timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert [f.read_text() for f in answers] == ["False", "False"]


def test_an_autoencoder_on_two_processes_matches_one(home):
    """The discriminator's adaptive weight (gradients inside the loss, averaged over the ranks)
    and the codebook (its usage gathered from every rank) stay in step across 2 processes: the
    losses and the reconstructions match one process within rounding. (The weights are not
    compared: a bias just before a one-channel GroupNorm has a zero gradient up to rounding,
    which AdamW turns into steps of ±lr that differ between runs and change nothing.)"""
    from difflab.runs.load import load_network, read_run_config

    train_many(home, (1, [*AE_ARGS, "--out", "ae-one"]), (2, [*AE_ARGS, "--out", "ae-two"]))
    runs = [home / "ae-one", home / "ae-two"]
    (steps_a, loss_a), (steps_b, loss_b) = losses(runs[0]), losses(runs[1])
    assert steps_a == steps_b
    torch.testing.assert_close(torch.tensor(loss_a), torch.tensor(loss_b), rtol=1e-4, atol=0)
    x = torch.linspace(-1, 1, 16 * 16 * 8).view(8, 1, 16, 16).sin()
    out = []
    for run in runs:
        ae = load_network(run, read_run_config(run), "model", "autoencoder")
        with torch.no_grad():
            out.append(ae.decode(ae.latent(ae.encode(x))))
    assert (out[0] - out[1]).abs().max().item() < 1e-3
