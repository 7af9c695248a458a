"""``difflab distill`` and ``difflab train --method consistency-training``: run directories that
``sample`` and ``eval`` load, the ``consistency`` sampler, and one-line errors. Tiny 2-D MLPs,
a few dozen updates each: these check the wiring, the algorithms' tests check the maths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab import samplers, schedules
from difflab.cli import main
from difflab.config import TrainConfig, spacing_for
from difflab.distill import ConsistencyModel, distilled_steps
from difflab.parameterization import EpsFromV, EpsFromX0
from difflab.runs import checkpoint as ckpt
from difflab.runs.distill import round_steps
from difflab.runs.draw import draw, snapshot_marks
from difflab.runs.load import load_run, read_run_config

TINY = ["--steps", "40", "--hidden", "16", "--depth", "1", "--t-dim", "8", "--batch", "64",
        "--n-train", "1000", "--n-eval", "300", "--eval-steps", "5", "--warmup", "5",
        "--checkpoint-every", "40", "--no-progress"]
QUICK = ["--batch", "32", "--no-progress"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("distill") / "teacher"
    assert main(["train", *TINY, "--out", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def progressive(teacher) -> tuple[Path, list[str]]:
    out = teacher.parent / "prog"
    code = main(["distill", str(teacher), "--method", "progressive", "--rounds", "3",
                 "--start-steps", "4", "--steps-per-round", "15", "--out", str(out), "--no-eval",
                 *QUICK])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def consistency(teacher) -> Path:
    out = teacher.parent / "cd"
    code = main(["distill", str(teacher), "--method", "consistency", "--iters", "20", "--N", "6",
                 "--solver", "euler", "--out", str(out), *QUICK])
    assert code == 0
    return out


def _calls(model):
    """The model, and the list of timesteps it is called at."""
    seen = []

    def counted(x, t, **cond):
        seen.append(int(t[0]))
        return model(x, t, **cond)

    return counted, seen


# --- progressive distillation ---------------------------------------------------------------
def test_progressive_writes_one_sampleable_run_per_round(progressive, tmp_path, capsys):
    # OUT: the job (its config, loss log and ONE checkpoint) and a run directory per round
    assert sorted(p.name for p in progressive.iterdir()) == [
        "checkpoint.safetensors", "config.json", "loss.csv", "steps-1", "steps-2", "steps-4"]
    for n in (4, 2, 1):
        d = progressive / f"steps-{n}"
        cfg, model, schedule = load_run(d)
        assert (cfg.method, cfg.prediction, cfg.distilled_steps) == ("progressive", "v", n)
        assert (cfg.eval_sampler, cfg.eval_steps, cfg.eval_spacing) == ("ddim", n, "trailing")
        assert isinstance(model, EpsFromV)  # the v-network presented as an ε-model
        counted, seen = _calls(model)
        x0 = draw(counted, schedule, (7, 2), sampler=cfg.eval_sampler, steps=cfg.eval_steps,
                  spacing=spacing_for(cfg, cfg.eval_sampler))[0]
        assert seen == distilled_steps(cfg.T, n) and torch.isfinite(x0).all()  # its own grid
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["distilled_steps"] == n and metrics["round"] == {4: 1, 2: 2, 1: 3}[n]
        code, out, err = run(capsys, "sample", d, "-n", "50", "--out", tmp_path / f"{n}.npy")
        assert code == 0, err
        assert np.load(tmp_path / f"{n}.npy").shape == (50, 2)
    code, out, _ = run(capsys, "eval", progressive / "steps-2", "-n", "200")
    assert code == 0 and json.loads(out)["steps"] == 2 and json.loads(out)["sampler"] == "ddim"


def test_progressive_rounds_and_last_line(teacher, tmp_path, capsys):
    """The last line is the last round's run; a student distils further (init: a copy of its
    v-network); x0 students load as ε-models; an existing output is refused, then replaced."""
    out = tmp_path / "p"
    argv = ["distill", teacher, "--method", "progressive", "--rounds", "2", "--start-steps", "2",
            "--steps-per-round", "5", "--prediction", "x0", "--out", out, *QUICK]
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and stdout.strip().splitlines()[-1] == str(out / "steps-1")
    metrics = json.loads((out / "steps-1" / "metrics.json").read_text())  # evaluated
    assert {"swd", "swd_floor"} <= set(metrics) and metrics["steps"] == 1
    assert "SWD" in stdout and (out / "steps-2" / "samples.png").is_file()
    assert isinstance(load_run(out / "steps-1")[1], EpsFromX0)
    code, _, err = run(capsys, *argv)
    assert code == 2 and "already exists" in err
    assert run(capsys, *argv, "--overwrite", "--no-eval")[0] == 0
    code, stdout, err = run(capsys, "distill", out / "steps-2", "--method", "progressive",
                            "--rounds", "1", "--out", tmp_path / "again", "--steps-per-round",
                            "5", "--prediction", "x0", "--no-eval", *QUICK)
    assert code == 0, err
    assert load_run(tmp_path / "again" / "steps-1")[0].distilled_steps == 1


def test_round_steps():
    assert round_steps(8, 4, 1000) == [8, 4, 2, 1]
    assert round_steps(64, 1, 1000) == [64]
    for args in ((8, 5, 1000), (6, 3, 1000), (8, 0, 1000), (600, 1, 1000), (0, 1, 1000)):
        with pytest.raises(ValueError):
            round_steps(*args)


# --- consistency models --------------------------------------------------------------------
def test_consistency_distillation_samples_in_1_and_2_steps(consistency, tmp_path, capsys):
    cfg, model, schedule = load_run(consistency)
    assert cfg.method == "consistency-distillation" and isinstance(model, ConsistencyModel)
    assert (cfg.eval_sampler, cfg.eval_steps) == ("consistency", 1)
    xs = []
    for steps in (1, 2):
        f = tmp_path / f"{steps}.npy"
        code, _, err = run(capsys, "sample", consistency, "--sampler", "consistency",
                           "--steps", steps, "-n", "64", "--out", f)
        assert code == 0, err
        xs.append(np.load(f))
        assert xs[-1].shape == (64, 2) and np.isfinite(xs[-1]).all()
    assert not np.array_equal(*xs)
    code, out, _ = run(capsys, "eval", consistency, "--steps", "2", "-n", "100")
    assert code == 0 and json.loads(out)["sampler"] == "consistency"
    assert run(capsys, "sample", consistency, "-n", "8", "--steps", "2",
               "--out", tmp_path / "x.gif")[0] == 0  # frames from the callback


def test_consistency_levels_given_or_searched(consistency, tmp_path, capsys):
    cfg, model, schedule = load_run(consistency)
    code, out, err = run(capsys, "eval", consistency, "--steps", "2", "-n", "200",
                         "--search-levels")
    assert code == 0, err
    m = json.loads(out)
    found = m["levels_search"]
    assert m["levels"] == found["levels"] and len(found["levels"]) == 1
    assert model.sigma_min <= found["levels"][0] <= model.sigma_max
    assert found["score"] <= found["default_score"] and found["seed"] == 1
    assert found["probes"] == 10 + 6 + 1 + 1 and found["metric"].startswith("sliced W1")
    # --levels alone sets the steps, and the eval reports the levels it used
    code, out, err = run(capsys, "eval", consistency, "-n", "200", "--levels", "3.0,0.5")
    assert code == 0, err
    m = json.loads(out)
    assert (m["steps"], m["levels"]) == (3, [3.0, 0.5])
    assert run(capsys, "sample", consistency, "-n", "8", "--levels", "1.5",
               "--out", tmp_path / "x.npy")[0] == 0
    for argv, says in ((["--levels", "0.5,3"], "must decrease"),
                       (["--levels", "1,x"], "comma-separated numbers"),
                       (["--steps", "3", "--levels", "1"], "give 2, or leave --steps out"),
                       (["--levels", "1e6"], "outside this model's"),
                       (["--steps", "1", "--search-levels"], "needs --steps 2"),
                       (["--levels", "1", "--search-levels"], "not both"),
                       (["--nll", "--levels", "1"], "does not apply to --nll")):
        code, _, err = run(capsys, "eval", consistency, *argv)
        assert code != 0 and says in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_levels_need_the_consistency_sampler(teacher, capsys):
    code, _, err = run(capsys, "eval", teacher, "--levels", "1.0")
    assert code != 0 and "--levels applies to --sampler consistency only" in err
    code, _, err = run(capsys, "eval", teacher, "--steps", "2", "--search-levels")
    assert code != 0 and "--search-levels applies to --sampler consistency only" in err


def test_consistency_student_starts_as_the_teachers_network(progressive, teacher, tmp_path,
                                                           capsys):
    """--init copy (auto for an ε or v teacher): F_θ is the teacher's network read as a v-model
    (ConsistencyModel.v_from_schedule), so a progressive v-student is an exact start: before
    any learning f_θ(x̃, σ_t) is its one-step x̂_0 (to the σ_min shift of the boundary)."""
    student = progressive / "steps-4"  # a v-student of the tiny teacher
    out = tmp_path / "cd-copy"
    code, _, err = run(capsys, "distill", student, "--method", "consistency", "--iters", "1",
                       "--lr", "1e-30", "--threads", "1", "--no-eval", "--out", out, *QUICK)
    assert code == 0, err
    cfg, f, schedule = load_run(out)
    assert (cfg.prediction, cfg.threads) == ("v", 1) and f.sigma_data == 1.0
    s_cfg, eps_model, _ = load_run(student)
    g = torch.Generator().manual_seed(0)
    for t in (20, 500, 1000):
        x_t = torch.randn(256, 2, generator=g)
        ab = schedule.alpha_bars[t - 1]
        tt = torch.full((256,), t)
        x0_student = (x_t - (1 - ab).sqrt() * eps_model(x_t, tt)) / ab.sqrt()  # Weng eq. (11)
        sigma = float(((1 - ab) / ab).sqrt())
        with torch.no_grad():
            x0_cm = f(x_t / ab.sqrt(), sigma)
        torch.testing.assert_close(x0_cm, x0_student, rtol=0.02, atol=0.02 * sigma)
    fresh = tmp_path / "cd-fresh"
    code, _, err = run(capsys, "distill", teacher, "--method", "consistency", "--iters", "2",
                       "--init", "fresh", "--no-eval", "--out", fresh, *QUICK)
    assert code == 0, err
    cfg, f, _ = load_run(fresh)
    assert cfg.prediction == "eps" and f.sigma_data == 0.5  # EDM's preconditioning
    assert json.loads((fresh / "metrics.json").read_text())["init"] == "fresh"


def test_train_consistency_training(tmp_path, capsys):
    out = tmp_path / "ct"
    argv = ["train", *TINY, "--steps", "20", "--method", "consistency-training", "--out", out]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == str(out) and "consistency 5 steps" in stdout
    cfg, model, _ = load_run(out)
    assert cfg.method == "consistency-training" and isinstance(model, ConsistencyModel)
    # the method's own lr (linear to 0) is what the run records, not the preset's cosine; the
    # warm-up is the flag's
    assert (cfg.lr_schedule, cfg.warmup, cfg.lr_min_ratio) == ("linear", 5, 0.0)
    assert {"swd", "train_seconds"} <= set(json.loads((out / "metrics.json").read_text()))
    code, _, err = run(capsys, "sample", out, "--steps", "2", "-n", "20",
                       "--out", tmp_path / "x.npy")
    assert code == 0, err
    code, _, err = run(capsys, *argv)  # exists: refused, then replaced
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    assert run(capsys, *argv, "--overwrite", "--eval-steps", "2")[0] == 0
    assert load_run(out)[0].eval_steps == 2
    bad = [[*argv[:-1], tmp_path / "b", "--eval-sampler", "ddim"],
           [*argv[:-1], tmp_path / "c", "--variance", "learned", "--loss", "hybrid"],
           ["train", *TINY, "--method", "progressive", "--out", tmp_path / "d"],
           ["train", *TINY, "--method", "consistency-distillation", "--out", tmp_path / "e"],
           ["train", *TINY, "--prediction", "v", "--variance", "learned", "--loss", "hybrid",
            "--out", tmp_path / "f"]]
    for case in bad:
        code, _, err = run(capsys, *case)
        assert code == 2 and err.startswith("difflab: error: ") and err.count("\n") == 1, case
    assert not any((tmp_path / k).exists() for k in "bcdef")


def test_consistency_training_stops_and_resumes_exactly(tmp_path, capsys):
    argv = ["train", *TINY, "--steps", "12", "--checkpoint-every", "5",
            "--method", "consistency-training", "--n-eval", "50"]
    assert run(capsys, *argv, "--out", tmp_path / "whole")[0] == 0
    code, out, _ = run(capsys, *argv, "--out", tmp_path / "part", "--stop-after", "7")
    assert code == 0 and "--resume" in out and not (tmp_path / "part" / "metrics.json").exists()
    code, _, err = run(capsys, "train", "--resume", tmp_path / "part")
    assert code == 0, err
    for which in ("ema", "model"):
        a = ckpt.load_weights(tmp_path / "whole", which)
        b = ckpt.load_weights(tmp_path / "part", which)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), which
    assert (tmp_path / "whole" / "loss.csv").read_text() == \
        (tmp_path / "part" / "loss.csv").read_text()


# --- one-line errors --------------------------------------------------------------------------
def test_bad_input_exits_2_with_one_line(teacher, consistency, tmp_path, capsys):
    t, o = str(teacher), ["--out", str(tmp_path / "x"), "--no-progress"]
    learned = tmp_path / "learned"
    assert main(["train", *TINY, "--steps", "5", "--variance", "learned", "--loss", "hybrid",
                 "--n-eval", "50", "--out", str(learned)]) == 0
    cases = {
        "unknown method": ["distill", t, "--method", "magic", *o],
        "no method": ["distill", t, *o],
        "rounds 0": ["distill", t, "--method", "progressive", "--rounds", "0", *o],
        "below 1 step": ["distill", t, "--method", "progressive", "--rounds", "4",
                         "--start-steps", "4", *o],
        "odd steps": ["distill", t, "--method", "progressive", "--rounds", "2",
                      "--start-steps", "3", *o],
        "teacher beyond T": ["distill", t, "--method", "progressive", "--rounds", "1",
                             "--start-steps", "600", *o],
        "no rounds": ["distill", t, "--method", "progressive", *o],
        "flag of the other method": ["distill", t, "--method", "consistency", "--rounds", "2",
                                     *o],
        "solver with progressive": ["distill", t, "--method", "progressive", "--rounds", "1",
                                    "--solver", "heun", *o],
        "features on 2-D": ["distill", t, "--method", "consistency", "--distance", "features",
                            *o],
        "bad solver": ["distill", t, "--method", "consistency", "--solver", "rk4", *o],
        "N 1": ["distill", t, "--method", "consistency", "--N", "1", *o],
        "threads −1": ["distill", t, "--method", "consistency", "--threads", "-1", *o],
        "copy a learned Σ": ["distill", str(learned), "--method", "consistency", "--init",
                             "copy", *o],
        "no run": ["distill", str(tmp_path / "nope"), "--method", "consistency", *o],
        "distil a consistency run": ["distill", str(consistency), "--method", "progressive",
                                     "--rounds", "1", *o],
        "consistency sampler on an ε-run": ["sample", t, "--sampler", "consistency",
                                            "--out", str(tmp_path / "a.npy")],
        "ε-sampler on a consistency run": ["sample", str(consistency), "--sampler", "heun",
                                           "--out", str(tmp_path / "a.npy")],
        "eval ε-sampler on a consistency run": ["eval", str(consistency), "--sampler", "ddim"],
        "nll of a consistency run": ["eval", str(consistency), "--nll", "-n", "8"],
        "spacing with consistency": ["sample", str(consistency), "--spacing", "trailing",
                                     "--out", str(tmp_path / "a.npy")],
    }
    for name, argv in cases.items():
        code, out, err = run(capsys, *argv)
        assert code == 2, name
        assert err.startswith("difflab: error: ") and err.count("\n") == 1, (name, err)
        assert "Traceback" not in err, name
    assert not (tmp_path / "x").exists() and not (tmp_path / "a.npy").exists()


# --- samplers: registry, spacing, snapshot labels ------------------------------------------------
def test_consistency_sampler_contract():
    s = schedules.linear(1000)
    net = torch.nn.Linear(2, 2)
    model = ConsistencyModel.from_schedule(lambda x, c: net(x), s)
    x = samplers.SAMPLERS["consistency"](model, s, torch.randn(5, 2), steps=2,
                                         generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 2) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="consistency model"):
        samplers.SAMPLERS["consistency"](lambda x, t: x, s, torch.randn(5, 2), steps=1)
    with pytest.raises(ValueError, match="--sampler consistency"):
        draw(model, s, (3, 2), sampler="ddim", steps=2)


def test_spacing_for_and_snapshot_marks_of_the_newer_samplers():
    cos = TrainConfig(schedule="cosine")
    assert spacing_for(cos, "consistency") is None
    assert spacing_for(cos, "dpm++") is None and spacing_for(cos, "edm-heun") is None
    assert spacing_for(cos, "ddim") == "leading"
    with pytest.raises(ValueError, match="spacing"):
        spacing_for(cos, "consistency", "trailing")
    s = schedules.linear(1000)
    for sampler in ("dpm++", "edm-heun", "ddim"):
        marks = snapshot_marks(s, sampler, 20)
        assert 2 <= len(marks) <= 4 and max(marks) < 19
        assert all(label.startswith("t = ") for label in marks.values())
    # on the grids the samplers visit: dpm++ and unipc "auto" (trailing below 10 steps; from 10
    # logsnr, capped-blend for unipc; linear: no λ clip), edm-heun Karras; a named grid is the
    # one pictured
    assert snapshot_marks(s, "dpm++", 8) == snapshot_marks(s, "ddim", 8, spacing="trailing")
    assert snapshot_marks(s, "unipc", 8) == snapshot_marks(s, "dpm++", 8)
    assert snapshot_marks(s, "dpm++", 8) != snapshot_marks(s, "dpm++", 8, spacing="blend")
    assert snapshot_marks(s, "dpm++", 20) != snapshot_marks(s, "ddim", 20, spacing="trailing")
    assert snapshot_marks(s, "unipc", 20) == snapshot_marks(s, "dpm++", 20, spacing="capped-blend")
    assert snapshot_marks(s, "unipc", 20) != snapshot_marks(s, "dpm++", 20)
    assert snapshot_marks(s, "edm-heun", 20) != snapshot_marks(s, "ddim", 20)
    assert snapshot_marks(s, "consistency", 3) == {0: "f_θ, step 1", 1: "f_θ, step 2"}
    assert snapshot_marks(s, "consistency", 1) == {}


def test_distill_help(capsys):
    code, out, _ = run(capsys, "distill", "--help")
    assert code == 0 and "--rounds" in out and "--solver" in out
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "distill" in out


def _class_teacher(run_dir: Path, *extra: str) -> Path:
    """A tiny class-conditional digits run (T = 64)."""
    assert main(["train", "--dataset", "digits", "--cond", "class", "--steps", "3", "--batch",
                 "8", "--model-channels", "8", "--num-res-blocks", "1", "--attention", "",
                 "--warmup", "1", "--T", "64", "--n-eval", "10", "--eval-steps", "2",
                 "--no-progress", "--out", str(run_dir), *extra]) == 0
    return run_dir


def test_progressive_distils_a_class_conditional_teacher_with_cfg(tmp_path, capsys):
    teacher = _class_teacher(tmp_path / "cond")
    out = tmp_path / "students"
    code = main(["distill", str(teacher), "--method", "progressive", "--rounds", "2",
                 "--start-steps", "4", "--steps-per-round", "2", "--batch", "8",
                 "--guidance", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    m = json.loads((out / "steps-2" / "metrics.json").read_text())
    assert m["teacher_guidance"] == 2.0 and 0 <= m["accuracy"] <= 1  # sampled class by class
    cfg = read_run_config(out / "steps-2")
    assert cfg.cond == "class" and cfg.eval_guidance == 0.0
    capsys.readouterr()
    assert main(["sample", str(out / "steps-2"), "--class", "3", "-n", "2",
                 "--out", str(tmp_path / "x.npy")]) == 0
    capsys.readouterr()
    assert main(["distill", str(teacher), "--method", "consistency", "--guidance", "1"]) == 2
    assert "applies to --method progressive" in capsys.readouterr().err


def test_consistency_distillation_of_a_class_conditional_teacher(tmp_path, capsys):
    # the teacher evaluates itself with guidance w = 1; the student, a consistency model, is
    # sampled without (guidance acts on ε-models), so it must not inherit the teacher's w
    teacher = _class_teacher(tmp_path / "cond", "--eval-guidance", "1")
    out = tmp_path / "cd"
    assert main(["distill", str(teacher), "--method", "consistency", "--iters", "2",
                 "--batch", "8", "--N", "4", "--out", str(out), "--no-progress"]) == 0
    assert 0 <= json.loads((out / "metrics.json").read_text())["accuracy"] <= 1
    assert read_run_config(teacher).eval_guidance == 1.0
    assert read_run_config(out).eval_guidance == 0.0
    # a student distilled before that fix kept the teacher's w in its config: it still samples
    raw = json.loads((out / "config.json").read_text())
    for section in raw["config"].values():
        if "eval_guidance" in section:
            section["eval_guidance"] = 1.0
    (out / "config.json").write_text(json.dumps(raw))
    assert '"eval_guidance": 1.0' in (out / "config.json").read_text()
    assert read_run_config(out).eval_guidance == 0.0  # read as 0: it is its teacher's
    capsys.readouterr()
    assert main(["eval", str(out), "-n", "10"]) == 0
    capsys.readouterr()
    x = tmp_path / "x.npy"
    assert main(["sample", str(out), "--class", "5", "-n", "3", "--out", str(x)]) == 0
    assert np.load(x).shape == (3, 1, 8, 8)
    capsys.readouterr()
    assert main(["sample", str(out), "--class", "5", "--guidance", "2", "--out", str(x)]) == 2
    assert "consistency model" in capsys.readouterr().err


def test_stopped_inside_the_first_round_prints_how_to_resume(teacher, tmp_path, capsys):
    """--stop-after inside the first round (no student written yet), from the start and from a
    resume: exit 0 with the resume line, and OUT as the last line; then the resume finishes."""
    out = tmp_path / "early"
    argv = ["distill", teacher, "--method", "progressive", "--rounds", "2", "--start-steps", "4",
            "--steps-per-round", "6", "--checkpoint-every", "2", "--no-eval", *QUICK]
    code, printed, err = run(capsys, *argv, "--out", out, "--stop-after", "2")
    assert code == 0, err
    assert "--resume" in printed and printed.strip().splitlines()[-1] == str(out)
    code, printed, err = run(capsys, "distill", "--resume", out, "--stop-after", "4",
                             "--no-progress")
    assert code == 0, err
    assert "--resume" in printed and printed.strip().splitlines()[-1] == str(out)
    code, printed, err = run(capsys, "distill", "--resume", out, "--no-progress")
    assert code == 0, err
    assert printed.strip().splitlines()[-1] == str(out / "steps-2")  # rounds: 4, then 2
