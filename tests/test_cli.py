"""The ``difflab`` command: train → sample → eval on a tiny setting, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from difflab.cli import main
from difflab.runs import checkpoint as ckpt

TINY = ["--steps", "40", "--hidden", "16", "--depth", "1", "--t-dim", "8", "--batch", "64",
        "--n-train", "1000", "--n-eval", "500", "--eval-steps", "10", "--warmup", "5",
        "--checkpoint-every", "25", "--no-progress"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--out", str(run_dir)]) == 0
    return run_dir


def test_train_writes_a_run_and_prints_its_path_last(trained, tmp_path, capsys):
    names = {p.name for p in trained.iterdir()}
    assert set(ckpt.RUN_FILES) <= names
    metrics = json.loads((trained / "metrics.json").read_text())
    assert {"swd", "swd_floor", "train_seconds"} <= set(metrics)
    code, out, err = run(capsys, "train", *TINY, "--steps", "5", "--out", tmp_path / "r2")
    assert code == 0 and out.strip().splitlines()[-1] == str(tmp_path / "r2")


def test_sample_npy_and_png(trained, tmp_path, capsys):
    code, out, _ = run(capsys, "sample", trained, "--sampler", "ddim", "--steps", "5",
                       "-n", "300", "--seed", "3", "--out", tmp_path / "x.npy")
    assert code == 0
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (300, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    again = tmp_path / "y.npy"
    assert main(["sample", str(trained), "--steps", "5", "-n", "300", "--seed", "3",
                 "--sampler", "ddim", "--out", str(again)]) == 0
    assert np.array_equal(x, np.load(again))  # seeded
    for sampler in ("ddpm", "langevin", "euler", "heun"):
        code, _, err = run(capsys, "sample", trained, "--sampler", sampler, "--steps", "4",
                           "-n", "50", "--out", tmp_path / f"{sampler}.npy")
        assert code == 0, err
    code, _, _ = run(capsys, "sample", trained, "--sampler", "ddim", "--steps", "5",
                     "--eta", "0.5", "-n", "200", "--out", tmp_path / "x.png")
    assert code == 0 and (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_prints_metrics_json(trained, capsys):
    code, out, _ = run(capsys, "eval", trained, "--sampler", "heun", "--steps", "5", "-n", "400")
    assert code == 0
    metrics = json.loads(out)
    assert metrics["sampler"] == "heun" and metrics["steps"] == 5 and metrics["n_eval"] == 400
    assert metrics["swd"] > 0 and metrics["swd_floor"] > 0


def test_stop_then_resume_from_the_command_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, _ = run(capsys, "train", *TINY, "--stop-after", "30", "--out", run_dir)
    assert code == 0 and "--resume" in out and not (run_dir / "metrics.json").exists()
    code, out, _ = run(capsys, "train", "--resume", run_dir, "--no-progress")
    assert code == 0 and out.strip().splitlines()[-1] == str(run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["train_steps"] == 40


def test_console_entry_point_subprocess(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "difflab", "train", *TINY, "--steps", "10",
                           "--out", str(run_dir)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    proc = subprocess.run([sys.executable, "-m", "difflab", "eval", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("difflab: error: ") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv", [[], ["train"], ["sample"], ["eval"]])
def test_help_on_every_command(argv, capsys):
    code, out, _ = run(capsys, *argv, "--help")
    assert code == 0 and "usage:" in out


# --- bad input: one line on stderr, exit code 2 ---
def _bad_cases(run_dir: Path, tmp: Path) -> dict[str, list]:
    bad_toml = tmp / "bad.toml"
    bad_toml.write_text("steps = = 1\n")
    unknown_key = tmp / "unknown.toml"
    unknown_key.write_text("stepz = 1\n")
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text(json.dumps({"dataset": "swiss_roll"}))
    (corrupt / "ema.safetensors").write_bytes(b"\x00garbage")
    no_config = tmp / "no_config"
    no_config.mkdir()
    s = ["sample", run_dir]
    o = ["--out", tmp / "x.npy"]
    return {
        "unknown dataset": ["train", "--dataset", "spiral", "--out", tmp / "a"],
        "unknown sampler": [*s, "--sampler", "euler-maruyama", *o],
        "unknown sampler eval": ["eval", run_dir, "--sampler", "nope"],
        "steps 0": [*s, "--steps", "0", *o],
        "steps > T": ["eval", run_dir, "--steps", "1001"],
        "train steps 0": ["train", "--steps", "0", "--out", tmp / "b"],
        "eval steps > T": ["train", "--eval-steps", "2000", "--out", tmp / "c"],
        "eta < 0": [*s, "--eta", "-0.1", *o],
        "eta without ddim": [*s, "--sampler", "heun", "--eta", "0.5", *o],
        "not a number": ["train", "--steps", "many"],
        "missing run": ["sample", tmp / "missing", *o],
        "missing run eval": ["eval", tmp / "missing"],
        "not a run": ["eval", no_config],
        "corrupt run": ["eval", corrupt],
        "corrupt run sample": ["sample", corrupt, *o],
        "malformed preset": ["train", "--preset", bad_toml, "--out", tmp / "d"],
        "unknown preset key": ["train", "--preset", unknown_key, "--out", tmp / "e"],
        "unknown preset": ["train", "--preset", "nonesuch", "--out", tmp / "f"],
        "existing run": ["train", *TINY, "--out", run_dir],
        "resume missing": ["train", "--resume", tmp / "missing"],
        "resume changes dataset": ["train", "--resume", run_dir, "--dataset", "moons"],
        "bad out suffix": [*s, "--out", tmp / "x.txt"],
        "no command": [],
        "unknown flag": ["train", "--bogus"],
    }


def test_bad_input_exits_2_with_one_line(trained, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    for name, argv in _bad_cases(trained, tmp_path).items():
        code, out, err = run(capsys, *argv)
        assert code == 2, f"{name}: exit {code}"
        assert err.count("\n") == 1 and err.startswith("difflab: error: "), f"{name}: {err!r}"
        assert "Traceback" not in err and out == "", name
    # the existing run was left alone
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == before  # names and bytes


def test_overwrite_replaces_an_existing_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(capsys, "train", *TINY, "--steps", "5", "--out", run_dir)[0] == 0
    code, out, _ = run(capsys, "train", *TINY, "--steps", "6", "--out", run_dir, "--overwrite")
    assert code == 0
    assert json.loads((run_dir / "metrics.json").read_text())["train_steps"] == 6


def test_sample_with_each_spacing_and_a_bad_one(trained, tmp_path, capsys):
    for spacing in ("linspace", "leading", "trailing"):
        out = tmp_path / f"{spacing}.npy"
        assert main(["sample", str(trained), "--sampler", "ddim", "--steps", "5",
                     "--spacing", spacing, "-n", "20", "--out", str(out)]) == 0
        assert np.load(out).shape == (20, 2)
    for spacing in ("logsnr", "karras", "angle", "blend", "capped-blend"):  # the solvers' own
        out = tmp_path / f"{spacing}.npy"
        assert main(["sample", str(trained), "--sampler", "unipc", "--steps", "5",
                     "--spacing", spacing, "-n", "20", "--out", str(out)]) == 0
        assert np.isfinite(np.load(out)).all()
    capsys.readouterr()
    assert main(["sample", str(trained), "--spacing", "uniform", "--out",
                 str(tmp_path / "x.npy")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["sample", str(trained), "--sampler", "ddim", "--spacing", "blend", "--out",
                 str(tmp_path / "x.npy")]) == 2  # a grid of another sampler
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a grid of --sampler ddim" in err[0] and "trailing" in err[0]
    assert not (tmp_path / "x.npy").exists()
    # auto, the value eval reports for the solvers, is taken back: here the run's own default
    for sampler in ("unipc", "ddim"):
        a, b = tmp_path / f"{sampler}-auto.npy", tmp_path / f"{sampler}-default.npy"
        for out, extra in ((a, ["--spacing", "auto"]), (b, [])):
            assert main(["sample", str(trained), "--sampler", sampler, "--steps", "5", "-n",
                         "20", *extra, "--out", str(out)]) == 0
        assert np.array_equal(np.load(a), np.load(b))


def test_eval_spacing_is_auto_or_a_grid_of_the_eval_sampler(tmp_path, capsys):
    """A run may evaluate on any grid of its evaluation sampler (metrics.json records it); a
    grid of another sampler, or no grid at all, is refused in one line before training, and so
    is an η > 0 for a sampler other than DDIM."""
    run_dir = tmp_path / "unipc-blend"
    assert run(capsys, "train", *TINY, "--steps", "3", "--eval-sampler", "unipc",
               "--eval-spacing", "blend", "--out", run_dir)[0] == 0
    assert json.loads((run_dir / "metrics.json").read_text())["spacing"] == "blend"
    for sampler, grid, words in (("ddim", "blend", "a grid of eval_sampler 'ddim'"),
                                 ("unipc", "geometric", "a grid of eval_sampler 'unipc'"),
                                 ("ddim", "uniform", "must be auto or one of")):
        code, _, err = run(capsys, "train", *TINY, "--steps", "3", "--eval-sampler", sampler,
                           "--eval-spacing", grid, "--out", tmp_path / grid)
        assert code == 2 and err.count("\n") == 1 and words in err, err
        assert not (tmp_path / grid).exists()
    # DDIM's η with another evaluation sampler: refused, as sample --eta is
    code, _, err = run(capsys, "train", *TINY, "--steps", "3", "--eval-sampler", "unipc",
                       "--eval-eta", "1", "--out", tmp_path / "eta")
    assert code == 2 and err.count("\n") == 1 and "ddim only" in err, err
