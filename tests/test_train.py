"""Training: it learns, it resumes bit for bit, its checkpoints survive a crash mid-write, and
its configuration rejects bad input by name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from difflab.build.model import build_model, build_schedule
from difflab.config import TrainConfig, load_config, read_preset
from difflab.runs import checkpoint as ckpt
from difflab.runs.evaluate import evaluate
from difflab.runs.load import load_run
from difflab.runs.train import train
from difflab.training import lr_schedule
from helpers import part_of

TINY = {"hidden": 32, "depth": 1, "t_dim": 16, "batch": 128, "n_train": 4000, "warmup": 10,
        "n_eval": 2000, "eval_steps": 20, "threads": 1}


def tiny(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **kw})


# --- learning ---
def test_brief_training_drops_swd_far_below_an_untrained_model(tmp_path):
    cfg = tiny(steps=400, hidden=64, depth=2, lr=5e-3, checkpoint_every=1000)
    schedule = build_schedule(cfg)
    untrained = evaluate(build_model(cfg).eval(), schedule, cfg.dataset, steps=20, n=2000)
    run = train(cfg, tmp_path / "run", progress=False, evaluate_after=False)
    _, model, _ = load_run(run)
    trained = evaluate(model, schedule, cfg.dataset, steps=20, n=2000)
    assert trained.metrics["swd"] < 0.25 * untrained.metrics["swd"]
    assert trained.metrics["swd"] < 5 * trained.metrics["swd_floor"]


def test_run_directory_after_training(tmp_path):
    run = train(tiny(steps=30, checkpoint_every=20), tmp_path / "run", progress=False)
    names = {p.name for p in run.iterdir()}
    assert set(ckpt.RUN_FILES) <= names and not [n for n in names if n.endswith(".tmp")]
    metrics = ckpt.read_json(run / ckpt.METRICS)
    for key in ("swd", "swd_floor", "swd_ratio", "train_seconds", "sampler", "steps"):
        assert key in metrics
    assert metrics["train_steps"] == 30 and metrics["n_eval"] == 2000
    assert ckpt.load_checkpoint(run).step == 30


# --- exact resume ---
def _assert_same_state(a: ckpt.TrainState, b: ckpt.TrainState) -> None:
    assert a.step == b.step
    for name in ("model", "ema"):
        da, db = part_of(a, name), part_of(b, name)
        assert da.keys() == db.keys()
        for k in da:
            assert torch.equal(da[k], db[k]), f"{name}.{k} differs"
    assert a.optimizer["param_groups"] == b.optimizer["param_groups"]
    sa, sb = a.optimizer["state"], b.optimizer["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), f"optimizer state {i}.{k} differs"
    assert torch.equal(a.generator, b.generator)


def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    cfg = tiny(steps=60, checkpoint_every=25)
    whole = train(cfg, tmp_path / "whole", progress=False, evaluate_after=False)
    part = train(cfg, tmp_path / "part", progress=False, max_steps=37)
    assert ckpt.load_checkpoint(part).step == 37 and not (part / ckpt.METRICS).exists()
    train(cfg, part, resume=True, progress=False, evaluate_after=False)
    _assert_same_state(ckpt.load_checkpoint(whole), ckpt.load_checkpoint(part))


def test_crash_then_resume_from_last_periodic_checkpoint(tmp_path, monkeypatch):
    cfg = tiny(steps=60, checkpoint_every=25)
    whole = train(cfg, tmp_path / "whole", progress=False, evaluate_after=False)

    import difflab.training.diffusion as train_mod

    calls = {"n": 0}
    real = train_mod.l_simple

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 40:  # dies in step 41: the last checkpoint is step 25
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "l_simple", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "crashed", progress=False)
    monkeypatch.setattr(train_mod, "l_simple", real)
    assert ckpt.load_checkpoint(tmp_path / "crashed").step == 25
    train(cfg, tmp_path / "crashed", resume=True, progress=False, evaluate_after=False)
    _assert_same_state(ckpt.load_checkpoint(whole), ckpt.load_checkpoint(tmp_path / "crashed"))


# --- atomic checkpoints ---
@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch, where):
    run = train(tiny(steps=10), tmp_path / "run", progress=False, evaluate_after=False)
    before = ckpt.load_checkpoint(run)
    state = ckpt.TrainState(step=999, modules={
        "model": {k: v + 1 for k, v in before.modules["model"].items()},
        "ema": before.modules["ema"]}, optimizer=before.optimizer,
        generator=before.generator, torch_rng=before.torch_rng)

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, where, boom)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_checkpoint(run, state)
    monkeypatch.undo()
    _assert_same_state(before, ckpt.load_checkpoint(run))
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_or_missing_checkpoint_raises_checkpoint_error(tmp_path):
    run = train(tiny(steps=5), tmp_path / "run", progress=False, evaluate_after=False)
    data = (run / ckpt.CHECKPOINT).read_bytes()
    (run / ckpt.CHECKPOINT).write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load_checkpoint(run)
    (run / ckpt.weight_file("denoiser", ema=True)).write_bytes(b"not a safetensors file")
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        load_run(run)
    (run / ckpt.CONFIG).write_text("{")
    with pytest.raises(ckpt.CheckpointError):
        load_run(run)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        load_run(tmp_path / "nowhere")


def test_existing_run_is_not_overwritten_unless_asked(tmp_path):
    run = train(tiny(steps=5), tmp_path / "run", progress=False, evaluate_after=False)
    with pytest.raises(ckpt.RunExistsError, match="--overwrite"):
        train(tiny(steps=5), run, progress=False, evaluate_after=False)
    train(tiny(steps=7), run, overwrite=True, progress=False, evaluate_after=False)
    assert ckpt.load_checkpoint(run).step == 7
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(ckpt.RunExistsError, match="not a difflab run"):
        train(tiny(steps=5), other, overwrite=True, progress=False)
    assert (other / "precious.txt").read_text() == "keep me"


# --- config ---
def test_default_preset_is_the_default_config():
    assert load_config("default") == TrainConfig() == load_config(None)
    assert set(read_preset("default")) == set(TrainConfig().to_dict()) - {"out"}


def test_preset_file_and_overrides(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text('dataset = "moons"\nsteps = 7\nlr = 1\n')
    cfg = load_config(str(p), {"steps": 9, "seed": None})
    assert (cfg.dataset, cfg.steps, cfg.lr) == ("moons", 9, 1.0)
    assert load_config("8gaussians").dataset == "8gaussians"


@pytest.mark.parametrize("text,match", [
    ("stepz = 3\n", "'stepz'"),
    ('steps = "many"\n', "'steps'"),
    ("steps = true\n", "'steps'"),
    ("steps = 0\n", "'steps'"),
    ('dataset = "spiral"\n', "'dataset'"),
    ("eval_steps = 5000\n", "'eval_steps'"),
    ("steps = = 3\n", "malformed"),
    ("[train]\nsteps = 3\n", "malformed"),
])
def test_bad_presets_name_the_problem(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(str(p))


def test_unknown_preset_name():
    with pytest.raises(ValueError, match="unknown preset"):
        read_preset("no-such-preset")
    with pytest.raises(ValueError, match="does not exist"):
        read_preset("missing.toml")


def test_lr_schedule_warms_up_then_decays():
    cfg = tiny(steps=100, warmup=10, lr=1.0, lr_min_ratio=0.1)
    lrs = [lr_schedule(cfg)(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:-1], lrs[10:], strict=True))
    const = TrainConfig.from_dict({**TINY, "lr_schedule": "constant"})
    assert lr_schedule(const)(50) == const.lr


def test_run_dir_path_type(tmp_path):
    assert isinstance(train(tiny(steps=2), str(tmp_path / "r"), progress=False,
                            evaluate_after=False), Path)


def test_eval_spacing_auto_avoids_the_cosine_terminal_step():
    from difflab.config import spacing_for

    cos, lin = TrainConfig(schedule="cosine"), TrainConfig(schedule="linear")
    assert spacing_for(cos, "ddim") == "leading" and spacing_for(cos, "heun") == "leading"
    assert spacing_for(cos, "langevin") is None  # its σ levels are geometric, not affected
    assert spacing_for(lin, "ddim") is None  # the sampler's own default
    assert spacing_for(cos, "ddim", "trailing") == "trailing"  # an explicit choice wins
    pinned = TrainConfig(eval_spacing="linspace", schedule="cosine")
    assert spacing_for(pinned, "ddim") == "linspace"
    with pytest.raises(ValueError, match="eval_spacing"):
        TrainConfig(eval_spacing="uniform")
