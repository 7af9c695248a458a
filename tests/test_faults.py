"""Faults during training (issue 18): non-finite losses and gradients stop the run in one line or
are skipped (``skip_nonfinite``), and SIGINT/SIGTERM end the update in progress with a checkpoint
from which the run resumes bit for bit. The loop is driven here by a tiny objective whose loss
or gradient turns NaN/inf at chosen updates; the command line is tested on a real run."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import difflab
from difflab.runs import checkpoint as ckpt
from difflab.training.faults import NonFiniteError, TrainingInterrupted
from difflab.training.loop import Objective, fit
from difflab.training.losslog import LossLog
from helpers import one_error_line, run_cli


class Toy(Objective):
    """Fit a linear map to the identity; at the updates in ``nan_loss`` the loss is NaN, at
    those in ``inf_grad`` the loss is finite but its gradient is infinite (d√u/du at u = 0);
    at ``signal_at`` the process sends itself ``signum`` during the update."""

    lr = 1e-2

    def __init__(self, nan_loss=(), inf_grad=(), signal_at=None, signum=signal.SIGINT,
                 grad_clip=0.0):
        torch.manual_seed(0)
        self.net = nn.Linear(2, 2)
        self.nan_loss, self.inf_grad = set(nan_loss), set(inf_grad)
        self.signal_at, self.signum, self.grad_clip = signal_at, signum, grad_clip

    def draw(self, step, generator):
        return {"x": torch.randn(8, 2, generator=generator), "k": torch.full((8,), step + 1)}

    def loss(self, model, batch):
        k = int(batch["k"][0])
        x = batch["x"]
        loss = ((model(x) - x) ** 2).mean()
        if k in self.nan_loss:
            loss = loss * float("nan")
        if k in self.inf_grad:
            loss = loss + torch.sqrt((model.weight - model.weight.detach()).sum())
        if k == self.signal_at:
            os.kill(os.getpid(), self.signum)
        return loss


def run(obj: Toy, steps: int = 12, **kw):
    """fit() of ``obj``; returns (result, {step: saved TrainState})."""
    saved = {}
    kw.setdefault("checkpoint_every", 5)
    result = fit(obj, steps=steps, generator=torch.Generator().manual_seed(1),
                 log=LossLog(1), save=lambda s: saved.__setitem__(s.step, copy.deepcopy(s)),
                 **kw)
    return result, saved


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


# --- non-finite updates ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["nan_loss", "inf_grad", "inf_grad_clipped"])
def test_a_non_finite_update_stops_the_run_unapplied(kind):
    clip = 1.0 if kind == "inf_grad_clipped" else 0.0
    obj = Toy(**{kind.removesuffix("_clipped"): {7}}, grad_clip=clip)
    saved = {}
    with pytest.raises(NonFiniteError) as err:
        fit(obj, steps=12, generator=torch.Generator().manual_seed(1), checkpoint_every=5,
            save=lambda s: saved.__setitem__(s.step, s))
    message = str(err.value)
    what = "loss is nan" if kind == "nan_loss" else "gradient norm is inf"
    assert err.value.step == 7 and err.value.saved == 5 and "\n" not in message
    assert message.startswith(f"step 7: the {what}") and "checkpoint of step 5" in message
    assert list(saved) == [5]  # the bad state is never saved
    # the weights are those after update 6: update 7 was not applied
    ref = Toy(grad_clip=clip)
    fit(ref, steps=12, max_steps=6, generator=torch.Generator().manual_seed(1))
    assert same_weights(obj.net, ref.net)
    assert all(torch.isfinite(p).all() for p in obj.net.parameters())


def test_skip_nonfinite_skips_up_to_k_in_a_row_and_leaves_the_state_unchanged():
    obj = Toy(nan_loss={4}, inf_grad={5})
    with pytest.warns(UserWarning, match="skipped 2 update"):
        result, saved = run(obj, steps=5, skip_nonfinite=2)
    ref = Toy()
    _, ref_saved = run(ref, steps=12, max_steps=3)
    assert result.step == 5 and same_weights(obj.net, ref.net)  # updates 4, 5: nothing applied
    state, before = saved[5].optimizer["state"], ref_saved[3].optimizer["state"]
    assert all(torch.equal(state[i][k], before[i][k]) for i in state for k in state[i])
    assert [s for s, _ in result.log.rows] == [1, 2, 3]  # no row for a skipped update
    # a third one in a row is one too many
    with pytest.raises(NonFiniteError, match=r"step 6: .*\(3 such updates in a row\)"):
        run(Toy(nan_loss={4, 5, 6}), skip_nonfinite=2)


def test_skipped_updates_apart_do_not_add_up():
    """K counts the bad updates IN A ROW: one finite update resets it."""
    with pytest.warns(UserWarning, match="skipped 3 update"):
        result, _ = run(Toy(nan_loss={2, 4, 6}), skip_nonfinite=1)
    assert result.step == 12 and all(torch.isfinite(torch.tensor(v)) for _, v in result.log.rows)


# --- signals -----------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def sigint_raises():
    """SIGINT as a terminal's program gets it (KeyboardInterrupt), even where this test process
    was started with it ignored (a script's background job), which difflab leaves ignored."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_a_sigint_the_process_was_started_ignoring_stays_ignored():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell's background job inherits it
    result, saved = run(Toy(signal_at=7), checkpoint_every=100)
    assert result.step == 12 and list(saved) == [12]
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_checkpoints_the_current_step_and_resume_is_exact(signum, code):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingInterrupted) as err:
        _, saved = run(Toy(signal_at=7, signum=signum), checkpoint_every=100)
    assert err.value.exit_code == code and err.value.step == 7
    assert signal.Signals(signum).name in str(err.value)
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # put back
    saved = {}
    with pytest.raises(TrainingInterrupted):
        fit(Toy(signal_at=7, signum=signum), steps=12, log=LossLog(1), checkpoint_every=100,
            generator=torch.Generator().manual_seed(1),
            save=lambda s: saved.__setitem__(s.step, copy.deepcopy(s)))
    assert list(saved) == [7]  # a checkpoint of the update in progress, none due otherwise
    resumed, whole = Toy(), Toy()
    result, _ = run(resumed, resume=saved[7])
    whole_result, _ = run(whole)
    assert result.step == 12 and same_weights(resumed.net, whole.net)
    assert result.log.rows == whole_result.log.rows


def test_a_second_signal_acts_at_once():
    """The first SIGINT asks for a checkpoint; a second one interrupts as Python would, at
    once, inside the update (no checkpoint of it)."""
    class Twice(Toy):
        def loss(self, model, batch):
            if int(batch["k"][0]) == 7:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
            return super().loss(model, batch)

    saved = {}
    with pytest.raises(KeyboardInterrupt) as err:
        fit(Twice(), steps=12, generator=torch.Generator().manual_seed(1), checkpoint_every=5,
            save=lambda s: saved.__setitem__(s.step, s))
    assert not isinstance(err.value, TrainingInterrupted) and list(saved) == [5]


# --- the command line --------------------------------------------------------------------------
TINY = ["--hidden", "32", "--depth", "1", "--batch", "128", "--n-train", "1000", "--n-eval", "200",
        "--eval-steps", "2", "--threads", "1", "--lr-schedule", "constant", "--no-progress"]


# the child process imports this difflab (PYTHONPATH may be relative to the tests' directory)
SRC = str(Path(difflab.__file__).resolve().parents[1])


def tensors(run) -> dict[str, torch.Tensor]:
    return ckpt.load_tensors(run / ckpt.CHECKPOINT)[0]


def test_cli_nan_stop_keeps_the_checkpoint_and_resumes_with_a_lower_lr(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, _ = run_cli(capsys, "train", *TINY, "--steps", "30", "--checkpoint-every", "5",
                         "--stop-after", "10", "--out", run)
    assert code == 0
    before = tensors(run)
    code, out, err = run_cli(capsys, "train", "--resume", run, "--lr", "1e30", "--no-progress")
    assert one_error_line(code, err), err
    step = int(err.split("step ")[1].split(":")[0])
    assert step > 10 and "checkpoint of step 10 is kept" in err and "--lr" in err
    after = tensors(run)  # the checkpoint of step 10, intact
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    assert not (run / "difflab.lock").exists() and not (run / ckpt.METRICS).exists()
    code, out, err = run_cli(capsys, "train", "--resume", run, "--lr", "1e-3", "--no-progress")
    assert code == 0, err
    assert ckpt.load_checkpoint(run).step == 30 and (run / ckpt.METRICS).is_file()
    code, _, err = run_cli(capsys, "train", "--resume", run, "--skip-nonfinite", "-1")
    assert one_error_line(code, err) and "--skip-nonfinite" in err


@pytest.mark.slow  # a real process to signal: its start alone takes seconds on a busy machine
def test_cli_sigterm_checkpoints_exits_143_and_resume_is_bit_identical(tmp_path, capsys):
    # a long run, stopped soon after its first checkpoint; then both runs end at step + 20
    args = [*TINY, "--steps", "100000", "--checkpoint-every", "25"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    proc = subprocess.Popen([sys.executable, "-m", "difflab", "train", *args, "--out", "stopped"],
                            cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    run = tmp_path / "stopped"
    deadline = time.monotonic() + 120
    while (ckpt.checkpoint_step(run) is None and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    step = ckpt.checkpoint_step(run)
    assert err.startswith("difflab: interrupted (SIGTERM at step ") and err.count("\n") == 1
    assert f"a checkpoint of step {step} was written" in err and step >= 25
    assert not (run / "difflab.lock").exists() and not (run / ckpt.METRICS).exists()
    end = str(step + 20)
    code, _, err = run_cli(capsys, "train", "--resume", run, "--steps", end, "--no-progress")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", *args, "--steps", end, "--out", tmp_path / "whole")
    assert code == 0, err
    a, b = tensors(run), tensors(tmp_path / "whole")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- a lost process (the multi-process run itself: tests/test_distributed_faults.py) -----------
def test_a_failed_collective_becomes_one_line_only_when_a_process_is_gone():
    from difflab.training.faults import ProcessLostError, lost_processes

    gone = RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                        "[127.0.0.1]:31135")
    with pytest.raises(ProcessLostError) as err, lost_processes(0, 2, lambda: (20, 20)):
        raise gone
    assert str(err.value) == ("process 0 of 2: another process of this run stopped during "
                              "update 21 (Connection closed by peer [127.0.0.1]:31135); the "
                              "checkpoint of step 20 is kept: resume from it with --resume")
    for world, error in ((1, gone), (2, RuntimeError("mat1 and mat2 shapes cannot be "
                                                     "multiplied"))):
        with pytest.raises(RuntimeError) as err, lost_processes(0, world, lambda: (3, None)):
            raise error
        assert err.value is error  # one process, or a bug: unchanged, with its traceback


def test_the_collectives_timeout(monkeypatch):
    from difflab.training.backend import DIST_TIMEOUT, BackendError, dist_timeout

    monkeypatch.delenv("DIFFLAB_DIST_TIMEOUT", raising=False)
    assert dist_timeout() == DIST_TIMEOUT
    monkeypatch.setenv("DIFFLAB_DIST_TIMEOUT", "7.5")
    assert dist_timeout() == 7.5
    for bad in ("soon", "0", "-3", "nan"):
        monkeypatch.setenv("DIFFLAB_DIST_TIMEOUT", bad)
        with pytest.raises(BackendError, match="DIFFLAB_DIST_TIMEOUT"):
            dist_timeout()


def test_processes_pass_a_sigterm_on_to_the_launcher():
    """``train --processes``: a SIGTERM sent to difflab alone reaches the launcher it runs (which
    passes it to every process), and difflab exits 143 when it ends."""
    from difflab.cli.train import run_forwarding_sigterm

    launcher = ("import signal, sys, time\n"
                "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))\n"
                "time.sleep(60)\n")
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    start = time.monotonic()
    try:
        code = run_forwarding_sigterm([sys.executable, "-c", launcher])
    finally:
        timer.cancel()
    assert code == 143 and time.monotonic() - start < 30
    assert signal.getsignal(signal.SIGTERM) == before
