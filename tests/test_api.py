"""The public entry points of the package: ``difflab.build_model`` and ``difflab.load_run``."""

from __future__ import annotations

import torch

import difflab
from difflab.build.model import build_model
from difflab.config import TrainConfig, load_config
from difflab.runs.train import train


def test_build_model_of_a_preset_is_its_seeded_network():
    a, b = difflab.build_model("digits"), build_model(load_config("digits"))
    assert type(a).__name__ == "UNet"
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    other = difflab.build_model(load_config("digits", {"seed": 1}))
    assert not torch.equal(next(iter(other.state_dict().values())),
                           next(iter(sa.values())))  # the seed decides the weights
    assert type(difflab.build_model()).__name__ == "MLPDenoiser"  # the default preset


def test_load_run_gives_the_ema_model_ready_to_sample(tmp_path):
    cfg = TrainConfig.from_dict(dict(hidden=16, depth=1, t_dim=16, n_train=500, steps=3,
                                     batch=32, threads=1, device="cpu"))
    run = train(cfg, tmp_path / "run", progress=False, evaluate_after=False)
    got, model, schedule = difflab.load_run(run, device="cpu")
    assert got == cfg and schedule.T == cfg.T and not model.training
    x = difflab.samplers.ddim(model, schedule, torch.randn(10, 2), steps=5)
    assert x.shape == (10, 2) and torch.isfinite(x).all()
