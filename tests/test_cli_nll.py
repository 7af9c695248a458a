"""The command line for learned variance + L_hybrid + importance sampling, ``eval --nll``, the
loss curve and the reverse-process GIF; and their one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from difflab import schedules
from difflab.cli import main
from difflab.runs import checkpoint as ckpt
from difflab.runs.load import read_run_config
from difflab.runs.train import train
from difflab.training.losslog import read_loss_csv

IMG = ["--dataset", "digits", "--steps", "12", "--batch", "16", "--model-channels", "8",
       "--num-res-blocks", "1", "--attention", "", "--warmup", "2", "--eval-sampler", "ddpm",
       "--eval-steps", "4", "--n-eval", "20", "--checkpoint-every", "10", "--log-every", "4",
       "--variance", "learned", "--loss", "hybrid", "--t-sampling", "importance", "--no-progress"]
POINTS = ["--steps", "20", "--hidden", "16", "--depth", "1", "--t-dim", "8", "--batch", "64",
          "--n-train", "1000", "--n-eval", "300", "--eval-steps", "6", "--warmup", "5",
          "--no-progress"]
NLL_KEYS = {"vlb_bpd", "vlb_bpd_se", "vlb_prior_bpd", "vlb_decoder_bpd", "vlb_diffusion_bpd",
            "ode_bpd", "ode_bpd_se", "n", "data", "levels", "T", "variance", "ode_steps",
            "hutchinson_samples", "seed", "vlb_seconds", "ode_seconds"}


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("hybrid") / "run"
    assert main(["train", *IMG, "--out", str(run_dir)]) == 0
    return run_dir


def _nll(capsys, run_dir, *extra) -> dict:
    code, out, err = run(capsys, "eval", run_dir, "--nll", *extra)
    assert code == 0, err
    return json.loads(out)


def test_hybrid_run_from_the_command_line_writes_its_curve_and_gif(image_run):
    cfg = read_run_config(image_run)
    assert (cfg.variance, cfg.loss, cfg.t_sampling) == ("learned", "hybrid", "importance")
    assert [s for s, _ in read_loss_csv(image_run / ckpt.LOSS_CSV)] == [4, 8, 12]
    assert (image_run / ckpt.LOSS_PNG).read_bytes()[:4] == b"\x89PNG"
    with Image.open(image_run / "reverse_process.gif") as im:
        assert im.n_frames == 1 + 4  # x_T and one frame per step of the 4-step evaluation
    assert json.loads((image_run / ckpt.METRICS).read_text())["sampler"] == "ddpm"
    assert ckpt.load_checkpoint(image_run).extra["tsampler.count"].sum() > 0


@pytest.mark.parametrize("steps,frames", [(5, 6), (60, 41)])
def test_sample_to_a_gif(image_run, tmp_path, capsys, steps, frames):
    out = tmp_path / "r.gif"
    code, stdout, err = run(capsys, "sample", image_run, "--sampler", "ddim", "--steps", steps,
                            "-n", "3", "--out", out)
    assert code == 0 and stdout.strip() == str(out), err
    with Image.open(out) as im:
        assert im.format == "GIF" and im.n_frames == frames


def test_eval_nll_reports_both_bounds_with_standard_errors(image_run, capsys):
    m = _nll(capsys, image_run, "-n", "8", "--ode-steps", "10", "--hutchinson-samples", "2")
    assert set(m) == NLL_KEYS
    assert (m["n"], m["levels"], m["T"], m["variance"]) == (8, 17, 1000, "learned")
    assert (m["ode_steps"], m["hutchinson_samples"]) == (10, 2)
    for key in ("vlb_bpd", "ode_bpd"):
        assert math.isfinite(m[key]) and 0 < m[f"{key}_se"] < math.inf
    # discrete data: every term of the bound is a KL or −log of a probability, so ≥ 0
    assert min(m["vlb_prior_bpd"], m["vlb_decoder_bpd"], m["vlb_diffusion_bpd"]) >= 0
    parts = m["vlb_prior_bpd"] + m["vlb_decoder_bpd"] + m["vlb_diffusion_bpd"]
    assert parts == pytest.approx(m["vlb_bpd"], rel=1e-9)
    assert _nll(capsys, image_run, "-n", "8", "--ode-steps", "10", "--hutchinson-samples",
                "2")["vlb_bpd"] == m["vlb_bpd"]  # seeded


def test_eval_nll_of_an_untrained_run_matches_the_closed_form(image_run, tmp_path, capsys):
    """The untrained U-Net predicts ε̂ = 0 exactly: the flow is x̃ = const, so the model density
    is N(0, I/ᾱ_T) and, with 17 levels, the dequantised bits/dim is
    ½ log₂(2π/ᾱ_T) + log₂(16/2) + ᾱ_T‖y‖²/(2D ln 2), the last term below 4e-5."""
    cfg = read_run_config(image_run)
    untrained = train(cfg, tmp_path / "untrained", progress=False, max_steps=0)
    m = _nll(capsys, untrained, "-n", "8", "--ode-steps", "10")
    ab_T = schedules.linear(1000).alpha_bars[-1].item()
    assert m["ode_bpd"] == pytest.approx(0.5 * math.log2(2 * math.pi / ab_T) + 3.0, abs=1e-4)
    trained = _nll(capsys, image_run, "-n", "8", "--ode-steps", "10")
    assert trained["vlb_bpd"] < m["vlb_bpd"]  # 12 steps already: ≈ 11 against ≈ 14 bits/dim


def test_eval_nll_of_a_2d_run_scores_held_out_points_as_a_density(tmp_path, capsys):
    run_dir = tmp_path / "points"
    assert run(capsys, "train", *POINTS, "--out", run_dir)[0] == 0
    m = _nll(capsys, run_dir, "-n", "50", "--ode-steps", "20")
    assert m["levels"] is None and m["data"] == "held-out swiss_roll" and m["n"] == 50
    assert math.isfinite(m["vlb_bpd"]) and math.isfinite(m["ode_bpd"])
    assert [s for s, _ in read_loss_csv(run_dir / ckpt.LOSS_CSV)] == [10, 20]
    with Image.open(run_dir / "reverse_process.gif") as im:
        assert im.n_frames == 1 + 6


def test_bad_objective_and_nll_input_exits_2_with_one_line(image_run, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in image_run.iterdir()}
    o = ["--out", tmp_path / "new"]
    cases = {
        "hybrid, fixed Σ": (["train", "--loss", "hybrid", *o], "--variance 'learned'"),
        "learned, simple": (["train", "--variance", "learned", *o], "--loss 'hybrid'"),
        "importance, simple": (["train", "--t-sampling", "importance", *o], "--loss 'hybrid'"),
        "λ ≤ 0": (["train", "--variance", "learned", "--loss", "hybrid", "--hybrid-lambda",
                   "0", *o], "--hybrid-lambda"),
        "unknown loss": (["train", "--loss", "kl", *o], "--loss"),
        "resume changes loss": (["train", "--resume", image_run, "--loss", "simple"], "--loss"),
        "n 0": (["eval", image_run, "--nll", "-n", "0"], "-n"),
        "n > test split": (["eval", image_run, "--nll", "-n", "1000"], "180"),
        "ode steps 0": (["eval", image_run, "--nll", "--ode-steps", "0"], "--ode-steps"),
        "ode steps > T": (["eval", image_run, "--nll", "--ode-steps", "1001"], "--ode-steps"),
        "no probes": (["eval", image_run, "--nll", "--hutchinson-samples", "0"], "--hutchinson"),
        "sampler with nll": (["eval", image_run, "--nll", "--steps", "5"], "--steps"),
        "ode steps without nll": (["eval", image_run, "--ode-steps", "5"], "--nll"),
        "bad suffix": (["sample", image_run, "--out", tmp_path / "x.jpg"], ".gif"),
    }
    for name, (argv, hint) in cases.items():
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "", f"{name}: exit {code}"
        assert err.count("\n") == 1 and err.startswith("difflab: error: "), f"{name}: {err!r}"
        assert hint in err, f"{name}: {err!r}"
    assert not (tmp_path / "new").exists()
    assert {p.name: p.read_bytes() for p in image_run.iterdir()} == before
