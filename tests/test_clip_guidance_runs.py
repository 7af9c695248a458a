"""A noise-aware CLIP run (``difflab train-clip --clip-noisy``) and CLIP guidance from the CLI
(``difflab sample RUN --clip-guidance CLIP_RUN``), end to end on digits at T = 50 (they need the
frozen MiniLM, the `text` extra): its zero-shot accuracy falls with the noise level t, guided
samples come out, and mistakes are one-line errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from difflab.runs import checkpoint as ckpt
from helpers import needs_text, one_error_line, run_cli

pytestmark = needs_text
# cosine: at T = 50 x_T is pure noise (the linear schedule of T = 50 keeps ᾱ_T ≈ 0.6)
NOISE = ["--T", "50", "--schedule", "cosine", "--eval-steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from difflab.cli import main

    root = tmp_path_factory.mktemp("clipg")
    out = {k: root / k for k in ("noisy", "uncond")}
    assert main(["train-clip", "--preset", "digits-noisy-clip", "--steps", "40", "--batch",
                 "64", "--warmup", "5", *NOISE, "--out", str(out["noisy"])]) == 0
    assert main(["train", "--preset", "digits", "--steps", "2", "--batch", "16",
                 "--model-channels", "8", "--num-res-blocks", "1", "--n-eval", "4", *NOISE,
                 "--out", str(out["uncond"])]) == 0
    return out


def test_noisy_clip_run_reads_clean_images_better_than_pure_noise(runs):
    m = ckpt.read_json(runs["noisy"] / ckpt.METRICS)
    at = {int(t): a for t, a in m["zero_shot_at_t"].items()}
    assert sorted(at) == [1, 5, 12, 25, 37, 50]
    assert at[1] > 0.4  # chance 0.1
    assert at[50] < 0.25 and at[1] > at[50] + 0.2  # x_50 is pure noise: about chance
    assert abs(m["zero_shot"] - at[1]) < 0.1  # clean test images are read as x_1


def test_sample_with_clip_guidance(runs, capsys, tmp_path):
    out = tmp_path / "x.npy"
    code, _, err = run_cli(capsys, "sample", runs["uncond"], "--clip-guidance", runs["noisy"],
                           "--prompt", "a handwritten seven", "--guidance", "2", "-n", "3",
                           "--steps", "3", "--out", out)
    assert code == 0, err
    x = np.load(out)
    assert x.shape == (3, 1, 8, 8) and np.isfinite(x).all()
    # w = 0 draws exactly the unguided samples of the same seed
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    assert run_cli(capsys, "sample", runs["uncond"], "--clip-guidance", runs["noisy"], "--class",
                   "3", "--guidance", "0", "-n", "3", "--steps", "3", "--out", a)[0] == 0
    assert run_cli(capsys, "sample", runs["uncond"], "-n", "3", "--steps", "3", "--out", b)[0] == 0
    assert np.array_equal(np.load(a), np.load(b))
    assert not np.array_equal(np.load(a), x)


@pytest.mark.parametrize("case", ["classifier", "prompt"])
def test_clip_guidance_errors_are_one_line(runs, capsys, tmp_path, case):
    extra = {"classifier": ["--prompt", "a seven", "--classifier", runs["noisy"]],
             "prompt": ["--prompt", "  "]}[case]
    code, _, err = run_cli(capsys, "sample", runs["uncond"], "--clip-guidance", runs["noisy"],
                           *extra, "-n", "2", "--steps", "2", "--out", tmp_path / "x.npy")
    assert one_error_line(code, err), err
    assert {"classifier": "give one", "prompt": "empty prompt"}[case] in err


def test_clip_guidance_is_for_unconditional_runs(runs):
    import torch

    from difflab.build.conditioning import guided
    from difflab.runs.clip import load_noisy_clip
    from difflab.runs.load import load_run

    cfg, model, schedule = load_run(runs["uncond"])
    clip = load_noisy_clip(runs["noisy"])[1]
    cond = {"clip_text": torch.zeros(2, clip.embed_dim)}
    guided(model, schedule, cfg, cond, w=1.0, clip=clip)  # unconditional: fine
    with pytest.raises(ValueError, match="unconditional"):
        guided(model, schedule, replace(cfg, cond="text"), cond, w=1.0, clip=clip)
    with pytest.raises(ValueError, match="caption embeddings"):
        guided(model, schedule, cfg, {}, w=1.0, clip=clip)


def test_the_clip_must_share_the_runs_noise_and_be_noise_aware(runs):
    from difflab.errors import ConfigError
    from difflab.runs.classifier import check_compatible
    from difflab.runs.clip import attach_clip, load_noisy_clip
    from difflab.runs.load import read_run_config

    ccfg, clip = load_noisy_clip(runs["noisy"])
    cfg = read_run_config(runs["uncond"])
    check_compatible(ccfg, cfg, what="CLIP")  # same schedule, T, data
    for change in ({"T": 100}, {"schedule": "linear"}):
        with pytest.raises(ConfigError, match="the CLIP was trained with"):
            check_compatible(replace(ccfg, **change), cfg, what="CLIP")
    with pytest.raises(ConfigError, match="noise-aware"):  # unCLIP needs a clean CLIP
        attach_clip(replace(cfg, method="unclip-prior", cond="text", clip=str(runs["noisy"])))
