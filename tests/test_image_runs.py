"""Image runs end to end on a tiny U-Net: train (CLI) → metrics and pictures → sample → eval;
exact resume of the U-Net path; one-line errors for bad image settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.build.model import build_model
from difflab.cli import main
from difflab.config import TrainConfig, load_config
from difflab.runs import checkpoint as ckpt
from difflab.runs.train import train
from helpers import part_of

TINY = ["--dataset", "digits", "--steps", "12", "--batch", "16", "--model-channels", "8",
        "--num-res-blocks", "1", "--attention", "", "--warmup", "2", "--eval-sampler", "ddim",
        "--eval-steps", "4", "--n-eval", "20", "--checkpoint-every", "10", "--no-progress"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("img") / "run"
    assert main(["train", *TINY, "--out", str(run_dir)]) == 0
    return run_dir


def test_digits_preset_is_a_valid_unet_config():
    cfg = load_config("digits")
    assert cfg.dataset == "digits" and cfg.model == "unet"
    assert isinstance(build_model(cfg), torch.nn.Module)
    assert load_config("mnist").dataset == "mnist"


def test_train_writes_metrics_and_pictures(image_run, tmp_path, capsys):
    names = {p.name for p in image_run.iterdir()}
    assert set(ckpt.RUN_FILES) <= names
    m = json.loads((image_run / "metrics.json").read_text())
    assert {"fd", "fd_floor", "fd_ratio", "train_seconds", "train_steps"} <= set(m)
    assert m["fd"] > 0 and 20 < m["fd_floor"] < 100 and m["train_steps"] == 12
    for pic in ("samples.png", "reverse_process.png"):
        assert (image_run / pic).read_bytes()[:4] == b"\x89PNG"
    code, out, _ = run(capsys, "train", *TINY, "--steps", "2", "--out", tmp_path / "r2")
    assert code == 0 and "FD" in out and out.strip().splitlines()[-1] == str(tmp_path / "r2")


def test_sample_and_eval_an_image_run(image_run, tmp_path, capsys):
    code, _, err = run(capsys, "sample", image_run, "--steps", "3", "-n", "6",
                       "--out", tmp_path / "x.npy")
    assert code == 0, err
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (6, 1, 8, 8) and x.dtype == np.float32 and np.isfinite(x).all()
    code, _, err = run(capsys, "sample", image_run, "--steps", "3", "-n", "6",
                       "--out", tmp_path / "grid.png")
    assert code == 0 and (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG", err
    code, out, err = run(capsys, "eval", image_run, "--steps", "3", "-n", "10")
    assert code == 0, err
    m = json.loads(out)
    assert m["fd"] > 0 and m["fd_floor"] > 0 and m["n_eval"] == 10


def test_unet_run_stopped_and_resumed_equals_uninterrupted(tmp_path):
    cfg = TrainConfig.from_dict({"dataset": "digits", "steps": 9, "batch": 8,
                                 "model_channels": 8, "num_res_blocks": 1, "dropout": 0.1,
                                 "warmup": 2, "checkpoint_every": 4})
    whole = train(cfg, tmp_path / "whole", progress=False, evaluate_after=False)
    part = train(cfg, tmp_path / "part", progress=False, max_steps=5)
    assert ckpt.load_checkpoint(part).step == 5
    train(cfg, part, resume=True, progress=False, evaluate_after=False)
    a, b = ckpt.load_checkpoint(whole), ckpt.load_checkpoint(part)
    assert a.step == b.step == 9 and torch.equal(a.generator, b.generator)
    for name in ("model", "ema"):
        da, db = part_of(a, name), part_of(b, name)
        assert da.keys() == db.keys()
        assert all(torch.equal(da[k], db[k]) for k in da), name


@pytest.mark.parametrize("argv", [
    ["--image-size", "12"],  # digits has no 12-pixel classifier
    ["--image-size", "28"],  # mnist size for digits
    ["--dataset", "mnist", "--image-size", "28", "--channel-mult", "1,2,2,2"],  # 28 % 8
    ["--channel-mult", "1,x"],
    ["--attention", "4"],  # only 2 levels: factors 1, 2
    ["--model", "mlp"],
    ["--dropout", "1.5"],
    ["--dataset", "folder"],  # no --data
    ["--data", "somewhere"],  # --data without folder
    ["--channels", "3"],  # digits are grey
])
def test_bad_image_settings_exit_2_with_one_line(argv, tmp_path, capsys):
    code, out, err = run(capsys, "train", *TINY, *argv, "--out", tmp_path / "bad")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("difflab: error: ") and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_folder_run_trains_without_fd_and_skips_a_corrupt_file(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "pics"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(6):
            rgb = np.full((20, 24, 3), 40 * i, dtype=np.uint8)
            rgb[:, : 4 * (i + 1), 0 if cls == "a" else 2] = 255
            Image.fromarray(rgb).save(folder / cls / f"{i}.png")
    (folder / "a" / "broken.png").write_bytes(b"not a png")
    argv = [*TINY, "--dataset", "folder", "--data", folder, "--channels", "3",
            "--image-size", "8", "--out", tmp_path / "run"]
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        code, out, err = run(capsys, "train", *argv)
    assert code == 0, err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "fd" not in m and m["train_steps"] == 12
    assert (tmp_path / "run" / "samples.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run(capsys, "sample", tmp_path / "run", "--steps", "2", "-n", "3",
                       "--out", tmp_path / "x.npy")
    assert code == 0 and np.load(tmp_path / "x.npy").shape == (3, 3, 8, 8), err
    code, _, err = run(capsys, "train", *TINY, "--dataset", "folder", "--data",
                       tmp_path / "nothing", "--out", tmp_path / "bad")
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "bad").exists()
