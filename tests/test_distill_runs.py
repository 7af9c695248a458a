"""Distillations are runs of the one loop: checkpoints inside a round and exact resume
(``runs/distill_progressive.py``, ``runs/distill_consistency.py``, ``runs/distill.py``'s
``resume_distillation``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from difflab.config import TrainConfig
from difflab.runs import checkpoint as ckpt
from difflab.runs.distill import resume_distillation
from difflab.runs.distill_consistency import distill_consistency
from difflab.runs.distill_progressive import distill_progressive
from difflab.runs.train import train


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    cfg = TrainConfig.from_dict(dict(hidden=32, depth=1, t_dim=16, n_train=1000, steps=30,
                                     batch=64, n_eval=200, eval_steps=5, warmup=5,
                                     checkpoint_every=40, threads=1, device="cpu"))
    return train(cfg, tmp_path_factory.mktemp("teacher") / "run", progress=False,
                 evaluate_after=False)


def same_weights(a: Path, b: Path, name: str) -> None:
    wa, wb = ckpt.load_tensors(a / name)[0], ckpt.load_tensors(b / name)[0]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{a / name}: {k}"


PROG = dict(rounds=2, start_steps=4, steps_per_round=12, batch=32, evaluate=False,
            device="cpu", checkpoint_every=5)


def test_progressive_stopped_inside_a_round_resumes_exactly(teacher, tmp_path):
    whole = distill_progressive(teacher, tmp_path / "whole", **PROG)
    assert [d.name for d in whole] == ["steps-4", "steps-2"]
    part = distill_progressive(teacher, tmp_path / "part", max_steps=17, **PROG)
    assert [d.name for d in part] == ["steps-4"]  # round 2 stopped at update 5 of 12
    assert ckpt.load_checkpoint(tmp_path / "part").step == 17
    state = ckpt.load_checkpoint(tmp_path / "part")
    assert any(k.startswith("teacher.") for k in state.extra)  # round 2's teacher is saved
    resumed = resume_distillation(tmp_path / "part")
    assert [d.name for d in resumed] == ["steps-4", "steps-2"]
    for a, b in zip(whole, resumed, strict=True):
        same_weights(a, b, "denoiser.safetensors")
        assert (a / ckpt.LOSS_CSV).read_text() == (b / ckpt.LOSS_CSV).read_text()


def test_progressive_stopped_at_a_round_boundary_writes_the_round_on_resume(teacher, tmp_path):
    whole = distill_progressive(teacher, tmp_path / "whole", **PROG)
    distill_progressive(teacher, tmp_path / "part", max_steps=12, **PROG)
    (tmp_path / "part" / "steps-4" / ckpt.METRICS).unlink()  # killed before the round was saved
    resumed = resume_distillation(tmp_path / "part")
    for a, b in zip(whole, resumed, strict=True):
        same_weights(a, b, "denoiser.safetensors")


def test_consistency_distillation_resumes_exactly(teacher, tmp_path):
    kw = dict(N=6, solver="euler", iters=14, batch=32, evaluate=False, device="cpu",
              checkpoint_every=4)
    whole, _ = distill_consistency(teacher, tmp_path / "whole", **kw)
    part, metrics = distill_consistency(teacher, tmp_path / "part", max_steps=9, **kw)
    assert metrics == {} and ckpt.load_checkpoint(part).step == 9
    out, metrics = resume_distillation(part)
    assert metrics["train_steps"] == 14
    for name in ("denoiser.safetensors", "denoiser.ema.safetensors"):
        same_weights(whole, out, name)


def test_resume_refuses_a_run_that_is_not_a_distillation(teacher):
    with pytest.raises(ckpt.CheckpointError, match="not a distillation"):
        resume_distillation(teacher)
