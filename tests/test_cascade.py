"""Cascaded diffusion with noise-conditioning augmentation (Ho et al. 2021; Saharia et al. 2022):
the augmentation is q(z_s | z_0) of the schedule, s = 0 is the clean z, truncation returns the
base chain's x_s, a cascade ends at the top stage's size, the augmentation parameters travel
with the run, the U-Net's defaults are untouched, an SR run resumes exactly, and bad cascades
are refused in one line."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from difflab import samplers, schedules
from difflab.cli import main
from difflab.config import TrainConfig
from difflab.nn.unet import UNet, UNetConfig
from difflab.oracle import ExactDenoiser, ring_mixture
from difflab.pipelines.cascade import (
    Stage,
    cascade,
    condition,
    downsample,
    gaussian_blur,
    noise_augment,
    sample_until,
    truncated_grid,
)
from difflab.runs.cascade import load_stage, sample_cascade
from difflab.runs.load import read_run_config
from difflab.runs.train import train
from difflab.samplers.timesteps import resolve
from difflab.training.super_resolution import SuperResolutionObjective

TINY = dict(dataset="mnist", model="unet", model_channels=8, channel_mult="1,2", attention="",
            mid_attention=False, batch=4, steps=4, warmup=1, eval_sampler="ddim", eval_steps=2,
            n_eval=4, checkpoint_every=1000, threads=1)


# --- the augmentation -------------------------------------------------------------------------
def test_noise_augmentation_is_the_forward_process_at_level_s():
    s = schedules.linear(1000)
    z = torch.rand(6, 1, 4, 4) * 2 - 1
    level = torch.tensor([0, 1, 10, 100, 500, 1000])
    noise = torch.randn_like(z)
    out = noise_augment(s, z, level, noise)
    assert torch.equal(out[0], z[0])  # s = 0: the clean image
    assert torch.allclose(out[1:], s.q_sample(z[1:], level[1:], noise[1:]), atol=0, rtol=0)
    # Monte Carlo: mean √ᾱ_s z and variance 1 − ᾱ_s
    g = torch.Generator().manual_seed(0)
    m = 200_000
    zz = torch.full((m, 1), 0.7)
    lv = torch.full((m,), 300)
    x = noise_augment(s, zz, lv, torch.randn(m, 1, generator=g))
    ab = s.alpha_bars[299].item()
    assert abs(x.mean().item() - ab**0.5 * 0.7) < 4 * (1 / m) ** 0.5
    assert abs(x.var().item() - (1 - ab)) < 0.01


def sr_objective(augment: str, aug_max: int = 100, **kw):
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=1, model_channels=8, channel_mult=(1, 2),
                          attention_resolutions=(), mid_attention=False, groups=8,
                          low_res_channels=1, aug_embedding=augment in ("gaussian", "truncated")))
    from difflab.training.diffusion import LRSchedule

    data = torch.rand(10, 1, 8, 8) * 2 - 1
    return SuperResolutionObjective(net, schedules.linear(1000), data, low_res=4,
                                    augment=augment, aug_max=aug_max, batch=5,
                                    lr=LRSchedule(1e-3, 10), ema_decay=0.9, **kw)


class Spy(torch.nn.Module):
    """Records the keywords a network is called with; predicts ε̂ = 0."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x_t, t, **cond):
        self.calls.append(cond)
        return torch.zeros_like(x_t)


def test_training_draws_corrupt_z_by_q_of_the_schedule_and_s0_is_clean():
    obj = sr_objective("gaussian", aug_max=1)
    g = torch.Generator().manual_seed(1)
    batch = obj.draw(0, g)
    while batch["aug_level"].all() or not batch["aug_level"].any():  # both s = 0 and s > 0
        batch = obj.draw(0, g)
    z = downsample(batch["x0"], 4)
    assert torch.equal(batch["low_res"], z)  # area pooling of x_0
    spy = Spy()
    obj.loss(spy, batch)
    seen, s = spy.calls[0], batch["aug_level"]
    assert torch.equal(seen["aug_level"], s)
    want = noise_augment(obj.schedule, z, s, batch["aug_noise"])
    assert torch.equal(seen["low_res"], want)
    clean = s == 0
    assert clean.any() and torch.equal(seen["low_res"][clean], z[clean])  # s = 0: clean z
    for k in torch.nonzero(~clean).flatten().tolist():  # s > 0: eq. (3) at level s
        one = obj.schedule.q_sample(z[k:k + 1], s[k:k + 1], batch["aug_noise"][k:k + 1])
        assert torch.allclose(seen["low_res"][k:k + 1], one)
    none = sr_objective("none")
    b = none.draw(0, torch.Generator().manual_seed(1))
    spy = Spy()
    none.loss(spy, b)
    assert torch.equal(spy.calls[0]["low_res"], downsample(b["x0"], 4))
    assert "aug_level" not in spy.calls[0]


def test_blur_is_a_normalised_gaussian_and_zero_sigma_is_identity():
    z = torch.rand(3, 2, 9, 9)
    out = gaussian_blur(z, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(out[0], z[0])
    assert torch.allclose(out.mean(dim=(2, 3))[1:], z.mean(dim=(2, 3))[1:], atol=0.05)
    # interior pixels: the separable kernel equals the 2-D Gaussian
    k = torch.arange(-3, 4, dtype=torch.float64)
    w = torch.exp(-0.5 * (k / 1.0) ** 2)
    w = w / w.sum()
    w2 = (w[:, None] * w[None, :]).float()
    direct = torch.nn.functional.conv2d(z[2:3, :1], w2[None, None])  # (1, 1, 3, 3) interior
    assert torch.allclose(out[2, 0, 3:6, 3:6], direct[0, 0], atol=1e-5)


def test_sampling_condition_uses_the_level_and_s0_is_clean():
    sched = schedules.linear(1000)
    z = torch.rand(4, 1, 4, 4) * 2 - 1
    stage = Stage(model=None, sample=None, schedule=sched, shape=(1, 8, 8), augment="gaussian",
                  aug_level=0)
    extra = condition(stage, z, torch.Generator().manual_seed(0))
    assert torch.equal(extra["low_res"], z) and extra["aug_level"].tolist() == [0] * 4
    stage.aug_level = 200
    g = torch.Generator().manual_seed(0)
    extra = condition(stage, z, g)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(extra["low_res"], sched.q_sample(z, torch.full((4,), 200), noise))
    assert extra["aug_level"].tolist() == [200] * 4


# --- truncation -------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_truncated_sampling_returns_the_base_chains_x_s(sampler):
    sched = schedules.linear(1000)
    model = ExactDenoiser(ring_mixture(k=4, radius=2.0, std=0.2), sched)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    fn = samplers.SAMPLERS[sampler]
    s = 137
    got = sample_until(fn, model, sched, x_T, steps=20, s=s, spacing="linspace",
                       generator=torch.Generator().manual_seed(5))
    grid = truncated_grid(1000, 20, "linspace", s)
    assert grid[-1] == s and all(a > b for a, b in zip(grid, grid[1:], strict=False))
    assert grid[:-1] == [t for t in resolve(1000, 20).tolist() if t > s]
    seen = {}

    def record(i, t, x):  # the full chain on the same grid, x after each update
        seen[i] = x.clone()

    fn(model, sched, x_T, steps=grid, generator=torch.Generator().manual_seed(5),
       callback=record)
    assert torch.equal(got, seen[len(grid) - 2])  # the update that lands on s
    whole = sample_until(fn, model, sched, x_T, steps=20, s=0,
                         generator=torch.Generator().manual_seed(5))
    assert torch.equal(whole, fn(model, sched, x_T, steps=20,
                                 generator=torch.Generator().manual_seed(5)))


def test_pipeline_chains_any_number_of_stages_and_hands_over_x_s_when_truncated():
    sched = schedules.linear(100)
    seen = []

    def make(shape, augment="none", level=0):
        def model_for(extra):
            seen.append({k: tuple(v.shape) for k, v in extra.items()})
            return lambda x, t: torch.zeros_like(x)

        def sample(m, x_T, s, g):
            return torch.full_like(x_T, float(s) + 0.5) if s else x_T * 0 + 0.25

        return Stage(model=model_for, sample=sample, schedule=sched, shape=shape,
                     augment=augment, aug_level=level)

    stages = [make((1, 4, 4)), make((1, 8, 8), "truncated", 7), make((1, 16, 16), "gaussian", 0)]
    outs = cascade(stages, 3, torch.Generator().manual_seed(0))
    assert [tuple(o.shape) for o in outs] == [(3, 1, 4, 4), (3, 1, 8, 8), (3, 1, 16, 16)]
    assert torch.all(outs[0] == 7.5)  # stopped at s = 7, unclipped
    assert seen[1] == {"low_res": (3, 1, 4, 4), "aug_level": (3,)}
    assert seen[2] == {"low_res": (3, 1, 8, 8), "aug_level": (3,)}


# --- the U-Net --------------------------------------------------------------------------------
def test_unet_defaults_are_untouched_and_sr_options_add_inputs():
    kw = dict(in_channels=1, model_channels=8, channel_mult=(1, 2), groups=8)
    torch.manual_seed(0)
    old = UNet(UNetConfig(**kw))
    torch.manual_seed(0)
    same = UNet(UNetConfig(**kw, low_res_channels=0, aug_embedding=False))
    assert old.state_dict().keys() == same.state_dict().keys()
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in old.state_dict().items())
    assert not any("aug_embed" in k for k in old.state_dict())
    with pytest.raises(ValueError, match="low_res"):
        old(torch.zeros(1, 1, 8, 8), torch.ones(1, dtype=torch.long),
            low_res=torch.zeros(1, 1, 4, 4))
    sr = UNet(UNetConfig(**kw, low_res_channels=1, aug_embedding=True))
    assert sr.inp.weight.shape[1] == 2 and "aug_embed.mlp.0.weight" in sr.state_dict()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 9])
    with torch.no_grad():  # the zero-initialised layers made random: every input counts
        for p in sr.parameters():
            if not p.any():
                p.normal_(0, 0.3)
    z = torch.randn(2, 1, 4, 4)
    a = sr(x, t, low_res=z, aug_level=torch.tensor([0, 0]))
    assert torch.equal(a, sr(x, t, low_res=z))  # aug_level None is s = 0
    assert not torch.equal(a, sr(x, t, low_res=z, aug_level=torch.tensor([50, 50])))
    with pytest.raises(ValueError, match="needs its low-resolution image"):
        sr(x, t)
    from difflab.build.model import build_model

    assert not hasattr(build_model(TrainConfig(**TINY)), "aug_embed")


# --- runs: train, resume, cascade, stored parameters, CLI errors -----------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    base = train(TrainConfig(image_size=16, **TINY), root / "base", progress=False,
                 evaluate_after=False)
    sr = train(TrainConfig(image_size=32, sr_low_res=16, sr_augment="gaussian", sr_aug_max=50,
                           sr_aug_level=17, **TINY), root / "sr", progress=False)
    return root, base, sr


def test_a_cascade_produces_images_of_the_top_stage(runs):
    root, base, sr = runs
    outs = sample_cascade([base, sr], 3, seed=0)
    assert tuple(outs[0].shape) == (3, 1, 16, 16) and tuple(outs[-1].shape) == (3, 1, 32, 32)
    assert outs[-1].abs().max() <= 1
    again = sample_cascade([base, sr], 3, seed=0)
    assert torch.equal(outs[-1], again[-1])
    metrics = (root / "sr" / "metrics.json").read_text()  # evaluated after training
    assert '"psnr_real"' in metrics and '"fd_real"' in metrics


def test_augmentation_parameters_are_stored_and_used_at_sampling(runs):
    root, base, sr = runs
    cfg = read_run_config(sr)
    assert (cfg.sr_augment, cfg.sr_aug_max, cfg.sr_aug_level) == ("gaussian", 50, 17)
    _, stage = load_stage(sr, 2)
    assert (stage.augment, stage.aug_level) == ("gaussian", 17)
    extra = condition(stage, torch.zeros(2, 1, 16, 16), torch.Generator().manual_seed(0))
    assert extra["aug_level"].tolist() == [17, 17]
    spy = []
    inner = stage.model

    def model_for(e):
        spy.append(e)
        return inner(e)

    stage.model = model_for
    _, b = load_stage(base, 2)
    cascade([b, stage], 2, torch.Generator().manual_seed(0))
    assert spy[0]["aug_level"].tolist() == [17, 17]
    assert load_stage(sr, 2, aug_level=3)[1].aug_level == 3  # --aug-level overrides


def test_super_resolution_run_resumes_bit_exactly(tmp_path):
    from difflab.runs import checkpoint as ckpt

    cfg = TrainConfig(image_size=32, sr_low_res=16, sr_augment="gaussian", sr_aug_max=100,
                      **{**TINY, "steps": 4})
    full = train(cfg, tmp_path / "full", progress=False, evaluate_after=False)
    part = train(cfg, tmp_path / "part", progress=False, max_steps=2)
    train(cfg, part, resume=True, progress=False, evaluate_after=False)
    a, b = ckpt.load_weights(full, "ema"), ckpt.load_weights(part, "ema")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    blur = dataclasses.replace(cfg, sr_augment="blur", sr_aug_max=0)
    obj = sr_objective("blur")
    d1 = obj.draw(0, torch.Generator().manual_seed(3))
    d2 = obj.draw(0, torch.Generator().manual_seed(3))
    assert torch.equal(d1["blur_sigma"], d2["blur_sigma"]) and blur.sr_augment == "blur"
    assert ((d1["blur_sigma"] >= 0.4) & (d1["blur_sigma"] <= 0.6)).all()


def test_bad_cascades_fail_in_one_line(runs, capsys, tmp_path):
    root, base, sr = runs
    out = str(tmp_path / "x.png")
    cases = [
        (["sample", "--cascade", f"{base},{root / 'missing'}", "--out", out],
         "not a run directory"),
        (["sample", "--cascade", f"{base},{sr},{sr}", "--out", out], "16×16"),
        (["sample", "--cascade", f"{sr},{base}", "--out", out], "a cascade starts from a base"),
        (["sample", "--cascade", f"{base},{base}", "--out", out], "not a super-resolution run"),
        (["sample", str(sr), "--out", out], "sample it in a cascade"),
        (["sample", "--cascade", f"{base},{sr}", "--stage-steps", "2", "--out", out],
         "needs 2 comma-separated values"),
        (["sample", "--cascade", f"{base},{sr}", "--stage-sampler", "unipc,ddim", "--spacing",
          "blend", "--out", out], f"not a grid of sampler ddim (of {sr})"),
        (["distill", str(sr), "--method", "progressive", "--rounds", "1", "--out",
          str(tmp_path / "pd")], "super-resolution run"),
        (["train-controlnet", str(sr), "--out", str(tmp_path / "cn")], "super-resolution run"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, (argv, err)
    assert main(["sample", "--cascade", f"{base},{sr}", "-n", "2", "--aug-level", "5",
                 "--stage-steps", "2,-", "--out", out]) == 0


def test_eval_of_a_super_resolution_run_on_real_and_base_low_res(runs, capsys):
    import json

    root, base, sr = runs
    assert main(["eval", str(sr), "-n", "3", "--steps", "2", "--base", str(base),
                 "--aug-level", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_eval"] == 3 and out["aug_level"] == 5
    assert out["sampler"] == "ddim" and out["steps"] == 2  # the settings it sampled with
    for key in ("fd_real", "psnr_real", "psnr_bilinear", "fd_base", "fd_gap", "fd_base_stage"):
        assert isinstance(out[key], float), key
    assert main(["eval", str(base), "--base", str(base)]) == 2
    assert "super-resolution run only" in capsys.readouterr().err


def test_a_dit_super_resolves_too(tmp_path):
    """The DiT as a super-resolution stage: z upsampled and concatenated before the patch
    embedding, s embedded like t; its default (no z) is untouched; a run trains and samples."""
    from difflab.nn.dit import DiT, DiTConfig

    kw = dict(in_channels=1, input_size=16, patch_size=2, depth=2, width=32, heads=2)
    torch.manual_seed(0)
    plain = DiT(DiTConfig(**kw))
    assert plain.x_embedder.in_channels == 1 and not hasattr(plain, "aug_embedder")
    sr = DiT(DiTConfig(**kw, low_res_channels=1, aug_embedding=True))
    with torch.no_grad():
        for p in sr.parameters():
            p.normal_(0.0, 0.1)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([5, 50])
    z = torch.randn(2, 1, 8, 8)
    a = sr(x, t, low_res=z, aug_level=torch.tensor([0, 0]))
    assert a.shape == x.shape
    assert not torch.allclose(a, sr(x, t, low_res=z, aug_level=torch.tensor([100, 100])))
    assert not torch.allclose(a, sr(x, t, low_res=-z, aug_level=torch.tensor([0, 0])))
    torch.testing.assert_close(a, sr(x, t, low_res=z))  # s omitted = s = 0
    with pytest.raises(ValueError, match="needs its low-resolution image"):
        sr(x, t)
    cfg = TrainConfig(image_size=32, sr_low_res=16, sr_augment="gaussian", sr_aug_max=50,
                      model="dit", dit_size="T", patch_size=4, **{k: v for k, v in TINY.items()
                                                                  if k not in ("model",)})
    run_dir = train(cfg, tmp_path / "sr-dit", progress=False, evaluate_after=False)
    assert (run_dir / "denoiser.ema.safetensors").is_file()
