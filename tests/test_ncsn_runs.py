"""Score-matching runs (method dsm / ssm) through the one trainer, the run directory and the CLI:
the ladder measured from the data and kept in config.json, exact resume, sampling with the
langevin sampler only, and one-line errors for what does not fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difflab.config import TrainConfig, load_config
from difflab.ncsn import DEFAULT_LEVELS, ScoreModel, max_pairwise_distance
from difflab.runs import checkpoint as ckpt
from difflab.runs.load import load_run, read_run_config
from difflab.runs.train import train
from helpers import one_error_line, run_cli

TINY = {"hidden": 32, "depth": 1, "t_dim": 16, "batch": 64, "n_train": 1000, "warmup": 5,
        "n_eval": 200, "eval_steps": 4, "threads": 1, "log_every": 5, "eval_sampler": "langevin"}


@pytest.mark.parametrize("method", ["dsm", "ssm"])
def test_a_score_run_resolves_its_ladder_and_resumes_exactly(tmp_path, method):
    cfg = TrainConfig.from_dict({**TINY, "method": method, "steps": 30, "checkpoint_every": 10})
    whole = train(cfg, tmp_path / "whole", progress=False, evaluate_after=False)
    part = train(cfg, tmp_path / "part", progress=False, max_steps=17)
    train(read_run_config(part), part, resume=True, progress=False, evaluate_after=False)
    a, b = ckpt.load_checkpoint(whole), ckpt.load_checkpoint(part)
    for name in ("model", "ema"):
        for k, v in a.modules[name].items():
            assert torch.equal(v, b.modules[name][k]), f"{name}.{k}"
    saved = read_run_config(whole)
    from difflab.build.data import training_set

    x = training_set(cfg)[0]
    assert saved.sigma_max == pytest.approx(max_pairwise_distance(x, seed=cfg.seed))
    assert saved.sigma_levels == DEFAULT_LEVELS  # 2-D: technique 2 has no solution
    _, model, _ = load_run(whole)
    assert isinstance(model, ScoreModel) and model.levels == DEFAULT_LEVELS
    assert model.sigmas[0] == pytest.approx(saved.sigma_max)


def test_train_objective_dsm_then_sample_on_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "eval_sampler"]
    code, out, err = run_cli(capsys, "train", "--objective", "dsm", "--steps", "20", *flags,
                             "--out", run)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(run)
    assert "langevin 4 of 10 levels: SWD" in out  # eval_steps = 4 of the ladder's L = 10
    assert read_run_config(run).eval_sampler == "langevin"  # the score methods' own default
    code, out, err = run_cli(capsys, "sample", run, "--out", tmp_path / "x.npy", "-n", "50")
    assert code == 0, err
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (50, 2) and np.isfinite(x).all()
    code, _, err = run_cli(capsys, "sample", run, "--out", tmp_path / "y.npy", "--sampler", "ddim")
    assert one_error_line(code, err) and "langevin" in err
    code, _, err = run_cli(capsys, "sample", run, "--out", tmp_path / "y.npy", "--guidance", "2")
    assert one_error_line(code, err) and "score network" in err
    code, _, err = run_cli(capsys, "distill", run, "--method", "progressive", "--rounds", "1",
                           "--out", tmp_path / "d")
    assert one_error_line(code, err) and "score network" in err


@pytest.mark.parametrize("values,match", [
    ({"method": "dsm", "eval_sampler": "heun"}, "'eval_sampler'"),
    ({"method": "ssm", "eval_sampler": "langevin", "loss": "vlb"}, "'loss'"),
    ({"method": "dsm", "eval_sampler": "langevin", "dataset": "digits", "cond": "class"},
     "'cond'"),
    ({"sigma_min": 0.0}, "'sigma_min'"),
    ({"sigma_max": 0.005}, "'sigma_max'"),
    ({"sigma_levels": 1}, "'sigma_levels'"),
])
def test_what_a_score_run_cannot_be_is_refused_by_name(values, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(values)


def test_the_score_methods_evaluate_with_langevin_by_default():
    assert load_config(None, {"method": "ssm"}).eval_sampler == "langevin"
