"""unCLIP runs end to end on digits (they need the frozen MiniLM, the `text` extra): a CLIP run
whose zero-shot accuracy rises far above chance in a few dozen updates and resumes exactly; a
prior and a decoder run on it, and ``difflab unclip``'s four uses with one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difflab.build.model import build_model
from difflab.config.preset_files import load_config
from difflab.runs import checkpoint as ckpt
from difflab.runs import run_config as runcfg
from difflab.runs.clip import evaluate_clip
from difflab.runs.train import train
from helpers import needs_text, one_error_line, run_cli

pytestmark = needs_text
CLIP_FLAGS = ["--preset", "digits-clip", "--steps", "40", "--batch", "64", "--warmup", "5",
              "--checkpoint-every", "100", "--no-progress"]
STAGE_FLAGS = ["--steps", "4", "--batch", "16", "--eval-steps", "2", "--n-eval", "8", "--T",
               "50", "--warmup", "1", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from difflab.cli import main

    root = tmp_path_factory.mktemp("unclip")
    out = {k: root / k for k in ("clip", "prior", "decoder")}
    assert main(["train-clip", *CLIP_FLAGS, "--out", str(out["clip"])]) == 0
    assert main(["train", "--preset", "digits-unclip-prior", *STAGE_FLAGS, "--prior-width", "32",
                 "--prior-depth", "1", "--clip", str(out["clip"]),
                 "--out", str(out["prior"])]) == 0
    assert main(["train", "--preset", "digits-unclip-decoder", *STAGE_FLAGS,
                 "--model-channels", "8", "--num-res-blocks", "1", "--clip", str(out["clip"]),
                 "--out", str(out["decoder"])]) == 0
    return out


def test_a_short_clip_training_beats_chance_and_the_untrained_network(runs):
    m = ckpt.read_json(runs["clip"] / ckpt.METRICS)
    assert m["train_steps"] == 40
    assert m["zero_shot"] > 0.5  # chance: 0.1
    assert m["recall_i2t"] > 3 * m["recall_chance"] and m["recall_t2i"] > 3 * m["recall_chance"]
    cfg = load_config("digits-clip")
    untrained = evaluate_clip(cfg, build_model(cfg).eval())
    assert m["zero_shot"] > untrained["zero_shot"] + 0.3


def test_clip_run_resumes_bit_identically(tmp_path, capsys):
    flags = [*CLIP_FLAGS[:2], "--steps", "6", "--batch", "16", "--warmup", "2",
             "--checkpoint-every", "100", "--no-progress"]
    cfg = load_config("digits-clip", {"steps": 6, "batch": 16, "warmup": 2})
    train(cfg, tmp_path / "a", progress=False, evaluate_after=False)
    code, _, _ = run_cli(capsys, "train-clip", *flags, "--stop-after", "3", "--out",
                         tmp_path / "b")
    assert code == 0
    train(cfg, tmp_path / "b", resume=True, progress=False, evaluate_after=False)
    for name in ("clip.safetensors", "clip.ema.safetensors"):
        a, b = (ckpt.load_tensors(tmp_path / d / name)[0] for d in "ab")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_prior_and_decoder_runs_hold_their_clip_and_write_metrics(runs):
    for stage, keys in (("prior", ("prior_cos_true", "prior_cos_random")),
                        ("decoder", ("decoder_cos", "fd", "accuracy"))):
        kind, _, _ = runcfg.read_run_config(runs[stage])
        assert kind == f"unclip-{stage}"
        assert (runs[stage] / "clip" / "clip.ema.safetensors").is_file()
        m = ckpt.read_json(runs[stage] / ckpt.METRICS)
        assert all(k in m for k in keys)


@pytest.mark.parametrize("mode,count", [(["--prompt", "a handwritten seven"], 3),
                                        (["--variations", "2"], 4),
                                        (["--interpolate", "0,5"], 3),
                                        (["--text-diff", "1", "--to", "the digit 4"], 4)])
def test_unclip_cli_draws_what_it_is_asked(runs, capsys, tmp_path, mode, count):
    out = tmp_path / "x.npy"
    code, _, err = run_cli(capsys, "unclip", runs["decoder"], "--prior", runs["prior"], *mode,
                           "-n", "3", "--steps", "2", "--prior-steps", "2", "--out", out)
    assert code == 0, err
    x = np.load(out)
    assert x.shape == (count, 1, 8, 8) and np.abs(x).max() <= 1


def test_unclip_cli_errors_are_one_line(runs, capsys, tmp_path):
    cases = [(["--prompt", "a seven"], "--prompt needs --prior"),
             (["--variations", "100000"], "out of range"),
             (["--interpolate", "1"], "two test indices"),
             (["--text-diff", "1"], "go together")]
    for argv, words in cases:
        code, _, err = run_cli(capsys, "unclip", runs["decoder"], *argv, "--out",
                               tmp_path / "y.png")
        assert one_error_line(code, err) and words in err, err
    code, _, err = run_cli(capsys, "unclip", runs["clip"], "--variations", "1", "--out",
                           tmp_path / "y.png")
    assert one_error_line(code, err) and "is a clip run" in err


def test_a_prior_run_resumes_bit_identically_from_its_own_clip_copy(runs, tmp_path, capsys):
    flags = ["train", "--preset", "digits-unclip-prior", *STAGE_FLAGS, "--prior-width", "32",
             "--prior-depth", "1", "--checkpoint-every", "100"]
    part = tmp_path / "part"
    code, _, err = run_cli(capsys, *flags, "--clip", runs["clip"], "--stop-after", "2",
                           "--out", part)
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--resume", part, "--no-progress")
    assert code == 0, err
    a = ckpt.load_tensors(part / "prior.ema.safetensors")[0]
    b = ckpt.load_tensors(runs["prior"] / "prior.ema.safetensors")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_v_prediction_decoder_is_sampled_through_its_eps_wrapper(runs, tmp_path, capsys):
    """A decoder trained with ``--prediction v`` (what shapes-unclip-decoder uses: an ε-decoder
    of 32×32 shapes diverged, results/unclip_shapes_linear.md) is decoded, by its own
    evaluation and by load_unclip, as the ε-model ε̂ = √(1−ᾱ) x_t + √ᾱ v̂ of its network."""
    from difflab.parameterization import eps_from_v
    from difflab.runs.unclip import load_unclip

    out = tmp_path / "v"
    code, _, err = run_cli(capsys, "train", "--preset", "digits-unclip-decoder", *STAGE_FLAGS,
                           "--model-channels", "8", "--num-res-blocks", "1", "--prediction",
                           "v", "--clip", runs["clip"], "--out", out)
    assert code == 0, err
    cfg, u = load_unclip(out)
    assert cfg.prediction == "v"
    net = build_model(cfg)
    net.load_state_dict(ckpt.load_weights(out, "ema", "decoder"))
    net.eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(6, 1, 8, 8, generator=g), torch.randint(1, 51, (6,), generator=g)
    c_i = torch.nn.functional.normalize(torch.randn(6, cfg.clip_dim, generator=g), dim=1)
    ab = u.decoder_schedule.alpha_bar_at(t).view(6, 1, 1, 1).float()
    with torch.no_grad():
        torch.testing.assert_close(u.decoder(x, t, clip_emb=c_i),
                                   eps_from_v(x, net(x, t, clip_emb=c_i), ab))
    assert "decoder_cos" in ckpt.read_json(out / ckpt.METRICS)


def test_prediction_v_is_refused_for_a_prior_in_one_line(runs, capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--preset", "digits-unclip-prior", *STAGE_FLAGS,
                           "--prediction", "v", "--clip", runs["clip"], "--out", tmp_path / "p")
    assert one_error_line(code, err) and "unclip-decoder" in err, err
