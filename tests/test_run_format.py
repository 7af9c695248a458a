"""Run directories with components (format 2), and runs written by the version before it.

``fixtures/run_v1`` was written by difflab before the run machinery was rebuilt (format 1: a
flat config.json, ema.safetensors and model.safetensors, a checkpoint with model.*, ema.* keys):
``difflab train --steps 20 --hidden 16 --depth 1 --t-dim 16 --n-train 2000 --batch 64
--checkpoint-every 10 --stop-after 10 --threads 1``, stopped at step 10.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from difflab.runs import checkpoint as ckpt
from difflab.runs import run_config as runcfg
from difflab.runs.load import load_run, read_run, read_run_config
from difflab.runs.train import train

FIXTURE = Path(__file__).parent / "fixtures" / "run_v1"


def test_config_json_records_kind_format_and_components(tmp_path):
    cfg = read_run_config(FIXTURE)
    run = train(cfg.__class__.from_dict({**cfg.to_dict(), "steps": 4, "n_eval": 100}),
                tmp_path / "run", progress=False, evaluate_after=False)
    raw = json.loads((run / ckpt.CONFIG).read_text())
    assert raw["format"] == runcfg.RUN_FORMAT and raw["kind"] == "diffusion"
    assert raw["components"] == {"denoiser": {"weights": "denoiser.safetensors",
                                              "ema": "denoiser.ema.safetensors"}}
    for name in ("denoiser.safetensors", "denoiser.ema.safetensors", ckpt.CHECKPOINT):
        assert (run / name).is_file()
    state = ckpt.load_checkpoint(run)
    assert sorted(state.modules) == ["ema", "model"] and state.step == 4


def test_a_format_1_run_loads_and_resumes_exactly(tmp_path):
    """The fixture's first 10 updates ran on another machine, whose float kernels may round
    differently from this one's (AVX-512 or not): so its resume is compared with this version's
    uninterrupted run to float tolerance, a mapping error (a swapped EMA, a lost AdamW state or
    RNG) being orders larger, and bit for bit with itself resumed in two sessions."""
    old, split = tmp_path / "old", tmp_path / "split"
    shutil.copytree(FIXTURE, old)
    shutil.copytree(FIXTURE, split)
    kind, cfg, _ = read_run(old)
    assert kind == "diffusion" and cfg.hidden == 16 and cfg.steps == 20
    _, model, _ = load_run(old)
    assert model(torch.randn(3, 2), torch.tensor([1, 2, 3])).shape == (3, 2)
    # resumed by this version, it ends where this version's uninterrupted run ends
    train(cfg, old, resume=True, progress=False, evaluate_after=False)
    fresh = train(cfg, tmp_path / "fresh", progress=False, evaluate_after=False)
    a, b = ckpt.load_checkpoint(old), ckpt.load_checkpoint(fresh)
    assert a.step == b.step == 20
    for name in ("model", "ema"):
        for k, v in b.modules[name].items():
            assert torch.allclose(a.modules[name][k], v, rtol=0, atol=1e-6), f"{name}.{k}"

    def losses(run):
        return [float(line.split(",")[1]) for line in (run / "loss.csv").read_text().split()[1:]]

    assert losses(old) == pytest.approx(losses(fresh), rel=1e-6)
    # and resumed twice (to 15, then 20) it is the run resumed once, bit for bit
    train(cfg, split, resume=True, progress=False, evaluate_after=False, max_steps=15)
    train(cfg, split, resume=True, progress=False, evaluate_after=False)
    c = ckpt.load_checkpoint(split)
    for name in ("model", "ema"):
        for k, v in a.modules[name].items():
            assert torch.equal(c.modules[name][k], v), f"{name}.{k}"
    assert (split / "loss.csv").read_text() == (old / "loss.csv").read_text()


def test_a_config_of_an_unknown_format_gets_one_line_that_says_what_to_do(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    (run / ckpt.CONFIG).write_text(json.dumps({"format": "difflab-run/99", "kind": "x"}))
    with pytest.raises(ckpt.CheckpointError, match="upgrade difflab"):
        load_run(run)


def test_a_classifier_or_job_directory_is_not_a_model_to_sample(tmp_path):
    run = tmp_path / "job"
    shutil.copytree(FIXTURE, run)
    cfg = read_run_config(run)
    runcfg.write_run_config(run, "progressive-distillation", cfg.to_dict(), {"teacher": "x"})
    with pytest.raises(ckpt.CheckpointError, match="no model to sample"):
        load_run(run)


def test_resume_and_overwrite_remove_the_temp_files_of_a_killed_write(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    stale = [run / ".denoiser.ema.safetensors.x1y2.tmp", run / ".checkpoint.safetensors.a.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    keep = run / "notes.txt"
    keep.write_text("the user's")
    train(read_run_config(run), run, resume=True, progress=False, evaluate_after=False)
    assert not any(p.exists() for p in stale) and keep.read_text() == "the user's"
    stale[0].write_bytes(b"half a file")
    ckpt.prepare_run_dir(run, overwrite=True)
    assert not stale[0].exists() and keep.exists()


def test_a_format_2_consistency_run_resumes_with_the_lr_it_trained_with(tmp_path):
    """Format 2 consistency-training runs decayed the lr linearly to 0 from the first update
    whatever their lr fields said (by default cosine, warm-up 100): read with the values they
    trained with, they resume bit for bit, and config.json is rewritten true, as format 3. A
    diffusion run's lr fields are read as they are."""
    from difflab.config import load_config

    cfg = load_config(None, {"method": "consistency-training", "hidden": 16, "depth": 1,
                             "t_dim": 8, "batch": 32, "n_train": 500, "n_eval": 50,
                             "steps": 12, "checkpoint_every": 6, "eval_steps": 1, "threads": 1})
    assert (cfg.lr_schedule, cfg.warmup, cfg.lr_min_ratio) == ("linear", 0, 0.0)
    whole = train(cfg, tmp_path / "whole", progress=False, evaluate_after=False)
    old = train(cfg, tmp_path / "old", progress=False, evaluate_after=False, max_steps=6)
    raw = json.loads((old / ckpt.CONFIG).read_text())  # as the version before wrote it
    raw["format"] = runcfg.OLDER_RUN_FORMAT
    raw["config"]["optimiser"].update(lr_schedule="cosine", warmup=100, lr_min_ratio=0.05)
    (old / ckpt.CONFIG).write_text(json.dumps(raw))

    kind, read, _ = read_run(old)
    assert kind == "consistency-training" and read == cfg
    train(read, old, resume=True, progress=False, evaluate_after=False)
    a, b = ckpt.load_checkpoint(old), ckpt.load_checkpoint(whole)
    for name in ("model", "ema"):
        for k, v in b.modules[name].items():
            assert torch.equal(a.modules[name][k], v), f"{name}.{k}"
    raw = json.loads((old / ckpt.CONFIG).read_text())
    assert raw["format"] == runcfg.RUN_FORMAT
    assert raw["config"]["optimiser"]["lr_schedule"] == "linear"

    # a constant lr stayed constant, without its warm-up; flat configs (format 1) too
    sections = {"optimiser": {"lr_schedule": "constant", "warmup": 100, "lr_min_ratio": 0.05}}
    assert runcfg.lr_as_trained(sections)["optimiser"] == {
        "lr_schedule": "constant", "warmup": 0, "lr_min_ratio": 0.05}
    assert runcfg.lr_as_trained({"method": "consistency-training", "warmup": 100}) == {
        "method": "consistency-training", "warmup": 0, "lr_schedule": "linear",
        "lr_min_ratio": 0.0}
    _, fixture, _ = read_run(FIXTURE)  # a diffusion run: cosine with its warm-up, as saved
    assert (fixture.lr_schedule, fixture.warmup) == ("cosine", 100)
