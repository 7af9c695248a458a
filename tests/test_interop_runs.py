"""Runs to diffusers and back: ``difflab export RUN --format diffusers OUT`` and
``difflab.load_diffusers(DIR)``. diffusers' own pipelines, given the same noise, must draw
difflab's samples; a loaded diffusers model must sample, guide and give likelihoods like the
difflab run it came from; what cannot travel exactly is refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import difflab
from difflab.errors import InteropError
from difflab.guidance import Bound, ClassifierFree
from difflab.likelihood import ode_bpd
from helpers import one_error_line, run_cli
from interop_helpers import make_run, randomise

diffusers = pytest.importorskip("diffusers")


def pipeline_images(pipe, batch: int, seed: int, steps: int) -> torch.Tensor:
    """A diffusers pipeline's images (B, C, H, W) in [0, 1] from a CPU generator of ``seed``."""
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    return pipe(batch_size=batch, generator=g, num_inference_steps=steps,
                output_type="pt").images


def as_images(x: torch.Tensor) -> torch.Tensor:
    """difflab's samples in [-1, 1] as the pipelines return them: x/2 + 1/2 clamped to [0, 1]."""
    return (x / 2 + 0.5).clamp(0, 1)


def check_same_images(theirs: torch.Tensor, ours: torch.Tensor) -> None:
    inside = ((ours > 0) & (ours < 1)).float().mean()
    assert inside > 0.2  # the comparison is not decided by the clamp alone
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=0)


def test_ddim_pipeline_on_the_export_draws_difflab_ddim_samples(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "export"
    make_run(run)
    code, stdout, err = run_cli(capsys, "export", run, "--format", "diffusers", out)
    assert code == 0 and "DDIMPipeline" in stdout, err
    assert {p.name for p in out.iterdir()} == {"model_index.json", "unet", "scheduler"}
    pipe = diffusers.DDIMPipeline.from_pretrained(out)
    assert pipe.scheduler.config.prediction_type == "epsilon"
    theirs = pipeline_images(pipe, batch=4, seed=3, steps=10)
    _, model, schedule = difflab.load_run(run)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = difflab.samplers.ddim(model, schedule, x_T, steps=10, spacing="leading")
    check_same_images(theirs, as_images(ours))
    # the saved network itself: difflab's function to 1e-5 (diffusers' timestep = t - 1)
    unet = diffusers.UNet2DModel.from_pretrained(out, subfolder="unet")
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 50, 100])
    with torch.no_grad():
        assert torch.allclose(unet(x, t - 1).sample, model(x, t), atol=1e-5, rtol=0)


def test_sinusoid_export_samples_with_fractional_timestep_schedulers(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "export"
    make_run(run)
    code, _, err = run_cli(capsys, "export", run, out, "--time-embedding", "sinusoid")
    assert code == 0, err
    theirs = pipeline_images(diffusers.DDIMPipeline.from_pretrained(out), 4, 3, 10)
    _, model, schedule = difflab.load_run(run)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = difflab.samplers.ddim(model, schedule, x_T, steps=10, spacing="leading")
    check_same_images(theirs, as_images(ours))
    unet = diffusers.UNet2DModel.from_pretrained(out, subfolder="unet")
    euler = diffusers.EulerDiscreteScheduler.from_pretrained(out, subfolder="scheduler",
                                                             use_karras_sigmas=True)
    euler.set_timesteps(5)
    assert not torch.equal(euler.timesteps, euler.timesteps.round())  # fractional timesteps
    x = x_T * euler.init_noise_sigma
    with torch.no_grad():
        for t in euler.timesteps:
            x = euler.step(unet(euler.scale_model_input(x, t), t).sample, t, x).prev_sample
    assert torch.isfinite(x).all()


def test_ddpm_pipeline_reproduces_a_learned_variance_run(tmp_path):
    run, out = tmp_path / "run", tmp_path / "export"
    make_run(run, variance="learned", loss="hybrid", T=20)
    difflab.export_diffusers(run, out)
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    assert pipe.scheduler.config.variance_type == "learned_range"
    theirs = pipeline_images(pipe, batch=3, seed=5, steps=20)
    _, model, schedule = difflab.load_run(run)
    g = torch.Generator().manual_seed(5)  # x_T first, then one draw per step: diffusers' order
    x_T = torch.randn(3, 1, 8, 8, generator=g)
    ours = difflab.samplers.ddpm(model, schedule, x_T, generator=g)  # Σ_θ learned (eq. 23)
    check_same_images(theirs, as_images(ours))


def test_progressive_v_student_exports_as_v_prediction(tmp_path):
    run, out = tmp_path / "run", tmp_path / "export"
    make_run(run, kind="progressive", method="progressive", prediction="v",
             distilled_steps=4, schedule="cosine")
    difflab.export_diffusers(run, out)
    pipe = diffusers.DDIMPipeline.from_pretrained(out)
    config = pipe.scheduler.config
    assert config.prediction_type == "v_prediction"
    assert config.beta_schedule == "squaredcos_cap_v2" and config.trained_betas is None
    theirs = pipeline_images(pipe, batch=4, seed=7, steps=5)
    _, model, schedule = difflab.load_run(run)  # the student as an ε-model
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    ours = difflab.samplers.ddim(model, schedule, x_T, steps=5, spacing="leading")
    check_same_images(theirs, as_images(ours))


def test_load_diffusers_round_trip_samples_guides_and_likelihood(tmp_path):
    run, out = tmp_path / "run", tmp_path / "export"
    make_run(run, cond="class", num_classes=3, T=50)
    difflab.export_diffusers(run, out)
    _, ours, schedule = difflab.load_run(run)
    theirs, loaded = difflab.load_diffusers(out)
    assert torch.equal(loaded.betas, schedule.betas) and not theirs.training
    assert theirs.num_classes == 3
    y = torch.tensor([0, 1, 2, 1])
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    samples = [difflab.samplers.ddim(Bound(ClassifierFree(m, w=2.0, null_cond={"y": 3}), y=y),
                                     s, x_T, steps=8) for m, s in ((ours, schedule),
                                                                   (theirs, loaded))]
    assert torch.allclose(samples[0], samples[1], atol=1e-4, rtol=0)
    x0 = samples[0].clamp(-1, 1)
    bpd = [ode_bpd(Bound(m, y=y), s, x0, steps=6, generator=torch.Generator().manual_seed(1))
           for m, s in ((ours, schedule), (theirs, loaded))]
    assert torch.isfinite(bpd[0]).all() and torch.allclose(bpd[0], bpd[1], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(difflab's model, schedule) of a tiny run and (model, schedule) of its export, loaded."""
    root = tmp_path_factory.mktemp("roundtrip")
    make_run(root / "run", T=60, seed=3)
    difflab.export_diffusers(root / "run", root / "out")
    return difflab.load_run(root / "run")[1:], difflab.load_diffusers(root / "out")


@pytest.mark.parametrize("sampler", sorted(set(difflab.samplers.SAMPLERS) - {"consistency"}))
def test_every_sampler_draws_the_same_samples_from_the_loaded_export(exported, sampler):
    (ours, schedule), (theirs, loaded) = exported
    fn = difflab.samplers.SAMPLERS[sampler]
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    a, b = (fn(m, s, x_T, steps=5, generator=torch.Generator().manual_seed(5))
            for m, s in ((ours, schedule), (theirs, loaded)))
    assert torch.isfinite(a).all() and a.abs().mean() > 0.1
    assert torch.allclose(a, b, atol=1e-4 * a.abs().max().item(), rtol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_a_diffusers_model_samples_in_difflab_as_in_diffusers(tmp_path, prediction_type):
    torch.manual_seed(0)  # diffusers' own initialisation, then larger random weights
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=2,
                                 block_out_channels=(16, 32), layers_per_block=1,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                                 norm_num_groups=8, attention_head_dim=8)
    randomise(unet, seed=2, scale=0.05)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=60, beta_schedule="scaled_linear",
                                        beta_start=0.001, beta_end=0.04, clip_sample=False,
                                        prediction_type=prediction_type)
    diffusers.DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "m")
    theirs = pipeline_images(diffusers.DDIMPipeline.from_pretrained(tmp_path / "m"), 4, 9, 6)
    model, schedule = difflab.load_diffusers(tmp_path / "m")
    assert schedule.T == 60 and model.prediction == {"epsilon": "eps", "v_prediction": "v",
                                                     "sample": "x0"}[prediction_type]
    x_T = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(9))
    ours = difflab.samplers.ddim(model, schedule, x_T, steps=6, spacing="leading")
    check_same_images(theirs, as_images(ours))
    # any other sampler runs on it too: DDPM ancestral, 6 strided steps
    x = difflab.samplers.ddpm(model, schedule, x_T, steps=6, generator=torch.Generator())
    assert x.shape == x_T.shape and torch.isfinite(x).all()


def refusal(capsys, run, out) -> str:
    code, _, err = run_cli(capsys, "export", run, "--format", "diffusers", out)
    assert one_error_line(code, err), err
    return err


def test_runs_without_an_exact_equivalent_are_refused_in_one_line(tmp_path, capsys):
    make_run(tmp_path / "skips", rescale_skip=True)
    assert "rescale_skip" in refusal(capsys, tmp_path / "skips", tmp_path / "o1")
    make_run(tmp_path / "points", dataset="moons", model="auto")
    assert "2-D points" in refusal(capsys, tmp_path / "points", tmp_path / "o2")
    make_run(tmp_path / "latent", autoencoder=str(tmp_path / "ae"))
    assert "latent run" in refusal(capsys, tmp_path / "latent", tmp_path / "o3")
    make_run(tmp_path / "ct", kind="consistency-training")
    assert "consistency model" in refusal(capsys, tmp_path / "ct", tmp_path / "o4")
    make_run(tmp_path / "dit", model="dit", dit_size="T")  # difflab's own t features
    assert "dit_time_features" in refusal(capsys, tmp_path / "dit", tmp_path / "o5")
    assert not any(p.name.startswith(".o") for p in tmp_path.iterdir())  # nothing half-written
    make_run(tmp_path / "ok")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert "not an empty directory" in refusal(capsys, tmp_path / "ok", tmp_path / "full")


def test_load_diffusers_refuses_what_is_not_a_unet_folder(tmp_path):
    with pytest.raises(InteropError, match="not a directory"):
        difflab.load_diffusers(tmp_path / "missing")
    (tmp_path / "m").mkdir()
    with pytest.raises(InteropError, match="has no unet/config.json, transformer/config.json"):
        difflab.load_diffusers(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(InteropError, match="scheduler_config.json is missing"):
        difflab.load_diffusers(tmp_path / "m")
    (tmp_path / "m" / "scheduler_config.json").write_text("{}")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"_class_name": "VQModel"}))
    with pytest.raises(InteropError, match="holds a .VQModel.; load_diffusers reads UNet2DModel"):
        difflab.load_diffusers(tmp_path / "m")


def test_without_diffusers_export_and_load_say_what_to_install(tmp_path, capsys, monkeypatch):
    make_run(tmp_path / "run")
    difflab.export_diffusers(tmp_path / "run", tmp_path / "out")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now fails
    err = refusal(capsys, tmp_path / "run", tmp_path / "again")
    assert "pip install diffusers==0.42.1" in err and not (tmp_path / "again").exists()
    with pytest.raises(InteropError, match=r"pip install diffusers==0\.42\.1"):
        difflab.load_diffusers(tmp_path / "out")


def test_difflab_imports_without_diffusers():
    code = ("import sys; sys.modules['diffusers'] = None\n"
            "import difflab, difflab.cli, difflab.interop.export, difflab.interop.load\n"
            "import difflab.interop.dit_map, difflab.interop.unet_map\n"
            "assert difflab.cli.build_parser().parse_args(['export', 'r', 'o']).format == "
            "'diffusers'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
