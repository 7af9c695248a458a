"""Autoencoder runs and latent runs end to end: `difflab train-autoencoder` writes its metrics
and latent scale and resumes exactly (VQ's revived entries included); `difflab train
--autoencoder` copies the autoencoder into the run, trains on fresh posterior draws (the same
loss with or without the cached encoder outputs), samples and evaluates decoded images; bad
input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.build.data import image_split, model_shape
from difflab.build.model import build_schedule
from difflab.cli import main
from difflab.runs import checkpoint as ckpt
from difflab.runs.latent import AUTOENCODER_FILE, load_codec
from difflab.runs.load import read_run_config
from difflab.training import OBJECTIVES
from difflab.training.backend import Backend
from helpers import one_error_line
from helpers import run_cli as run

AE = ["--dataset", "digits", "--image-size", "16", "--ae-factor", "2", "--ae-channels", "8",
      "--ae-latent-channels", "2", "--steps", "10", "--batch", "16", "--warmup", "2",
      "--checkpoint-every", "5", "--no-progress", "--threads", "1"]
LATENT = ["--steps", "6", "--batch", "16", "--model-channels", "8", "--num-res-blocks", "1",
          "--channel-mult", "1,2", "--attention", "", "--warmup", "2", "--eval-sampler", "ddim",
          "--eval-steps", "4", "--n-eval", "20", "--checkpoint-every", "3", "--no-progress",
          "--threads", "1"]


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ae") / "kl"
    assert main(["train-autoencoder", *AE, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, ae_run) -> Path:
    out = tmp_path_factory.mktemp("latent") / "run"
    assert main(["train", "--dataset", "digits", "--image-size", "16", "--autoencoder",
                 str(ae_run), *LATENT, "--out", str(out)]) == 0
    return out


def test_an_autoencoder_run_writes_its_metrics_and_pictures(ae_run):
    m = json.loads((ae_run / "metrics.json").read_text())
    assert m["latent_shape"] == [2, 8, 8]
    assert m["latent_scale"] == pytest.approx(1 / m["latent_std"])
    assert np.isfinite(m["psnr"]) and m["rfd"] > 0
    for name in ("reconstructions.png", "autoencoder.safetensors",
                 "autoencoder.ema.safetensors", "loss.png"):
        assert (ae_run / name).is_file()
    assert read_run_config(ae_run).method == "autoencoder"


def test_a_vq_gan_run_reports_codebook_usage_and_resumes_exactly(tmp_path, capsys):
    vq = [*AE, "--ae-type", "vq", "--codebook-size", "32", "--disc-weight", "0.5",
          "--disc-start", "3"]  # the GAN term from step 3, its discriminator resumed too
    whole, part = tmp_path / "whole", tmp_path / "part"
    code, out, _ = run(capsys, "train-autoencoder", *vq, "--out", whole)
    assert code == 0 and "codebook usage" in out
    m = json.loads((whole / "metrics.json").read_text())
    assert 0 < m["codebook_usage"] <= 1 and 1 <= m["perplexity"] <= 32
    assert run(capsys, "train-autoencoder", *vq, "--stop-after", "5", "--out", part)[0] == 0
    assert run(capsys, "train", "--resume", part)[0] == 0
    for name in ("autoencoder.safetensors", "autoencoder.ema.safetensors"):
        a = ckpt.load_tensors(whole / name)[0]
        b = ckpt.load_tensors(part / name)[0]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    disc = ckpt.load_checkpoint(whole).modules["model"]
    assert any(k.startswith("disc.") for k in disc)
    assert m["last_d_weight"] > 0  # the adaptive weight was on


def test_a_latent_run_copies_the_autoencoder_and_its_scale(ae_run, latent_run):
    cfg = read_run_config(latent_run)
    ae_metrics = json.loads((ae_run / "metrics.json").read_text())
    assert cfg.latent_scale == pytest.approx(ae_metrics["latent_scale"])
    assert (cfg.ae_factor, cfg.ae_channels, cfg.ae_latent_channels) == (2, 8, 2)
    copied = ckpt.load_tensors(latent_run / AUTOENCODER_FILE)[0]
    source = ckpt.load_tensors(ae_run / "autoencoder.ema.safetensors")[0]
    assert all(torch.equal(copied[k], source[k]) for k in source)
    assert model_shape(cfg) == (2, 8, 8)
    m = json.loads((latent_run / "metrics.json").read_text())
    assert "fd" in m and m["n_eval"] == 20


def test_latent_samples_are_decoded_images(latent_run, tmp_path, capsys):
    out = tmp_path / "x.npy"
    for sampler in ("ddim", "dpm++"):
        code, _, err = run(capsys, "sample", latent_run, "--sampler", sampler, "--steps", "3",
                           "-n", "5", "--out", out)
        assert code == 0, err
        x = np.load(out)
        assert x.shape == (5, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    code, out_text, err = run(capsys, "eval", latent_run, "--steps", "3", "-n", "10")
    assert code == 0, err
    assert json.loads(out_text)["n_eval"] == 10
    code, _, err = run(capsys, "eval", latent_run, "--nll")
    assert one_error_line(code, err) and "latent" in err


def test_a_latent_run_resumes_exactly(ae_run, latent_run, tmp_path, capsys):
    part = tmp_path / "part"
    args = ["--dataset", "digits", "--image-size", "16", "--autoencoder", ae_run, *LATENT]
    assert run(capsys, "train", *args, "--stop-after", "3", "--out", part)[0] == 0
    assert run(capsys, "train", "--resume", part)[0] == 0
    for name in ("denoiser.safetensors", "denoiser.ema.safetensors"):
        a = ckpt.load_tensors(latent_run / name)[0]
        b = ckpt.load_tensors(part / name)[0]
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_cached_encoder_outputs_give_the_same_loss(latent_run):
    cfg = read_run_config(latent_run)
    codec = load_codec(latent_run, cfg)
    x = image_split(cfg, "train").x[:64]
    losses = []
    for cached in (False, True):
        c = cfg.__class__.from_dict({"latent_cache": cached}, base=cfg)
        obj = OBJECTIVES["diffusion"](c, build_schedule(c), x, None,
                                      Backend(torch.device("cpu")), codec=codec)
        batch = obj.draw(0, torch.Generator().manual_seed(0))
        assert batch["posterior"].shape == (cfg.batch, 2, 8, 8)
        with torch.no_grad():
            losses.append(obj.loss(obj.net, batch).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_bad_autoencoder_input_is_one_line(ae_run, latent_run, tmp_path, capsys):
    cases = {
        "not a run": ["train", "--dataset", "digits", "--autoencoder", tmp_path],
        "missing": ["train", "--dataset", "digits", "--autoencoder", tmp_path / "nope"],
        "a diffusion run": ["train", "--dataset", "digits", "--image-size", "16",
                            "--autoencoder", latent_run, *LATENT],
        "other images": ["train", "--dataset", "digits", "--image-size", "8", "--autoencoder",
                         ae_run, *LATENT],
        "conditional ae": ["train-autoencoder", *AE, "--cond", "class"],
        "not an ae": ["train-autoencoder", *AE, "--method", "diffusion"],
        "2-D data": ["train-autoencoder", "--dataset", "moons"],
        "cache without ae": ["train", "--latent-cache"],
        "sample an ae": ["sample", ae_run, "--out", tmp_path / "x.png"],
    }
    for what, argv in cases.items():
        code, _, err = run(capsys, *argv, "--out", tmp_path / what.replace(" ", "_"))
        assert one_error_line(code, err), (what, err)


def test_a_latent_run_distils_into_latent_students(latent_run, tmp_path, capsys):
    out = tmp_path / "pd"
    code, _, err = run(capsys, "distill", latent_run, "--method", "progressive", "--rounds", "1",
                       "--start-steps", "4",
                       "--steps-per-round", "3", "--out", out, "--no-progress")
    assert code == 0, err
    student = out / "steps-4"
    assert (student / AUTOENCODER_FILE).is_file()
    assert "fd" in json.loads((student / "metrics.json").read_text())
    x = tmp_path / "x.npy"
    assert run(capsys, "sample", student, "--steps", "4", "-n", "3", "--out", x)[0] == 0
    assert np.load(x).shape == (3, 1, 16, 16)
    cd = tmp_path / "cd"
    code, _, err = run(capsys, "distill", latent_run, "--method", "consistency", "--iters", "3",
                       "--N", "4", "--out", cd, "--no-progress")
    assert code == 0, err
    assert run(capsys, "sample", cd, "--sampler", "consistency", "--steps", "1", "-n", "3",
               "--out", x)[0] == 0
    assert np.load(x).shape == (3, 1, 16, 16)


def test_a_class_conditional_latent_run_samples_with_guidance(ae_run, tmp_path, capsys):
    out = tmp_path / "cond"
    assert run(capsys, "train", "--dataset", "digits", "--image-size", "16", "--autoencoder",
               ae_run, *LATENT, "--cond", "class", "--latent-cache", "--out", out)[0] == 0
    x = tmp_path / "x.npy"
    for extra in ([], ["--threshold", "dynamic"]):
        code, _, err = run(capsys, "sample", out, "--class", "3", "--guidance", "2", "--steps",
                           "3", "-n", "4", *extra, "--out", x)
        assert code == 0, err
        assert np.load(x).shape == (4, 1, 16, 16)


def test_a_dit_denoises_latents(ae_run, tmp_path, capsys):
    out = tmp_path / "dit"
    assert run(capsys, "train", "--dataset", "digits", "--image-size", "16", "--autoencoder",
               ae_run, *LATENT, "--model", "dit", "--dit-size", "T", "--patch-size", "2",
               "--out", out)[0] == 0
    cfg = read_run_config(out)
    assert cfg.model == "dit" and model_shape(cfg) == (2, 8, 8)
    x = tmp_path / "x.npy"
    assert run(capsys, "sample", out, "--steps", "3", "-n", "2", "--out", x)[0] == 0
    assert np.load(x).shape == (2, 1, 16, 16)
    code, _, err = run(capsys, "train", "--dataset", "digits", "--image-size", "16",
                       "--autoencoder", ae_run, *LATENT, "--model", "dit", "--patch-size", "3",
                       "--out", tmp_path / "bad")
    assert one_error_line(code, err) and "latent size" in err


def test_the_python_api_samples_a_latent_run(latent_run, ae_run):
    import difflab

    cfg, model, schedule = difflab.load_run(latent_run)
    codec = difflab.load_codec(latent_run)
    shape = codec.latent_shape((1, 16, 16))
    z = difflab.samplers.ddim(model, schedule, torch.randn(3, *shape), steps=4)
    assert codec.decode(z).shape == (3, 1, 16, 16)
    x = torch.zeros(2, 1, 16, 16)
    assert codec.encode(x).shape == (2, *shape)


def test_classifier_guidance_of_a_latent_run_is_refused(latent_run):
    from difflab.errors import ConfigError
    from difflab.runs.classifier import check_compatible

    cfg = read_run_config(latent_run)
    with pytest.raises(ConfigError, match="latent"):
        check_compatible(cfg.__class__.from_dict({"autoencoder": ""}, base=cfg), cfg)


def test_a_controlnet_on_a_latent_base(latent_run, tmp_path, capsys):
    """The branch works on the base's latents; its hint encoder brings the edge map of the
    16×16 image down to the 8×8 latents (f = 2); samples come back decoded."""
    out = tmp_path / "cn"
    code, _, err = run(capsys, "train-controlnet", latent_run, "--hint", "edges", "--steps", "3",
                       "--batch", "8", "--threads", "1", "--no-progress", "--out", out)
    assert code == 0, err
    assert (out / AUTOENCODER_FILE).is_file() and (out / "base" / AUTOENCODER_FILE).is_file()
    m = json.loads((out / "metrics.json").read_text())
    assert "edge_f1" in m or any(k.startswith("edge") for k in m), m
    x = tmp_path / "x.npy"
    code, _, err = run(capsys, "sample", out, "--hint-from-data", "2", "--steps", "3",
                       "--out", x)
    assert code == 0, err
    assert np.load(x).shape == (2, 1, 16, 16)
