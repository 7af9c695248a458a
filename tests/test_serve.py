"""``difflab serve`` at the HTTP level (issue 18): the page, the run's settings, samples that are
the PNGs ``difflab sample`` writes (so deterministic per seed), the animation, 400 with one line
for bad requests, and the command's own one-line errors. The server runs in a thread on a free
port of 127.0.0.1, on tiny runs trained here."""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difflab.cli import build_parser
from difflab.cli.serve_app import RunSampler, make_server
from difflab.config import load_config
from difflab.runs.train import train
from helpers import needs_text, one_error_line, run_cli

DIGITS = dict(dataset="digits", steps=8, batch=16, model_channels=8, num_res_blocks=1,
              attention="", warmup=2, eval_sampler="ddim", eval_steps=4, T=100, threads=1,
              device="cpu", cond="class", eval_guidance=1.0)
POINTS = dict(steps=20, hidden=16, depth=1, t_dim=8, batch=64, n_train=1000, eval_steps=4,
              warmup=5, threads=1, device="cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A class-conditional digits run, a 2-D run, a 2-D consistency-training run and a 2-D run
    on the cosine schedule evaluated with DDIM (trained, not evaluated)."""
    root = tmp_path_factory.mktemp("serve")
    out = {name: root / name for name in ("digits", "points", "ct", "cosine")}
    ct = {**POINTS, "method": "consistency-training", "eval_sampler": "consistency",
          "eval_steps": 1}
    cosine = {**POINTS, "schedule": "cosine", "eval_sampler": "ddim"}
    for name, values in (("digits", DIGITS), ("points", POINTS), ("ct", ct),
                         ("cosine", cosine)):
        train(load_config(None, values), out[name], progress=False, evaluate_after=False)
    return out


@contextmanager
def serving(run: Path, **kw):
    """The page of ``run`` on a free port of 127.0.0.1, in a thread; yields its base URL."""
    server = make_server(RunSampler(run, device="cpu", **kw), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def digits(runs):
    with serving(runs["digits"], max_n=16) as url:
        yield url


def get(url: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def png_pixels(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def test_page_and_settings(digits):
    status, kind, body = get(digits + "/")
    assert status == 200 and kind.startswith("text/html")
    assert b'id="controls"' in body and b"/api/sample" in body
    status, kind, body = get(digits + "/api/run")
    info = json.loads(body)
    assert status == 200 and kind == "application/json"
    assert info["cond"] == "class" and info["dataset"] == "digits" and info["image"]
    assert info["T"] == 100 and info["steps"] == 4 and info["max_n"] == 16
    assert "ddim" in info["samplers"] and "consistency" not in info["samplers"]


def test_png_is_what_difflab_sample_writes(digits, runs, tmp_path, capsys):
    """Same settings → the same picture as the command line, pixel for pixel: the page
    samples through the CLI's code (and so is deterministic per seed)."""
    query = "class=3,5&guidance=2&sampler=ddim&steps=4&seed=7&n=6"
    status, kind, body = get(f"{digits}/sample.png?{query}")
    assert status == 200 and kind == "image/png"
    served = png_pixels(body)
    out = tmp_path / "cli.png"
    code, _, err = run_cli(capsys, "sample", runs["digits"], "--class", "3,5", "--guidance", "2",
                           "--sampler", "ddim", "--steps", "4", "--seed", "7", "-n", "6",
                           "--device", "cpu", "--no-progress", "--out", out)
    assert code == 0, err
    expected = png_pixels(out.read_bytes())
    # 6 grey images of 8×8 in 3 columns and 2 rows with 1-pixel gaps, each pixel 4×4
    assert served.shape == expected.shape == ((2 * 9 + 1) * 4, (3 * 9 + 1) * 4)
    assert np.array_equal(served, expected)
    assert served.std() > 0  # not a blank picture


def test_seed_and_class_change_the_samples(digits):
    base = "sampler=ddim&steps=4&n=4&guidance=3"
    a, b, c, d = (png_pixels(get(f"{digits}/sample.png?{base}&{q}")[2])
                  for q in ("seed=1&class=2", "seed=1&class=2", "seed=2&class=2",
                            "seed=1&class=8"))
    assert np.array_equal(a, b)  # sampled twice, the same
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_api_sample_gives_the_grid_and_the_animation(digits):
    query = "class=1&sampler=ddim&steps=4&seed=3&n=5"
    status, kind, body = get(f"{digits}/api/sample?{query}")
    assert status == 200 and kind == "application/json"
    result = json.loads(body)
    head, grid = result["grid"].split(",", 1)
    assert head == "data:image/png;base64"
    assert np.array_equal(png_pixels(base64.b64decode(grid)),
                          png_pixels(get(f"{digits}/sample.png?{query}")[2]))
    head, gif = result["animation"].split(",", 1)
    assert head == "data:image/gif;base64"
    with Image.open(io.BytesIO(base64.b64decode(gif))) as im:
        assert im.format == "GIF" and im.n_frames == 1 + 4  # x_T and one frame per step
    assert result["settings"] == {"sampler": "ddim", "steps": 4, "spacing": "linspace",
                                  "grid": "linspace", "eta": 0.0,
                                  "levels": None, "n": 5, "seed": 3, "class": "1",
                                  "prompt": None, "guidance": None}
    status, kind, body = get(f"{digits}/reverse.gif?{query}")
    assert status == 200 and kind == "image/gif" and body == base64.b64decode(gif)


@pytest.mark.parametrize("query, words", [
    ("steps=0", "steps must lie in 1..T"),
    ("steps=abc", "steps must be an integer"),
    ("seed=-1", "seed must lie in"),
    ("sampler=nope", "unknown sampler 'nope'"),
    ("sampler=dpm++sde", "a + in a URL reads as a space; write sampler=dpm%2B%2Bsde"),
    ("n=17", "n must lie in 1..16"),
    ("n=0", "n must lie in 1..16"),
    ("guidance=-1", "guidance must be a number >= 0"),
    ("guidance=x", "guidance must be a number"),
    ("class=12", "class labels"),
    ("class=a", "class must be one class or several"),
    ("class=1,,2", "class must be one class or several"),
    ("foo=1", "unknown parameter 'foo'"),
    ("steps=3&steps=4", "given 2 times"),
    ("sampler=consistency", "needs a consistency model"),
    ("prompt=a+seven", "prompt needs a text-conditional run"),
    ("sampler=ddim&spacing=blend", "spacing blend is not a grid of sampler ddim; choose one of "
     "linspace, leading, trailing"),
    ("sampler=consistency&spacing=trailing", "needs a consistency model"),
    ("eta=x", "eta must be a number"),
    ("eta=-1", "eta must be >= 0"),
    ("sampler=unipc&eta=0.5", "eta applies to sampler ddim only"),
    ("sampler=ddim&levels=1.0", "levels applies to sampler consistency only"),
])
def test_bad_requests_are_400_with_one_line(digits, query, words):
    status, kind, body = get(f"{digits}/api/sample?{query}")
    text = body.decode()
    assert status == 400 and kind.startswith("text/plain"), (status, text)
    assert text.count("\n") == 1 and words in text, text
    assert not text.startswith("-")  # the parameter named as the page names it, not a flag
    assert get(f"{digits}/sample.png?{query}")[0] == 400


def test_time_grid_and_eta_are_those_of_difflab_sample(digits, runs, tmp_path, capsys):
    """``spacing`` and ``eta`` give the PNG of ``difflab sample --spacing/--eta``, and the page
    lists each sampler's grids as --spacing takes them."""
    info = json.loads(get(digits + "/api/run")[2])
    assert info["spacings"]["ddim"] == ["linspace", "leading", "trailing"]
    assert {"logsnr", "karras", "angle", "blend"} <= set(info["spacings"]["unipc"])
    assert info["spacings"]["edm-heun"][0] == "karras" and info["eta"] == 0.0
    for query, flags in (("sampler=unipc&spacing=blend", ["--sampler", "unipc", "--spacing",
                                                          "blend"]),
                         ("sampler=ddim&eta=1", ["--sampler", "ddim", "--eta", "1"])):
        status, _, body = get(f"{digits}/sample.png?{query}&steps=3&seed=4&n=4&class=2")
        assert status == 200, body
        out = tmp_path / "cli.png"
        code, _, err = run_cli(capsys, "sample", runs["digits"], *flags, "--steps", "3",
                               "--seed", "4", "-n", "4", "--class", "2", "--device", "cpu",
                               "--no-progress", "--out", out)
        assert code == 0, err
        assert np.array_equal(png_pixels(body), png_pixels(out.read_bytes()))
    default, blend = (png_pixels(get(f"{digits}/sample.png?sampler=unipc&steps=3&n=4{g}")[2])
                      for g in ("", "&spacing=blend"))
    assert not np.array_equal(default, blend)  # the grid reached the sampler


def test_settings_name_the_grid_sampled_as_eval_records_it(digits):
    """The settings report the spacing sampled with (the run's when the query names none) and
    the grid that a solver's "auto" stands for at the steps asked, as ``difflab eval`` does."""
    for query, spacing, grid in (("sampler=unipc&steps=10", "auto", "capped-blend"),
                                 ("sampler=unipc&steps=3", "auto", "trailing"),
                                 ("sampler=dpm%2B%2B&steps=10", "auto", "logsnr"),
                                 ("sampler=unipc&steps=10&spacing=blend", "blend", "blend"),
                                 ("sampler=ddim&steps=3&spacing=trailing", "trailing",
                                  "trailing")):
        status, _, body = get(f"{digits}/api/sample?{query}&n=2&class=1")
        assert status == 200, body
        settings = json.loads(body)["settings"]
        assert (settings["spacing"], settings["grid"]) == (spacing, grid), query


def test_settings_name_the_runs_own_spacing(runs):
    """Without a spacing in the query a run samples with its eval_spacing: "auto" on the
    cosine schedule is "leading" for DDIM (config.spacing_for), and the settings say so."""
    with serving(runs["cosine"]) as url:
        status, _, body = get(f"{url}/api/sample?sampler=ddim&steps=4&n=8")
        assert status == 200, body
        settings = json.loads(body)["settings"]
        assert (settings["spacing"], settings["grid"]) == ("leading", "leading")


def test_a_consistency_run_takes_levels(runs):
    """A consistency run's page offers the consistency sampler only, takes re-noising levels
    (which set the steps) and refuses levels outside its σ range, with one line."""
    with serving(runs["ct"]) as url:
        info = json.loads(get(url + "/api/run")[2])
        assert info["samplers"] == ["consistency"] and info["spacings"] == {"consistency": []}
        status, _, body = get(f"{url}/api/sample?levels=2.0,0.5&n=20&seed=1")
        assert status == 200, body
        settings = json.loads(body)["settings"]
        assert settings["steps"] == 3 and settings["levels"] == [2.0, 0.5]
        a, b = (png_pixels(get(f"{url}/sample.png?n=20&seed=1&levels={v}")[2])
                for v in ("2.0,0.5", "5.0,0.5"))
        assert not np.array_equal(a, b)  # the levels reached the sampler
        for query, words in (("levels=0.5,2.0", "levels must decrease"),
                             ("levels=1e6", "outside this model's [σ_min, σ_max]"),
                             ("levels=1,0.5&steps=2", "steps 2 re-noises 1 times"),
                             ("spacing=trailing", "spacing does not apply to sampler "
                              "consistency")):
            status, _, body = get(f"{url}/api/sample?{query}")
            assert status == 400 and words in body.decode(), (query, body)


def test_unknown_page_is_404(digits):
    assert get(digits + "/nothing")[0] == 404


def test_a_2d_run_serves_a_scatter_plot(runs):
    with serving(runs["points"]) as url:
        info = json.loads(get(url + "/api/run")[2])
        assert info["cond"] == "none" and not info["image"]
        status, _, body = get(f"{url}/sample.png?n=50&steps=4&sampler=ddim&seed=0")
        assert status == 200 and png_pixels(body).std() > 0
        status, _, body = get(f"{url}/sample.png?class=1")
        assert status == 400 and b"image runs only" in body


def test_serve_binds_localhost_by_default():
    args = build_parser().parse_args(["serve", "RUN"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)


def test_serve_errors_are_one_line(tmp_path, capsys, runs):
    code, _, err = run_cli(capsys, "serve", tmp_path / "missing")
    assert one_error_line(code, err), err
    code, _, err = run_cli(capsys, "serve", runs["digits"], "--port", "70000")
    assert one_error_line(code, err) and "--port" in err, err
    with serving(runs["points"]) as url:  # its port is taken
        port = url.rsplit(":", 1)[1]
        code, _, err = run_cli(capsys, "serve", runs["points"], "--port", port)
        assert one_error_line(code, err) and "cannot serve" in err, err


def test_serve_command_serves_until_ctrl_c(runs, capsys):
    """``difflab serve RUN --port 0`` as users run it: it prints its address, answers, and
    Ctrl-C (SIGINT) ends it with exit code 0."""
    import os
    import signal
    import subprocess
    import sys

    code, out, _ = run_cli(capsys, "serve", "--help")
    assert code == 0 and "--port" in out and "127.0.0.1" in out
    proc = subprocess.Popen([sys.executable, "-m", "difflab", "serve", str(runs["points"]),
                             "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            # Ctrl-C as in a terminal, even where these tests run as a background
                            # job (started with SIGINT ignored, which the child would inherit)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()  # "serving RUN at http://127.0.0.1:PORT/ (Ctrl-C stops)"
        assert line.startswith("serving ") and "http://127.0.0.1:" in line, line
        url = line.split(" at ", 1)[1].split()[0]
        info = json.loads(get(url + "api/run")[2])
        assert info["run"] == "points"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@needs_text
def test_a_text_run_samples_from_a_prompt(tmp_path):
    """A text-conditional run: the prompt changes the samples."""
    run = tmp_path / "text"
    values = {**DIGITS, "cond": "text", "text_tokens": 8}
    train(load_config(None, values), run, progress=False, evaluate_after=False)
    with serving(run) as url:
        assert json.loads(get(url + "/api/run")[2])["cond"] == "text"
        base = "sampler=ddim&steps=3&n=4&seed=0&guidance=3"
        a, b = (get(f"{url}/sample.png?{base}&prompt={p}") for p in
                ("a+handwritten+three", "a+handwritten+seven"))
        assert a[0] == b[0] == 200
        assert not np.array_equal(png_pixels(a[2]), png_pixels(b[2]))
