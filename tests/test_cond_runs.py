"""Conditional runs end to end: condition dropout in training (difflab.build.conditioning), the
guided model the samplers see, and the CLI's --class/--prompt/--guidance/--classifier/--threshold
and train-classifier, with one-line errors for bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.build.conditioning import TrainConditions, guided, sample_conditions
from difflab.build.model import build_model, build_schedule
from difflab.cli import main
from difflab.config import load_config
from difflab.guidance import ClassifierFree, Thresholded, dynamic_threshold
from difflab.runs import checkpoint as ckpt
from difflab.runs.load import read_run_config
from difflab.runs.train import train
from helpers import needs_text

TINY = ["--dataset", "digits", "--steps", "8", "--batch", "16", "--model-channels", "8",
        "--num-res-blocks", "1", "--attention", "", "--warmup", "2", "--eval-sampler", "ddim",
        "--eval-steps", "4", "--n-eval", "20", "--checkpoint-every", "5", "--no-progress",
        "--T", "100"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err




@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cond")
    out = {"class": root / "class", "plain": root / "plain", "classifier": root / "clf"}
    assert main(["train", *TINY, "--cond", "class", "--eval-guidance", "1",
                 "--out", str(out["class"])]) == 0
    assert main(["train", *TINY, "--out", str(out["plain"])]) == 0
    assert main(["train-classifier", "--steps", "5", "--batch", "16", "--model-channels", "8",
                 "--num-res-blocks", "1", "--attention", "", "--no-progress", "--T", "100",
                 "--out", str(out["classifier"])]) == 0
    return out


# --- condition dropout -------------------------------------------------------------------------
def test_batch_draws_allowed_rows_and_drops_at_rate_p_uncond():
    K, J, N, B = 10, 3, 50, 20_000
    y = torch.arange(N) % K
    table = {"y": torch.arange(K * J)}  # row k·J + j: "template j of class k"
    conds = TrainConditions(table, y[:, None] * J + torch.arange(J), {"y": torch.tensor([-1])})
    idx = torch.randint(N, (B,), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    kept = conds.batch(idx, g, 0.0)["y"]  # (B,)
    assert torch.equal(kept // J, y[idx])  # always one of the example's own rows
    assert set((kept % J).tolist()) == set(range(J))  # and every one of them
    p = 0.3
    dropped = (conds.batch(idx, g, p)["y"] == -1).double().mean().item()
    assert abs(dropped - p) < 4 * math.sqrt(p * (1 - p) / B)  # binomial, 4 standard errors
    assert (conds.batch(idx, g, 0.999999)["y"] == -1).all()


def test_text_batch_drops_tokens_and_mask_together():
    L, D = 4, 3
    table = {"context": torch.randn(2, L, D) + 5, "context_mask": torch.ones(2, L, dtype=bool)}
    null = {"context": torch.zeros(1, L, D), "context_mask": torch.zeros(1, L, dtype=bool)}
    conds = TrainConditions(table, torch.tensor([[0], [1]]), null)
    out = conds.batch(torch.tensor([0, 1] * 500), torch.Generator().manual_seed(0), 0.5)
    dropped = ~out["context_mask"].any(1)  # (B,)
    assert 0.4 < dropped.double().mean() < 0.6
    assert (out["context"][dropped] == 0).all() and (out["context"][~dropped] > 0).all()


def test_config_rejects_bad_conditioning():
    for bad, what in (({"cond": "class"}, "image data"), ({"cond": "sound"}, "one of"),
                      ({"dataset": "digits", "cond": "class", "p_uncond": 1.0}, "[0, 1)"),
                      ({"dataset": "digits", "eval_guidance": 1.0}, "conditional run"),
                      ({"dataset": "digits", "cond": "class", "eval_guidance": -1.0}, ">= 0")):
        with pytest.raises(ValueError, match=re.escape(what)):
            load_config(None, bad)


# --- the guided model -------------------------------------------------------------------------
def _class_model():
    cfg = load_config(None, {"dataset": "digits", "cond": "class", "num_classes": 10,
                             "model_channels": 8, "num_res_blocks": 1, "attention": ""})
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    for p in net.parameters():  # zero-initialised output layers would hide the condition
        p.data.add_(0.05 * torch.randn_like(p))
    return cfg, net, build_schedule(cfg)


def test_guided_is_the_plain_model_at_w0_and_eq26_above():
    cfg, net, schedule = _class_model()
    cond, y = sample_conditions(cfg, 12)
    assert torch.equal(y, torch.arange(12) % 10)
    x, t = torch.randn(12, 1, 8, 8), torch.full((12,), 500)
    with torch.no_grad():
        plain = guided(net, schedule, cfg, cond, w=0.0)(x, t)
        assert torch.equal(plain, net(x, t, y=y))
        w = 2.0
        eps_c, eps_u = net(x, t, y=y), net(x, t, y=torch.full_like(y, 10))
        got = guided(net, schedule, cfg, cond, w=w)(x, t)
        torch.testing.assert_close(got, (w + 1) * eps_c - w * eps_u, atol=1e-5, rtol=1e-5)
    wrapped = guided(net, schedule, cfg, cond, w=w, threshold="dynamic").model
    assert isinstance(wrapped, Thresholded) and isinstance(wrapped.model, ClassifierFree)
    x0 = 3 * torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for p in (0.995, 0.8):  # the percentile reaches the threshold
        thr = guided(net, schedule, cfg, cond, w=w, threshold="dynamic", threshold_p=p).model
        assert torch.equal(thr.threshold(x0), dynamic_threshold(x0, p=p))
    assert not torch.equal(dynamic_threshold(x0, p=0.8), dynamic_threshold(x0))


def test_sample_conditions_errors():
    cfg, _, _ = _class_model()
    with pytest.raises(ValueError, match="0..9"):
        sample_conditions(cfg, 4, labels=[3, 10])
    with pytest.raises(ValueError, match="empty prompt"):
        sample_conditions(cfg, 4, prompt="  ")
    with pytest.raises(ValueError, match="text-conditional"):
        sample_conditions(cfg, 4, prompt="a seven")


# --- runs and the CLI -------------------------------------------------------------------------
def test_class_run_records_accuracy_and_guidance(runs):
    m = json.loads((runs["class"] / ckpt.METRICS).read_text())
    assert 0 <= m["accuracy"] <= 1 and m["guidance"] == 1.0
    cfg = read_run_config(runs["class"])
    assert cfg.cond == "class" and cfg.num_classes == 10  # resolved from the data
    clf = json.loads((runs["classifier"] / ckpt.METRICS).read_text())
    assert set(clf["test_accuracy_at_t"]) == {"1", "10", "25", "50", "75", "100"}  # T = 100


def test_cond_run_resumes_exactly(tmp_path):
    cfg = load_config(None, {"dataset": "digits", "cond": "class", "steps": 6, "batch": 8,
                             "model_channels": 8, "num_res_blocks": 1, "attention": "",
                             "warmup": 1, "checkpoint_every": 3, "p_uncond": 0.5})
    a = train(cfg, tmp_path / "a", progress=False, evaluate_after=False)
    b = train(cfg, tmp_path / "b", progress=False, max_steps=3)
    train(cfg, b, resume=True, progress=False, evaluate_after=False)
    wa, wb = ckpt.load_weights(a), ckpt.load_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sample_and_eval_with_guidance(runs, tmp_path, capsys):
    out = tmp_path / "seven.npy"
    code, _, err = run(capsys, "sample", runs["class"], "--class", "7", "--guidance", "2",
                       "--threshold", "dynamic", "-n", "6", "--steps", "3", "--out", out)
    assert code == 0, err
    code, _, err = run(capsys, "sample", runs["class"], "--class", "7", "--guidance", "2",
                       "--threshold", "dynamic", "--threshold-p", "0.9", "-n", "6", "--steps",
                       "3", "--out", tmp_path / "p.npy")
    assert code == 0, err
    assert not np.array_equal(np.load(out), np.load(tmp_path / "p.npy"))  # p reached x̂_0
    code, text, err = run(capsys, "eval", runs["plain"], "--classifier", runs["classifier"],
                          "--class", "3", "-n", "10", "--steps", "3", "--guidance", "4")
    assert code == 0, err
    m = json.loads(text)
    assert m["guidance"] == 4.0 and m["class"] == "3" and 0 <= m["accuracy"] <= 1
    code, text, err = run(capsys, "eval", runs["class"], "--classifier", runs["classifier"],
                          "-n", "10", "--steps", "100", "--sampler", "ddpm")
    assert code == 0, err  # Algorithm 1 on the full chain, on a conditional model


def test_bad_conditioning_input_exits_2_with_one_line(runs, tmp_path, capsys):
    o = ["--out", tmp_path / "x.png"]
    mismatched = tmp_path / "clf-cosine"
    assert main(["train-classifier", "--steps", "1", "--batch", "4", "--model-channels", "8",
                 "--num-res-blocks", "1", "--attention", "", "--schedule", "cosine", "--T", "100",
                 "--no-progress", "--out", str(mismatched)]) == 0
    capsys.readouterr()
    cases = {
        "label out of range": ["sample", runs["class"], "--class", "10", *o],
        "label not a number": ["sample", runs["class"], "--class", "seven", *o],
        "an empty label": ["sample", runs["class"], "--class", "1,,2", *o],
        "no label": ["sample", runs["class"], "--class", "", *o],
        "negative w": ["sample", runs["class"], "--guidance", "-1", *o],
        "nan w": ["eval", runs["class"], "--guidance", "nan"],
        "empty prompt": ["sample", runs["class"], "--prompt", "", *o],
        "prompt on a class run": ["sample", runs["class"], "--prompt", "a seven", *o],
        "class on an unconditional run": ["sample", runs["plain"], "--class", "3", *o],
        "cfg on an unconditional run": ["eval", runs["plain"], "--guidance", "2"],
        "classifier as the run": ["sample", runs["classifier"], *o],
        "run as the classifier": ["eval", runs["plain"], "--classifier", runs["plain"]],
        "schedule mismatch": ["eval", runs["plain"], "--classifier", mismatched],
        "bad threshold": ["sample", runs["class"], "--threshold", "soft", *o],
        "threshold p without dynamic": ["sample", runs["class"], "--threshold", "static",
                                        "--threshold-p", "0.9", *o],
        "threshold p above 1": ["sample", runs["class"], "--threshold", "dynamic",
                                "--threshold-p", "1.5", *o],
        "classifier on 2-D data": ["train-classifier", "--dataset", "moons", "--out",
                                   tmp_path / "c"],
        "existing classifier": ["train-classifier", "--out", runs["classifier"]],
        "guidance with --nll": ["eval", runs["class"], "--nll", "--guidance", "1"],
    }
    for name, argv in cases.items():
        code, out, err = run(capsys, *argv)
        assert code == 2, f"{name}: exit {code}"
        assert err.count("\n") == 1 and err.startswith("difflab: error: "), f"{name}: {err!r}"
        assert "Traceback" not in err and out == "", name


@needs_text
def test_text_run_samples_from_prompts_and_templates(tmp_path, capsys):
    run_dir = tmp_path / "text"
    code, _, err = run(capsys, "train", *TINY, "--cond", "text", "--text-tokens", "8",
                       "--out", run_dir)
    assert code == 0, err
    assert read_run_config(run_dir).cond == "text"
    code, text, err = run(capsys, "eval", run_dir, "--prompt", "a handwritten three",
                          "--class", "3", "--guidance", "2", "-n", "6", "--steps", "3")
    assert code == 0, err
    assert json.loads(text)["prompt"] == "a handwritten three"
    code, _, err = run(capsys, "sample", run_dir, "--prompt", " ", "--out", tmp_path / "x.png")
    assert code == 2 and "empty prompt" in err
