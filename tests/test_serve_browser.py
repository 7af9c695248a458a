"""``difflab serve`` in a real headless browser (issue 18): the system's Chromium driven by
Playwright loads the page, fills the form, samples, and sees the grid, the animation and the
download link; a bad value shows the server's one-line message. Skipped where Playwright or a
Chromium is not installed (Debian: ``apt-get install chromium``; no browser is downloaded)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from difflab.cli.serve_app import RunSampler, make_server
from difflab.config import load_config
from difflab.runs.train import train

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright")


def chromium() -> str | None:
    """A Chromium of the system (DIFFLAB_CHROMIUM, else the usual names on PATH)."""
    given = os.environ.get("DIFFLAB_CHROMIUM")
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


pytestmark = pytest.mark.skipif(chromium() is None, reason="no Chromium installed")

DIGITS = dict(dataset="digits", steps=8, batch=16, model_channels=8, num_res_blocks=1,
              attention="", warmup=2, eval_sampler="ddim", eval_steps=4, T=100, threads=1,
              device="cpu", cond="class", eval_guidance=1.0)


@contextmanager
def serving(run: Path):
    server = make_server(RunSampler(run, device="cpu", max_n=16), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def browser_page():
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=chromium(), headless=True,
                                        args=["--no-sandbox", "--disable-gpu"])
        except sync_api.Error as err:  # a Chromium that Playwright cannot drive
            pytest.skip(f"cannot start {chromium()}: {str(err).splitlines()[0]}")
        try:
            yield browser.new_page(viewport={"width": 1100, "height": 560})
        finally:
            browser.close()


def test_the_page_samples_in_a_browser(tmp_path):
    run = tmp_path / "digits"
    train(load_config(None, DIGITS), run, progress=False, evaluate_after=False)
    with serving(run) as url, browser_page() as page:
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=20_000)
        assert page.input_value("#steps") == "4"  # the run's defaults fill the form
        assert page.is_visible("#class") and not page.is_visible("#prompt")  # a class run
        page.fill("#class", "3")
        page.fill("#n", "6")
        page.fill("#seed", "5")
        page.select_option("#sampler", "ddim")
        page.click("#go")
        page.wait_for_selector("body[data-sampled='1']", timeout=30_000)
        grid = page.get_attribute("#grid", "src")
        assert grid.startswith("data:image/png;base64,")
        # the picture is decoded and shown at its size
        width = page.evaluate("document.getElementById('grid').naturalWidth")
        with Image.open(io.BytesIO(base64.b64decode(grid.split(",", 1)[1]))) as im:
            assert width == im.width > 0
        assert page.get_attribute("#animation", "src").startswith("data:image/gif;base64,")
        assert page.is_visible("#download")
        assert page.get_attribute("#download", "download").endswith("-seed5.png")
        assert page.inner_text("#error") == ""
        assert "ddim (linspace)" in page.inner_text("#status")  # the grid sampled
        # a bad value: the server's one line, shown on the page
        page.fill("#class", "12")  # (the form's own checks keep steps and n in range)
        page.click("#go")
        page.wait_for_function("document.getElementById('error').textContent !== ''",
                               timeout=20_000)
        assert "class labels must lie in 0..9" in page.inner_text("#error")
        assert page.get_attribute("#grid", "src") == grid  # the last samples stay
        # the sampler's own settings: DDIM's η, a solver's time grids
        page.fill("#class", "3")
        assert page.is_visible("#eta") and not page.is_visible("#levels")
        page.select_option("#sampler", "unipc")
        assert not page.is_visible("#eta") and page.is_visible("#spacing")
        grids = page.eval_on_selector_all("#spacing option", "os => os.map(o => o.value)")
        assert grids[0] == "" and "blend" in grids and "logsnr" in grids
        page.select_option("#spacing", "blend")
        page.click("#go")
        page.wait_for_selector("body[data-sampled='2']", timeout=30_000)
        assert "unipc (blend)" in page.inner_text("#status")
        assert page.inner_text("#error") == ""
