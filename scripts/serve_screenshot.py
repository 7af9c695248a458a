"""The screenshot of ``difflab serve`` in docs/serve.png: the page of a run in headless Chromium
(the system's, driven by Playwright), after one click on Sample.

    difflab train --preset digits-cond --out runs/digits-cond
    python scripts/serve_screenshot.py runs/digits-cond --class 0,1,2,3,4,5,6,7,8,9 -n 40 \
        --guidance 2

It needs ``pip install playwright`` and a Chromium (Debian: ``apt-get install chromium``); no
browser is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
import threading

from playwright.sync_api import sync_playwright

from difflab.cli.serve_app import RunSampler, make_server


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--out", default="docs/serve.png")
    p.add_argument("--class", dest="labels", default="")
    p.add_argument("--guidance", default="")
    p.add_argument("-n", default="16")
    p.add_argument("--seed", default="0")
    p.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    p.add_argument("--size", default="1180x490", help="viewport WxH")
    args = p.parse_args()
    server = make_server(RunSampler(args.run, device="cpu"), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    width, height = (int(v) for v in args.size.split("x"))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True,
                                         args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_selector("body[data-ready='1']")
            for field, value in (("#class", args.labels), ("#guidance", args.guidance),
                                 ("#n", args.n), ("#seed", args.seed)):
                if value and page.is_visible(field):
                    page.fill(field, value)
            page.click("#go")
            page.wait_for_selector("body[data-sampled='1']", timeout=600_000)
            page.wait_for_timeout(2500)  # the animation under way
            page.screenshot(path=args.out)
            browser.close()
    finally:
        server.shutdown()
    print(args.out)


if __name__ == "__main__":
    main()
