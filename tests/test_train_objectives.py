"""Training objectives from the config: learned variance (Weng eq. 23), L_hybrid, importance
sampling of t — their validation, their exact resume, the loss log, and runs saved before them."""

from __future__ import annotations

import json

import pytest
import torch

from difflab import schedules
from difflab.build.model import build_model
from difflab.config import TrainConfig
from difflab.parameterization import LearnedVariance
from difflab.runs import checkpoint as ckpt
from difflab.runs.draw import draw
from difflab.runs.load import load_run, read_run_config
from difflab.runs.train import train
from difflab.training.losslog import read_loss_csv
from difflab.vlb import ImportanceSampler
from helpers import part_of

TINY = {"hidden": 32, "depth": 1, "t_dim": 16, "batch": 128, "n_train": 4000, "warmup": 10,
        "n_eval": 500, "eval_steps": 10, "threads": 1, "log_every": 5}
# T = 50: the importance sampler needs 10 values of every L_t before it leaves uniform sampling,
# which 128-sample batches reach within the first few dozen steps
IMPORTANCE = {"variance": "learned", "loss": "hybrid", "t_sampling": "importance", "T": 50}


def tiny(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **kw})


# --- validation ---
@pytest.mark.parametrize("values,match", [
    ({"t_sampling": "importance"}, "'t_sampling' = 'importance' needs config key 'loss'"),
    ({"loss": "hybrid"}, "'loss' = 'hybrid' needs config key 'variance' = 'learned'"),
    ({"loss": "hybrid", "variance": "beta"}, "'loss' = 'hybrid' needs"),
    ({"variance": "learned"}, "'variance' = 'learned' needs config key 'loss' = 'hybrid'"),
    ({"variance": "learned", "t_sampling": "importance"}, "'t_sampling'"),
    ({"loss": "l_vlb"}, "'loss' must be one of simple, hybrid, vlb"),
    ({"variance": "fixed"}, "'variance' must be one of"),
    ({"t_sampling": "loss-aware"}, "'t_sampling' must be one of"),
    ({"variance": "learned", "loss": "hybrid", "hybrid_lambda": 0.0}, "'hybrid_lambda'"),
    ({"variance": "learned", "loss": "hybrid", "hybrid_lambda": float("nan")}, "'hybrid_lambda'"),
    ({"log_every": 0}, "'log_every'"),
])
def test_nonsensical_objectives_are_rejected_by_name(values, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(values)


def test_the_sensible_combinations_are_accepted():
    for values in ({}, {"variance": "beta"}, {"variance": "learned", "loss": "hybrid"},
                   {**IMPORTANCE, "hybrid_lambda": 0.01}):
        TrainConfig.from_dict(values)


# --- learned variance ---
@pytest.mark.parametrize("kw,shape", [({}, (5, 2)),
                                      ({"dataset": "digits", "model_channels": 8,
                                        "num_res_blocks": 1, "attention": ""}, (5, 1, 8, 8))])
def test_learned_variance_models_return_eps_and_v(kw, shape):
    model = build_model(tiny(variance="learned", loss="hybrid", **kw))
    assert isinstance(model, LearnedVariance)
    eps, v = model(torch.randn(shape), torch.tensor([1, 2, 3, 500, 1000]))
    assert eps.shape == v.shape == shape
    assert torch.equal(eps, torch.zeros(shape)) and torch.equal(v, torch.full(shape, 0.5))
    plain = build_model(tiny(**kw))
    assert plain(torch.randn(shape), torch.tensor([1, 2, 3, 4, 5])).shape == shape


def test_ddpm_on_a_learned_run_samples_with_the_learned_sigma():
    """v = 1 everywhere makes Σ_θ = β_t (eq. 23): the same draw as an ε-model with σ² = β_t."""
    s = schedules.linear(100)

    def eps(x_t, t):
        return 0.1 * x_t

    def learned(x_t, t):
        return eps(x_t, t), torch.ones_like(x_t)

    kw = dict(sampler="ddpm", steps=20, seed=3)
    a = draw(learned, s, (64, 2), variance="learned", **kw)[0]
    b = draw(eps, s, (64, 2), variance="beta", **kw)[0]
    c = draw(eps, s, (64, 2), variance="beta_tilde", **kw)[0]
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(b, c)
    with pytest.raises(ValueError, match="learned"):
        draw(eps, s, (4, 2), variance="learned", **kw)


def test_hybrid_training_moves_the_variance_head(tmp_path):
    cfg = tiny(variance="learned", loss="hybrid", steps=30, hybrid_lambda=0.01)
    run = train(cfg, tmp_path / "run", progress=False, evaluate_after=False)
    _, model, _ = load_run(run, which="model")
    _, v = model(torch.randn(256, 2), torch.randint(1, 1001, (256,)))
    assert (v - 0.5).abs().max() > 1e-3  # v starts at exactly 0.5: L_vlb's gradient reached it


@pytest.mark.parametrize("T,history,batch", [(10, 3, 50), (7, 4, 3), (1000, 10, 1024), (5, 2, 1)])
def test_importance_sampler_batched_update_equals_writing_one_by_one(T, history, batch):
    """The vectorised update keeps exactly the ring buffers of sequential writes, also when a
    batch holds a step more often than ``history`` (only its last values survive)."""
    fast, g = ImportanceSampler(T, history), torch.Generator().manual_seed(T)
    values = torch.zeros(T, history, dtype=torch.float64)
    nxt, count = [0] * T, [0] * T
    for _ in range(5):
        t = torch.randint(1, T + 1, (batch,), generator=g)
        losses = torch.rand(batch, generator=g)
        fast.update(t, losses)
        for ti, li in zip(t.tolist(), losses.double().tolist(), strict=True):
            values[ti - 1, nxt[ti - 1]] = li
            nxt[ti - 1] = (nxt[ti - 1] + 1) % history
            count[ti - 1] = min(count[ti - 1] + 1, history)
    state = fast.state_dict()
    assert torch.equal(state["values"], values)
    assert state["next"].tolist() == nxt and state["count"].tolist() == count


# --- exact resume with importance sampling, and the loss log ---
def _assert_same(a: ckpt.TrainState, b: ckpt.TrainState) -> None:
    assert a.step == b.step and torch.equal(a.generator, b.generator)
    for name in ("model", "ema", "t_sampler", "log"):
        da, db = part_of(a, name), part_of(b, name)
        assert da.keys() == db.keys(), name
        for k in da:
            assert torch.equal(da[k], db[k]), f"{name}.{k} differs"


def test_importance_sampled_run_stopped_and_resumed_equals_uninterrupted(tmp_path):
    cfg = tiny(steps=60, checkpoint_every=25, **IMPORTANCE)
    whole = train(cfg, tmp_path / "whole", progress=False, evaluate_after=False)
    part = train(cfg, tmp_path / "part", progress=False, max_steps=37)
    state = ckpt.load_checkpoint(part)
    warm = bool((part_of(state, "t_sampler")["count"] == 10).all())  # warm by then
    assert state.step == 37 and warm
    train(cfg, part, resume=True, progress=False, evaluate_after=False)
    _assert_same(ckpt.load_checkpoint(whole), ckpt.load_checkpoint(part))
    assert (whole / ckpt.LOSS_CSV).read_bytes() == (part / ckpt.LOSS_CSV).read_bytes()
    rows = read_loss_csv(part / ckpt.LOSS_CSV)
    assert [s for s, _ in rows] == list(range(5, 61, 5))  # one row per log_every steps
    assert (part / ckpt.LOSS_PNG).read_bytes()[:4] == b"\x89PNG"


def test_crash_in_a_hybrid_step_then_resume_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = tiny(steps=40, checkpoint_every=15, **IMPORTANCE)
    whole = train(cfg, tmp_path / "whole", progress=False, evaluate_after=False)

    import difflab.training.diffusion as train_mod

    calls, real = {"n": 0}, train_mod.l_hybrid

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 33:  # dies in step 34, after the sampler recorded its L_t: ckpt at 30
            real(*args, **kwargs)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "l_hybrid", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "crashed", progress=False)
    monkeypatch.setattr(train_mod, "l_hybrid", real)
    assert ckpt.load_checkpoint(tmp_path / "crashed").step == 30
    assert [s for s, _ in read_loss_csv(tmp_path / "crashed" / ckpt.LOSS_CSV)][-1] == 30
    train(cfg, tmp_path / "crashed", resume=True, progress=False, evaluate_after=False)
    _assert_same(ckpt.load_checkpoint(whole), ckpt.load_checkpoint(tmp_path / "crashed"))


# --- runs saved before these fields existed ---
NEW_KEYS = ("variance", "loss", "hybrid_lambda", "t_sampling", "log_every")


def test_a_run_saved_before_the_new_fields_loads_and_resumes(tmp_path):
    run = train(tiny(steps=20, checkpoint_every=20), tmp_path / "old", progress=False,
                evaluate_after=False)
    # as difflab-run/1 wrote it: a flat config.json, ema.safetensors and model.safetensors
    raw = read_run_config(run).to_dict()
    (run / ckpt.CONFIG).write_text(json.dumps({k: v for k, v in raw.items()
                                               if k not in NEW_KEYS}))
    (run / ckpt.weight_file("denoiser", ema=True)).rename(run / ckpt.EMA)
    (run / ckpt.weight_file("denoiser", ema=False)).rename(run / ckpt.MODEL)
    state = ckpt.load_checkpoint(run)
    state.extra, state.log = {}, {}
    ckpt.save_checkpoint(run, state)  # a checkpoint without the sampler and the log
    assert ckpt.load_checkpoint(run).log == {}
    cfg, model, _ = load_run(run)
    assert (cfg.variance, cfg.loss, cfg.t_sampling, cfg.log_every) == (
        "beta_tilde", "simple", "uniform", 10)
    assert model(torch.randn(3, 2), torch.tensor([1, 2, 3])).shape == (3, 2)
    train(TrainConfig.from_dict({**cfg.to_dict(), "steps": 40}), run, resume=True,
          progress=False, evaluate_after=False)
    assert [s for s, _ in read_loss_csv(run / ckpt.LOSS_CSV)] == [30, 40]  # logged from here


def test_resuming_an_importance_run_without_its_sampler_state_fails_clearly(tmp_path):
    cfg = tiny(steps=20, checkpoint_every=10, **IMPORTANCE)
    run = train(cfg, tmp_path / "run", progress=False, max_steps=10)
    state = ckpt.load_checkpoint(run)
    state.extra = {}
    ckpt.save_checkpoint(run, state)
    with pytest.raises(ckpt.CheckpointError, match="importance sampler"):
        train(cfg, run, resume=True, progress=False)


# --- v- and x0-prediction (Salimans & Ho 2022) ---
@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_v_and_x0_prediction_runs_are_sampled_through_their_eps_wrapper(tmp_path, prediction):
    """A diffusion run with ``prediction`` v or x0 is sampled (by load_run and by its own
    evaluation, both through runs.load.sampling_model) as the ε-model ε̂ = √(1−ᾱ) x_t + √ᾱ v̂
    (v) or (x_t − √ᾱ x̂_0)/√(1−ᾱ) (x0) of its network, not as if its output were ε̂."""
    from difflab.parameterization import eps_from_v, eps_from_x0

    cfg = tiny(prediction=prediction, steps=20)
    run = train(cfg, tmp_path / "run", progress=False, evaluate_after=False)
    cfg2, model, _ = load_run(run)
    assert cfg2.prediction == prediction
    net = build_model(cfg2)
    net.load_state_dict(ckpt.load_weights(run, "ema"))
    x, t = torch.randn(64, 2), torch.randint(1, 1001, (64,))
    ab = schedules.linear(1000).alpha_bar_at(t)[:, None].float()
    convert = eps_from_v if prediction == "v" else eps_from_x0
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), convert(x, net(x, t), ab), rtol=1e-5, atol=1e-5)


def test_adam_beta2_reaches_the_optimizer_of_every_objective(tmp_path, capsys):
    """``adam_beta2`` (default 0.999, AdamW's own) is the β2 of the optimizer of any objective
    the config builds; a run saved before the field existed reads 0.999, what it used; a β2
    outside (0, 1) is refused in one line by the command line."""
    from difflab.build.model import build_schedule
    from difflab.cli import main
    from difflab.config import load_config
    from difflab.training import OBJECTIVES

    small = {"hidden": 16, "depth": 1, "t_dim": 8, "batch": 64, "n_train": 1000, "n_eval": 50,
             "eval_steps": 2, "warmup": 1, "steps": 3}
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    for method in ("diffusion", "consistency-training"):
        for given in (None, 0.95):
            values = {**small, "method": method} | ({} if given is None else
                                                    {"adam_beta2": given})
            cfg = load_config(None, values)
            obj = OBJECTIVES[method](cfg, build_schedule(cfg), data, None, None)
            want = 0.999 if given is None else given
            assert obj.optimizer().param_groups[0]["betas"] == (0.9, want), (method, given)

    run = tmp_path / "run"
    train(load_config(None, {**small, "adam_beta2": 0.95}), run, progress=False,
          evaluate_after=False)
    assert read_run_config(run).adam_beta2 == 0.95
    raw = json.loads((run / ckpt.CONFIG).read_text())
    del raw["config"]["optimiser"]["adam_beta2"]
    (run / ckpt.CONFIG).write_text(json.dumps(raw))
    assert read_run_config(run).adam_beta2 == 0.999
    for bad in ("1", "0", "-0.5", "nan"):
        capsys.readouterr()
        code = main(["train", "--steps", "2", "--adam-beta2", bad, "--out",
                     str(tmp_path / f"bad{bad}")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "--adam-beta2" in err, err
