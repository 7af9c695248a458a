"""``difflab train --log tensorboard`` (issue 18): TensorBoard event files beside loss.csv, read
back with TensorBoard's own EventAccumulator; resumed runs log each step once; one process of a
2-process run writes; a missing package or an unknown log is a one-line error."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from difflab.training.diffusion import LRSchedule
from difflab.training.faults import grad_norm
from difflab.training.loggers import LOG_DIR, LOGGERS
from helpers import one_error_line, run_cli

pytest.importorskip("tensorboard", reason="--log tensorboard needs the tensorboard package")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

STEPS, EVERY = 40, 10
TINY = ["--steps", str(STEPS), "--hidden", "16", "--depth", "1", "--t-dim", "8", "--batch", "64",
        "--n-train", "1000", "--n-eval", "200", "--eval-steps", "5", "--warmup", "5",
        "--checkpoint-every", "20", "--log-every", str(EVERY), "--threads", "1",
        "--device", "cpu", "--no-progress"]


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / LOG_DIR), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def loss_rows(run: Path) -> list[tuple[int, float]]:
    with open(run / "loss.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def assert_matches_csv(run: Path, acc: EventAccumulator) -> None:
    rows = loss_rows(run)
    logged = scalars(acc, "train/loss")
    assert [s for s, _ in logged] == [s for s, _ in rows]  # each row once, in order
    # event files hold float32
    torch.testing.assert_close(torch.tensor([v for _, v in logged], dtype=torch.float64),
                               torch.tensor([v for _, v in rows], dtype=torch.float64),
                               rtol=1e-6, atol=0)


def train(capsys, run: Path, *args: str) -> None:
    code, _, err = run_cli(capsys, "train", *TINY, *args, "--out", run)
    assert code == 0, err


def test_log_names_match_the_config():
    from difflab.config import LOGS

    assert tuple(LOGGERS) == LOGS


def test_scalars_and_pictures_match_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    train(capsys, run, "--log", "tensorboard")
    acc = events(run)
    assert_matches_csv(run, acc)
    steps = list(range(EVERY, STEPS + 1, EVERY))
    # the learning rate of each logged update: the run's schedule (warm-up, then cosine)
    lr = LRSchedule(3e-3, STEPS, 5, "cosine", 0.05)
    logged_lr = scalars(acc, "train/lr")
    assert [s for s, _ in logged_lr] == steps
    for step, value in logged_lr:
        assert value == pytest.approx(lr(step - 1), rel=1e-6)
    for tag in ("train/grad_norm", "train/throughput"):
        values = scalars(acc, tag)
        assert [s for s, _ in values] == steps
        assert all(v > 0 and v < float("inf") for _, v in values), (tag, values)
    # the evaluation: its numeric metrics and its pictures, at the last step
    metrics = json.loads((run / "metrics.json").read_text())
    (step, swd), = scalars(acc, "eval/swd")
    assert step == STEPS and swd == pytest.approx(metrics["swd"], rel=1e-6)
    from PIL import Image

    for name in ("samples", "reverse_process"):
        (image,) = acc.Images(f"eval/{name}")
        with Image.open(run / f"{name}.png") as png:
            assert (image.step, image.width, image.height) == (STEPS, *png.size)


def test_grad_norm_is_the_norm_before_clipping(tmp_path, capsys):
    """The norm fit reports without clipping (computed for the log) equals the one clipping
    computes where the clip never bites (the two runs train identically)."""
    runs = {clip: tmp_path / f"clip-{clip}" for clip in ("0", "1000")}
    for clip, run in runs.items():
        train(capsys, run, "--log", "tensorboard", "--grad-clip", clip)
    a, b = (scalars(events(run), "train/grad_norm") for run in runs.values())
    assert [s for s, _ in a] == [s for s, _ in b]
    torch.testing.assert_close(torch.tensor([v for _, v in a]), torch.tensor([v for _, v in b]),
                               rtol=1e-5, atol=0)


def test_grad_norm_function_matches_torch():
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (3, 5, 7)]
    for p in params[:2]:
        p.grad = torch.randn(p.shape, generator=g)
    expected = torch.cat([p.grad for p in params[:2]]).norm()
    assert grad_norm(params, 0.0).item() == pytest.approx(expected.item(), rel=1e-6)
    assert grad_norm([torch.nn.Parameter(torch.zeros(2))], 0.0).item() == 0.0


def test_a_resumed_run_logs_each_step_once(tmp_path, capsys):
    """A run killed after a checkpoint logged steps past it; resumed from that checkpoint, the
    event files show every step once (TensorBoard's purge), with loss.csv's values."""
    run = tmp_path / "run"
    train(capsys, run, "--log", "tensorboard", "--stop-after", "20")
    kept = tmp_path / "at-20"
    shutil.copytree(run, kept)  # the checkpoint at step 20, and loss.csv up to it
    code, _, err = run_cli(capsys, "train", "--resume", run, "--stop-after", "30",
                           "--no-progress")  # logs step 30: the session that gets "killed"
    assert code == 0, err
    assert [s for s, _ in scalars(events(run), "train/loss")] == [10, 20, 30]
    for name in ("checkpoint.safetensors", "loss.csv"):  # back to step 20, as after a kill
        shutil.copy(kept / name, run / name)
    code, _, err = run_cli(capsys, "train", "--resume", run, "--no-progress")
    assert code == 0, err
    assert_matches_csv(run, events(run))
    assert [s for s, _ in scalars(events(run), "train/lr")] == [10, 20, 30, 40]


def test_a_run_resumed_with_log_tensorboard_logs_from_there(tmp_path, capsys):
    run = tmp_path / "run"
    train(capsys, run, "--stop-after", "20")  # loss.csv only
    assert not (run / LOG_DIR).exists()
    code, _, err = run_cli(capsys, "train", "--resume", run, "--log", "tensorboard",
                           "--no-progress")
    assert code == 0, err
    logged = scalars(events(run), "train/loss")
    assert [s for s, _ in logged] == [30, 40]
    assert [v for _, v in logged] == pytest.approx([v for _, v in loss_rows(run)[2:]], rel=1e-6)


def test_missing_tensorboard_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *TINY, "--log", "tensorboard", "--out", run)
    assert one_error_line(code, err) and "tensorboard" in err and "pip install" in err, err
    assert not run.exists()  # refused before anything was written


def test_unknown_log_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", *TINY, "--log", "wandb", "--out", tmp_path / "r")
    assert one_error_line(code, err) and "csv, tensorboard" in err, err


# --- 2 processes: rank 0 alone writes ------------------------------------------------------------
@pytest.mark.slow
def test_only_rank_zero_writes_event_files(tmp_path):
    from test_distributed import PROBE, environment, launch

    env = environment(tmp_path)
    proc = subprocess.run([*launch(2), "-m", "difflab", "train", *TINY, "--log", "tensorboard",
                           "--out", "two"], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=240)
    if proc.returncode != 0:
        (tmp_path / "probe.py").write_text(PROBE)
        probe = subprocess.run([*launch(2), "probe.py"], cwd=tmp_path, env=env,
                               capture_output=True, timeout=120)
        if probe.returncode != 0:
            pytest.skip("accelerate launch cannot run 2 CPU processes here")
        pytest.fail(f"2-process run failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    run = tmp_path / "two"
    files = list((run / LOG_DIR).iterdir())
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents."), files
    assert_matches_csv(run, events(run))
