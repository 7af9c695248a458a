"""Improved consistency training (Song & Dhariwal 2023): the lognormal level distribution
against its closed form, the exponential curriculum, the weight 1/(σ_{n+1} − σ_n), dropout
shared by the two branches, and bit-exact resume."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from difflab import oracle, schedules
from difflab.distill.consistency import ConsistencyModel, karras_sigmas
from difflab.distill.consistency_training import (
    ict_loss,
    ict_num_levels,
    ict_weight,
    lognormal_level_probs,
)
from difflab.distill.distances import pseudo_huber
from difflab.nn.mlp import MLPDenoiser
from difflab.training.consistency import ImprovedConsistencyTraining, improved_consistency_train
from difflab.training.loop import fit

LINEAR = schedules.linear(1000)
GAUSS = oracle.Gaussian(torch.tensor([0.5, -0.2]), torch.tensor([[0.09, 0.02], [0.02, 0.04]]))


def _net(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLPDenoiser(dim=2, hidden=32, depth=2, t_dim=16)


def test_curriculum_doubles_from_s0_to_s1_in_equal_stages():
    """eq. (8): N(k) = min(s0 2^⌊k/K'⌋, s1) + 1, K' = ⌊K/(⌊log2(s1/s0)⌋ + 1)⌋ — eight stages
    of 10, 20, …, 1280 levels (+1) spread over the run's K updates, whatever K is."""
    for K in (800, 8000, 400_000):
        stage = K // 8
        got = [ict_num_levels(k, K) for k in range(0, K, stage)]
        assert got == [11, 21, 41, 81, 161, 321, 641, 1281], (K, got)
        assert ict_num_levels(stage - 1, K) == 11 and ict_num_levels(K, K) == 1281
    assert ict_num_levels(0, 100, s0=2, s1=8) == 3 and ict_num_levels(99, 100, 2, 8) == 9
    assert ict_num_levels(5, 4) == 321  # a tiny K: stages of at least one update


def test_lognormal_levels_match_the_closed_form():
    """eq. (10): p(σ_i) ∝ Φ((log σ_{i+1} − P_mean)/P_std) − Φ((log σ_i − P_mean)/P_std);
    the draws of the objective follow it (χ² on 200k draws), and on a fine grid the mean and
    std of log σ are the lognormal's −1.1 and 2.0."""
    sig = karras_sigmas(41, 0.002, 80.0)
    normal = torch.distributions.Normal(torch.tensor(-1.1, dtype=torch.float64),
                                        torch.tensor(2.0, dtype=torch.float64))
    cdf = normal.cdf(sig.log())
    expected = (cdf[1:] - cdf[:-1]) / (cdf[-1] - cdf[0])
    torch.testing.assert_close(lognormal_level_probs(sig), expected, rtol=1e-10, atol=1e-12)
    # the draws
    data = GAUSS.sample(64, torch.Generator().manual_seed(0))
    obj = ImprovedConsistencyTraining(ConsistencyModel.from_schedule(_net(), LINEAR), data,
                                      batch=200_000, iters=8, lr=1e-3, lr_decay=False)
    n = obj.draw(0, torch.Generator().manual_seed(1))["n"]
    p = lognormal_level_probs(obj._sigmas(0))
    counts = torch.bincount(n, minlength=p.numel()).double()
    chi2 = ((counts - 200_000 * p) ** 2 / (200_000 * p)).sum().item()
    assert chi2 < p.numel() - 1 + 5 * math.sqrt(2 * (p.numel() - 1)), chi2
    fine = karras_sigmas(4000, 1e-5, 1e4)
    q = lognormal_level_probs(fine)
    mid = 0.5 * (fine[1:].log() + fine[:-1].log())
    mean = (q * mid).sum().item()
    std = (q * (mid - mean) ** 2).sum().sqrt().item()
    assert abs(mean + 1.1) < 0.01 and abs(std - 2.0) < 0.02, (mean, std)


def test_weight_is_one_over_the_level_gap_and_weights_the_loss():
    sig = karras_sigmas(11, 0.002, 80.0)
    n = torch.tensor([0, 3, 9])
    torch.testing.assert_close(ict_weight(sig, n), 1 / (sig[n + 1] - sig[n]))
    f = ConsistencyModel.from_schedule(_net(), LINEAR)
    x0 = GAUSS.sample(3, torch.Generator().manual_seed(0))
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    weighted = ict_loss(f, x0, sig, n, z)
    plain = [ict_loss(f, x0[i:i + 1], sig, n[i:i + 1], z[i:i + 1], weighted=False)
             for i in range(3)]
    w = ict_weight(sig, n)
    expected = sum(w[i].item() * plain[i].item() for i in range(3)) / 3
    assert math.isclose(weighted.item(), expected, rel_tol=1e-5)
    # the default distance is the pseudo-Huber one, c = 0.00054 √d
    a, b = torch.zeros(1, 2), torch.full((1, 2), 0.1)
    c = 0.00054 * math.sqrt(2)
    assert math.isclose(pseudo_huber(a, b).item(), math.sqrt(0.02 + c * c) - c, rel_tol=1e-5)


class DropoutNet(nn.Module):
    """F_θ = dropout(linear(x)); records the dropout mask of every call."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 64)
        self.out = nn.Linear(64, 2)
        self.drop = nn.Dropout(0.5)
        self.masks = []

    def forward(self, x, c_noise):
        h = torch.ones(x.shape[0], 64)
        m = self.drop(h)
        self.masks.append((m != 0).clone())
        return self.out(self.lin(x) * m)


def test_dropout_is_shared_by_the_two_branches():
    """Both forward passes (target at σ_n, online at σ_{n+1}) see the same dropout mask, a new
    one each update, and the global RNG is left as it was."""
    net = DropoutNet()
    f = ConsistencyModel.from_schedule(net, LINEAR).train()
    sig = karras_sigmas(11, f.sigma_min, f.sigma_max)
    x0 = GAUSS.sample(16, torch.Generator().manual_seed(0))
    z, n = torch.randn(16, 2), torch.full((16,), 4)
    state = torch.get_rng_state()
    ict_loss(f, x0, sig, n, z, dropout_seed=123).backward()
    assert torch.equal(torch.get_rng_state(), state)
    ict_loss(f, x0, sig, n, z, dropout_seed=7)
    m = net.masks
    assert len(m) == 4 and torch.equal(m[0], m[1]) and torch.equal(m[2], m[3])
    assert not torch.equal(m[0], m[2]) and 0.3 < m[0].float().mean() < 0.7
    net.masks.clear()
    ict_loss(f, x0, sig, n, z)  # no seed: independent masks
    assert not torch.equal(net.masks[0], net.masks[1])


def test_training_is_finite_and_resumes_bit_exact():
    """No EMA target: the target is θ itself; the sampled EMA trails it. 12 updates in one go
    equal 5 + 7 with a resume from the state after 5 (curriculum and draws included)."""
    data = GAUSS.sample(512, torch.Generator().manual_seed(0))

    def objective():
        return ImprovedConsistencyTraining(ConsistencyModel.from_schedule(_net(), LINEAR), data,
                                           batch=32, iters=12, lr=1e-3, lr_decay=True)

    full = objective()
    fit(full, steps=12, generator=torch.Generator().manual_seed(3))
    saved = []
    part = objective()
    fit(part, steps=12, generator=torch.Generator().manual_seed(3), max_steps=5,
        save=lambda st: saved.append(copy.deepcopy(st)))
    resumed = objective()
    fit(resumed, steps=12, generator=torch.Generator().manual_seed(3), resume=saved[-1])
    for name, mod in full.modules().items():
        for a, b in zip(mod.state_dict().values(), resumed.modules()[name].state_dict().values(),
                        strict=True):
            assert torch.equal(a, b), name
    f, ema = improved_consistency_train(ConsistencyModel.from_schedule(_net(), LINEAR), data,
                                        iters=10, batch=32, lr=1e-3,
                                        generator=torch.Generator().manual_seed(0))
    p, q = next(f.net.parameters()), next(ema.net.parameters())
    assert torch.isfinite(p).all() and not torch.equal(p, q)


def test_warm_start_from_a_diffusion_run(tmp_path, capsys):
    """``difflab train --method consistency-training --ct-init-from RUN``: F_θ and its EMA start
    as RUN's EMA ε-network, read as a v-network of the schedule (v_from_schedule), which
    sample/load read back the same way; a non-diffusion run, or one of another network, is
    refused in one line."""
    from difflab.cli import main
    from difflab.config import load_config
    from difflab.runs import checkpoint as ckpt
    from difflab.runs.load import load_run
    from difflab.runs.train import train

    tiny = ["--hidden", "16", "--depth", "1", "--t-dim", "8", "--batch", "64", "--n-train",
            "1000", "--n-eval", "50", "--eval-steps", "2", "--warmup", "1", "--no-progress"]
    diff = tmp_path / "diffusion"
    assert main(["train", *tiny, "--steps", "5", "--out", str(diff)]) == 0
    ct = tmp_path / "ct"
    cfg = load_config(None, {"hidden": 16, "depth": 1, "t_dim": 8, "batch": 64, "n_train": 1000,
                             "n_eval": 50, "eval_steps": 2, "warmup": 1, "steps": 4,
                             "method": "consistency-training", "ct_init_from": str(diff)})
    train(cfg, ct, progress=False, max_steps=0)  # the state before the first update
    init = ckpt.load_weights(diff, "ema")
    for which in ("model", "ema"):
        start = ckpt.load_weights(ct, which)
        assert init.keys() == start.keys() and all(torch.equal(init[k], start[k]) for k in init)
    assert main(["train", "--resume", str(ct), "--no-progress"]) == 0
    cfg, f, schedule = load_run(ct)
    assert cfg.ct_init_from == str(diff) and cfg.ct_variant == "improved"
    assert f.out_sign == -1.0 and f.sigma_data == 1.0  # ConsistencyModel.v_from_schedule
    capsys.readouterr()
    code = main(["train", *tiny, "--steps", "4", "--method", "consistency-training",
                 "--ct-init-from", str(ct), "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "diffusion run" in err
    # another network than the run's: refused in one line before the run directory is made
    other = [*tiny[:tiny.index("--hidden")], "--hidden", "32", *tiny[tiny.index("--hidden") + 2:]]
    code = main(["train", *other, "--steps", "4", "--method", "consistency-training",
                 "--ct-init-from", str(diff), "--out", str(tmp_path / "other")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not the one this run builds" in err, err
    assert not (tmp_path / "other").exists()


def test_the_noise_input_scale_is_saved_and_old_runs_read_theirs(tmp_path):
    """``ct_noise_scale`` s sets c_noise(σ) = s · ln σ of a fresh F_θ in training and in
    ``load_run``; a run saved before the field existed (no key in config.json) was trained with
    10 ln σ and is read so (the default); s ≤ 0 is refused in one line."""
    import json

    import pytest

    from difflab.config import load_config
    from difflab.errors import ConfigError
    from difflab.runs import checkpoint as ckpt
    from difflab.runs.load import load_run
    from difflab.runs.train import train

    small = {"hidden": 16, "depth": 1, "t_dim": 8, "batch": 64, "n_train": 1000, "n_eval": 50,
             "eval_steps": 2, "warmup": 1, "steps": 3, "method": "consistency-training"}
    assert load_config(None, small).ct_noise_scale == 10.0  # the MLP presets'
    assert load_config("mnist-base16").ct_noise_scale == 250.0  # Song et al.'s 1000 · ¼ ln σ
    run = tmp_path / "ct"
    train(load_config(None, {**small, "ct_noise_scale": 40.0}), run, progress=False)
    cfg, f, _ = load_run(run)
    sigma = torch.tensor([0.01, 0.5, 80.0], dtype=torch.float64)
    assert cfg.ct_noise_scale == 40.0
    assert torch.allclose(f.c_noise(sigma), 40.0 * sigma.log())
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    new = f(x, sigma)

    raw = json.loads((run / ckpt.CONFIG).read_text())
    del raw["config"]["objective"]["ct_noise_scale"]
    (run / ckpt.CONFIG).write_text(json.dumps(raw))
    cfg, f, _ = load_run(run)
    assert cfg.ct_noise_scale == 10.0 and torch.allclose(f.c_noise(sigma), 10.0 * sigma.log())
    assert not torch.allclose(f(x, sigma), new)  # the same weights, another noise input
    with pytest.raises(ConfigError, match="ct_noise_scale.*positive"):
        load_config(None, {**small, "ct_noise_scale": 0.0})


def test_an_image_runs_levels_are_searched_by_fd(tmp_path, capsys):
    """``eval --search-levels`` on a consistency-trained digits U-Net: FD to the train split on
    draws of seed + 1 picks the level; the eval then uses it, and reports both."""
    import json

    from difflab.cli import main

    run = tmp_path / "ct"
    assert main(["train", "--dataset", "digits", "--steps", "4", "--batch", "16",
                 "--model-channels", "8", "--num-res-blocks", "1", "--attention", "",
                 "--warmup", "1", "--method", "consistency-training", "--n-eval", "20",
                 "--eval-steps", "1", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--steps", "2", "-n", "30", "--search-levels"]) == 0
    m = json.loads(capsys.readouterr().out)
    found = m["levels_search"]
    assert found["metric"] == "fd to the train split" and found["n"] == 30
    assert found["score"] <= found["default_score"] and m["levels"] == found["levels"]
    assert m["fd"] > 0 and m["steps"] == 2



def test_the_linear_lr_schedule_decays_to_its_floor_after_the_warm_up():
    """``LRSchedule(kind="linear")``: warm-up to lr, then lr · (m + (1 − m)(1 − (k − w)/(K − w)));
    with w = 0 and m = 0 it is lr · (1 − k/K), the decay consistency training always used."""
    from difflab.training.diffusion import LRSchedule

    K = 50
    plain = LRSchedule(2e-3, K, 0, "linear", 0.0)
    assert [plain(k) for k in range(K)] == [2e-3 * (1 - k / K) for k in range(K)]
    warm = LRSchedule(2e-3, K, 10, "linear", 0.1)
    lrs = [warm(k) for k in range(K + 5)]
    assert lrs[:10] == [2e-3 * (k + 1) / 10 for k in range(10)] and lrs[10] == 2e-3
    assert all(a > b for a, b in zip(lrs[10:K], lrs[11:K + 1], strict=True))  # strictly decreasing
    assert math.isclose(lrs[K], 2e-4) and all(v == lrs[K] for v in lrs[K:])  # floor m · lr


def test_consistency_training_takes_its_own_lr_unless_told_and_the_objective_follows_it(
        tmp_path):
    """``method = consistency-training`` brings lr_schedule linear, warm-up 0 and floor 0 over a
    preset written for diffusion (digits: cosine, warm-up 100); flags and a preset of the method
    itself win; and the objective's lr is the config's schedule, whichever it is."""
    import pytest

    from difflab.config import load_config
    from difflab.training import OBJECTIVES, lr_schedule
    from difflab.training.consistency import ConsistencyTraining

    def lr_of(cfg):
        return (cfg.lr_schedule, cfg.warmup, cfg.lr_min_ratio)

    assert lr_of(load_config("digits")) == ("cosine", 100, 0.05)
    ct = {"method": "consistency-training"}
    assert lr_of(load_config("digits", ct)) == ("linear", 0, 0.0)
    assert lr_of(load_config(None, ct)) == ("linear", 0, 0.0)
    assert lr_of(load_config("digits", {**ct, "warmup": 20})) == ("linear", 20, 0.0)
    assert lr_of(load_config("digits", {**ct, "lr_schedule": "cosine"})) == ("cosine", 0, 0.0)
    own = tmp_path / "ct.toml"  # a preset of the method: its keys over the method's, flags on top
    own.write_text('method = "consistency-training"\nwarmup = 7\n')
    assert lr_of(load_config(str(own))) == ("linear", 7, 0.0)
    assert lr_of(load_config(str(own), {**ct, "lr_min_ratio": 0.2})) == ("linear", 7, 0.2)
    assert load_config(str(own)).eval_sampler == "consistency"
    based = tmp_path / "based.toml"  # over a base of another method: as --method on that base
    based.write_text('base = "digits"\nmethod = "consistency-training"\nlr_min_ratio = 0.1\n')
    assert lr_of(load_config(str(based))) == ("linear", 0, 0.1)
    assert load_config(str(based)).eval_sampler == "consistency"

    small = {**ct, "hidden": 16, "depth": 1, "t_dim": 8, "batch": 8, "steps": 40, "lr": 1e-3}
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    for extra, old in (({}, True), ({"warmup": 5, "lr_schedule": "cosine", "lr_min_ratio": 0.1},
                                    False)):
        cfg = load_config(None, {**small, **extra})
        obj = OBJECTIVES["consistency-training"](cfg, LINEAR, data, None, None)
        want = [lr_schedule(cfg)(k) for k in range(40)]
        assert [obj.lr_at(k) for k in range(40)] == want
        # the defaults keep the decay consistency training had before it read the config
        assert (want == [1e-3 * (1 - k / 40) for k in range(40)]) is old
    model = ConsistencyModel.from_schedule(_net(), LINEAR, 0.5)
    with pytest.raises(ValueError, match="lr_decay applies to a constant lr"):
        ConsistencyTraining(model, data, batch=8, iters=4, lr=lr_schedule(cfg), lr_decay=True)
