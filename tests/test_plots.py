"""Pictures and the loss log: the reverse-process GIF has one frame per recorded step, the loss
log keeps one row per block of steps and survives a round trip through its state."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from difflab import schedules
from difflab.runs.draw import Frames, draw
from difflab.runs.plots import plot_loss, save_reverse_process_gif
from difflab.training.losslog import LossLog, read_loss_csv


@pytest.mark.parametrize("steps,max_frames", [(1, 40), (5, 40), (40, 40), (41, 40), (1000, 7)])
def test_frame_marks_are_distinct_evenly_spaced_and_end_at_the_last_step(steps, max_frames):
    marks = Frames(keep=1, max_frames=max_frames).marks(steps)
    m = min(steps, max_frames)
    idx = sorted(marks)
    assert len(idx) == m and idx[-1] == steps - 1 and idx[0] >= 0
    assert marks[steps - 1] == 1.0 and sorted(marks.values()) == [marks[i] for i in idx]
    gaps = [b - a for a, b in zip([-1, *idx], idx, strict=False)]
    assert max(gaps) - min(gaps) <= 1  # evenly spaced up to rounding


def _eps_zero(x_t, t):
    return torch.zeros_like(x_t)


@pytest.mark.parametrize("shape,steps", [((6, 1, 8, 8), 5), ((6, 3, 8, 8), 50), ((300, 2), 12)])
def test_reverse_process_gif_has_one_frame_per_recorded_step(tmp_path, shape, steps):
    s = schedules.linear(100)
    frames = Frames(keep=4, max_frames=40)
    x0, _, _ = draw(_eps_zero, s, shape, sampler="ddim", steps=steps, frames=frames)
    assert len(frames.frames) == 1 + min(steps, 40)
    assert [p for p, _ in frames.frames][0] == 0.0 and frames.frames[-1][0] == 1.0
    assert torch.equal(frames.frames[-1][1], x0[:4])  # the last frame is the returned x_0
    path = tmp_path / "r.gif"
    save_reverse_process_gif(frames.frames, path)
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 1 + min(steps, 40)
        assert im.info.get("loop") == 0


def test_loss_log_rows_state_round_trip_and_csv(tmp_path):
    log = LossLog(every=3)
    losses = [float(v) for v in torch.rand(11, generator=torch.Generator().manual_seed(0))]
    for step, value in enumerate(losses, start=1):
        log.record(step, value)
    assert [s for s, _ in log.rows] == [3, 6, 9]  # the partial block 10-11 is pending
    assert log.rows[1][1] == pytest.approx(sum(losses[3:6]) / 3, rel=1e-15)
    other = LossLog(every=3)
    other.load_state_dict(log.state_dict())
    for step in (12, 13):
        log.record(step, 0.5)
        other.record(step, 0.5)
    assert other.rows == log.rows and log.rows[-1][0] == 12  # the pending sums were restored
    (tmp_path / "loss.csv").write_text(log.csv())
    assert read_loss_csv(tmp_path / "loss.csv") == log.rows  # floats survive exactly
    empty = LossLog(every=3)
    empty.load_state_dict({})
    assert empty.rows == [] and empty.csv() == "step,loss\n"
    with pytest.raises(ValueError):
        LossLog(every=0)


@pytest.mark.parametrize("rows", [[], [(10, 1.0), (20, 0.5)], [(k, 1.0 / k) for k in range(1, 200)],
                                  [(1, -0.5), (2, 0.3)]])
def test_plot_loss_writes_a_png(tmp_path, rows):
    path = tmp_path / "loss.png"
    plot_loss(rows, path, every=10)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
