"""The command line's error policy and its newer flags: difflab's own errors (and argparse's) are
one line ``difflab: error: …`` with exit code 2; any other exception is a bug and keeps its
traceback. Also ``--device``/``--precision``, ``distill --resume`` and ``train --processes``
(the launch command, with the launching replaced: the real 2-process run is tested
elsewhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import difflab.runs.distill
import difflab.runs.draw
import difflab.runs.train
from difflab.cli import main
from difflab.cli.common import UsageError
from difflab.cli.train import launch_command, without_processes
from difflab.errors import DifflabError
from difflab.runs import checkpoint as ckpt

TINY = ["--steps", "6", "--hidden", "16", "--depth", "1", "--t-dim", "8", "--batch", "64",
        "--n-train", "500", "--n-eval", "100", "--eval-steps", "4", "--warmup", "2",
        "--checkpoint-every", "6", "--no-progress"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, out: str, err: str) -> bool:
    return (code == 2 and out == "" and err.count("\n") == 1
            and err.startswith("difflab: error: ") and "Traceback" not in err)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("errors") / "run"
    assert main(["train", *TINY, "--device", "cpu", "--out", str(run_dir)]) == 0
    return run_dir


# --- user errors: one line, exit 2 -------------------------------------------------------------
def test_usage_error_is_a_difflab_error():
    assert issubclass(UsageError, DifflabError)


def test_bad_flag_values_are_one_line(trained, tmp_path, capsys):
    o = ["--out", tmp_path / "x.npy"]
    a_file = tmp_path / "file"
    a_file.write_text("")
    for argv in (["train", "--steps", "many"],
                 ["train", "--processes", "0"],
                 ["train", "--device", "tpu", "--out", tmp_path / "a"],
                 ["train", "--grad-accum", "0", "--out", tmp_path / "a"],
                 ["sample", trained, "--device", "tpu", *o],
                 ["sample", trained, "--precision", "fp8", *o],
                 ["sample", trained, "--precision", "fp16", "--device", "cpu", *o],
                 ["sample", trained, *o[:1], tmp_path / "missing" / "x.npy"],
                 ["sample", trained, "--out", tmp_path],
                 ["eval", trained, "--nll", "--precision", "bf16"],
                 ["train", "--dataset", "folder", "--data", tmp_path / "nope", "--out",
                  tmp_path / "b"],
                 ["distill", trained, "--method", "consistency", "--checkpoint-every", "0"],
                 ["distill", "--method", "consistency"],
                 ["distill", "--resume", tmp_path / "nope"],
                 ["distill", trained, "--resume", tmp_path / "nope"],
                 ["distill", "--resume", trained, "--iters", "5"],
                 ["train", *TINY, "--out", a_file / "run"],
                 ["train-classifier", "--out", a_file],
                 ["distill", trained, "--method", "consistency", "--out", a_file / "cd"]):
        assert one_line_error(*run(capsys, *argv)), argv
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "a").exists()


def test_a_config_error_names_the_flag(tmp_path, capsys):
    code, out, err = run(capsys, "train", "--loss", "hybrid", "--out", tmp_path / "r")
    assert one_line_error(code, out, err)
    assert "--loss 'hybrid'" in err and "--variance 'learned'" in err and "config key" not in err
    code, out, err = run(capsys, "train", "--precision", "fp64", "--out", tmp_path / "r")
    assert one_line_error(code, out, err) and "--precision" in err


def test_difflab_errors_from_deep_inside_are_one_line(monkeypatch, tmp_path, capsys):
    def refuse(*args, **kwargs):
        raise ckpt.CheckpointError(f"{tmp_path} is corrupt\n(truncated)")

    monkeypatch.setattr(difflab.runs.train, "train", refuse)
    code, out, err = run(capsys, "train", *TINY, "--out", tmp_path / "r")
    assert one_line_error(code, out, err) and "corrupt (truncated)" in err


def test_an_unwritable_output_is_one_line_naming_it(trained, monkeypatch, tmp_path, capsys):
    out = tmp_path / "x.npy"

    def denied(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ckpt, "atomic_write_bytes", denied)
    code, stdout, err = run(capsys, "sample", trained, "-n", "4", "--steps", "2", "--out", out)
    assert one_line_error(code, stdout, err) and str(out) in err and "Permission denied" in err


# --- bugs keep their traceback -----------------------------------------------------------------
@pytest.mark.parametrize("error", [RuntimeError("boom"), ValueError("boom"), TypeError("boom"),
                                   OSError("boom")])
def test_a_bug_propagates_out_of_main(error, trained, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(difflab.runs.train, "train", broken)
    with pytest.raises(type(error), match="boom"):
        main(["train", *TINY, "--out", str(tmp_path / "r")])
    monkeypatch.setattr(difflab.runs.draw, "draw", broken)
    with pytest.raises(type(error), match="boom"):
        main(["sample", str(trained), "--out", str(tmp_path / "x.npy")])


def test_a_bug_shows_its_traceback_from_the_console(tmp_path):
    script = ("import difflab.runs.train as t\n"
              "def boom(*a, **k):\n    raise RuntimeError('boom')\n"
              "t.train = boom\n"
              "from difflab.cli import main\n"
              f"raise SystemExit(main(['train', '--out', {str(tmp_path / 'r')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: boom" in proc.stderr
    assert "difflab: error" not in proc.stderr


def test_keyboard_interrupt_exits_130(monkeypatch, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(difflab.runs.train, "train", interrupted)
    code, _, err = run(capsys, "train", *TINY, "--out", tmp_path / "r")
    assert code == 130 and "--resume" in err


# --- devices and precision ---------------------------------------------------------------------
def test_sample_on_the_cpu_in_bf16(trained, tmp_path, capsys):
    a, b = tmp_path / "fp32.npy", tmp_path / "bf16.npy"
    argv = ["sample", trained, "--sampler", "ddim", "--steps", "4", "-n", "64", "--device", "cpu"]
    assert run(capsys, *argv, "--out", a)[0] == 0
    code, _, err = run(capsys, *argv, "--precision", "bf16", "--out", b)
    assert code == 0, err
    x, y = np.load(a), np.load(b)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    assert np.abs(x - y).max() < 0.2  # bf16 keeps ~3 significant digits of the network


def test_eval_takes_device_and_precision(trained, capsys):
    code, out, err = run(capsys, "eval", trained, "--steps", "3", "-n", "50", "--device",
                         "cpu", "--precision", "bf16")
    assert code == 0, err
    assert "swd" in json.loads(out)


# --- distill --resume --------------------------------------------------------------------------
def test_distill_resume_continues_and_stop_after_says_how(monkeypatch, tmp_path, capsys):
    out = tmp_path / "prog"
    (out / "steps-2").mkdir(parents=True)
    calls = []

    def resume(path, *, progress=False, max_steps=None, report=None):
        calls.append((Path(path), max_steps))
        return [out / "steps-4", out / "steps-2"]

    monkeypatch.setattr(difflab.runs.distill, "resume_distillation", resume)
    code, stdout, err = run(capsys, "distill", "--resume", out, "--stop-after", "7",
                            "--no-progress")
    assert code == 0, err
    assert calls == [(out, 7)]
    lines = stdout.strip().splitlines()
    assert lines[-1] == str(out) and f"distill --resume {out}" in lines[-2]
    (out / "steps-2" / ckpt.METRICS).write_text("{}")  # the last round finished
    code, stdout, _ = run(capsys, "distill", "--resume", out)
    assert code == 0 and stdout.strip().splitlines()[-1] == str(out / "steps-2")


def test_distill_passes_device_precision_and_checkpoints(trained, monkeypatch, tmp_path,
                                                         capsys):
    seen = {}

    def fake(run, out, **kwargs):
        seen.update(kwargs)
        return Path(out), {"sampler": "consistency", "steps": 1}

    monkeypatch.setattr(difflab.runs.distill, "distill_consistency", fake)
    code, stdout, err = run(capsys, "distill", trained, "--method", "consistency",
                            "--device", "cpu", "--precision", "bf16", "--compile",
                            "--checkpoint-every", "3", "--stop-after", "5", "--iters", "9",
                            "--out", tmp_path / "cd")
    assert code == 0, err
    assert {k: seen[k] for k in ("device", "precision", "compile", "checkpoint_every",
                                 "max_steps", "iters")} == {
        "device": "cpu", "precision": "bf16", "compile": True, "checkpoint_every": 3,
        "max_steps": 5, "iters": 9}
    assert stdout.strip().splitlines()[-1] == str(tmp_path / "cd")
    assert "--resume" in stdout


# --- train --processes -------------------------------------------------------------------------
def test_processes_relaunches_the_command_under_accelerate(trained, monkeypatch, capsys):
    import difflab.cli.train as cli_train

    launched = []

    def fake_run(cmd):
        launched.append(cmd)
        return 3

    monkeypatch.setattr(cli_train, "run_forwarding_sigterm", fake_run)
    code, _, _ = run(capsys, "train", *TINY, "--processes", "2", "--device", "cpu")
    assert code == 3  # the launcher's exit code, passed through
    (cmd,) = launched
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    assert cmd[cmd.index("--num_machines") + 1] == "1"
    rest = cmd[cmd.index("-m", 3):]
    assert rest[:3] == ["-m", "difflab", "train"] and "--processes" not in rest
    assert rest[rest.index("--device") + 1] == "cpu"
    out = Path(rest[rest.index("--out") + 1])  # one run directory for every process
    assert out.parent.name == "runs" and not out.exists()
    # resuming works with any number of processes: the checkpoint does not depend on it
    code, _, _ = run(capsys, "train", "--resume", trained, "--processes=2", "--no-progress")
    assert code == 3 and "--out" not in launched[-1]
    assert launched[-1][-3:] == ["--resume", str(trained), "--no-progress"]
    assert one_line_error(*run(capsys, "train", "--resume", trained.parent / "nope",
                               "--processes", "2"))  # refused before launching
    assert one_line_error(*run(capsys, "train", *TINY, "--out", trained, "--processes", "2"))
    assert len(launched) == 2  # an existing run is refused here too, not by every process


def test_processes_1_trains_in_this_process(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("launched"))
    code, out, err = run(capsys, "train", *TINY, "--processes", "1", "--stop-after", "3",
                         "--out", tmp_path / "r")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(tmp_path / "r") and "--resume" in out


def test_launch_command_and_argument_stripping():
    assert without_processes(["train", "--processes", "4", "--steps", "9"]) == \
        ["train", "--steps", "9"]
    assert without_processes(["train", "--processes=4", "--proc", "2", "--preset", "x"]) == \
        ["train", "--preset", "x"]
    cmd = launch_command(4, ["train", "--steps", "9"])
    assert cmd[-4:] == ["difflab", "train", "--steps", "9"]
    assert "--cpu" not in cmd  # Accelerate's --cpu would start one process only


def test_a_nan_stop_in_distill_names_what_distill_can_do(trained, tmp_path, capsys):
    """distill --resume refuses --lr (it continues a distillation as it was started), so a
    non-finite stop in distill must not suggest 'resume with a lower --lr' as train's does."""
    code, _, err = run(capsys, "distill", trained, "--method", "consistency", "--iters", "6",
                       "--lr", "1e30", "--checkpoint-every", "2", "--out", tmp_path / "cd",
                       "--no-progress")
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert "distill --resume cannot change --lr" in err and "--skip-nonfinite" not in err
