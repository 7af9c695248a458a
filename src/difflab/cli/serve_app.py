"""The web page of ``difflab serve``: a standard-library HTTP server around one loaded run.

Routes (all GET):

- ``/``: the page (``difflab/assets/serve.html``: a form, the grid, the animation, a download);
- ``/api/run``: the run's settings as JSON (dataset, conditioning, samplers, defaults, limits);
- ``/api/sample?…``: samples as JSON: ``grid`` (a PNG) and ``animation`` (the reverse process
  x_T → x_0 as a GIF), both as ``data:`` URLs, and the ``settings`` used; their ``spacing`` and
  ``grid`` are the time grid as ``difflab eval`` records it: the spacing sampled with (when the
  query names none, the run's ``eval_spacing``, else the sampler's own default) and the grid a
  solver's "auto" stands for at those steps;
- ``/sample.png?…`` and ``/reverse.gif?…``: the same pictures as files.

The query takes ``class`` (K or K,K,… cycled over the samples), ``prompt``, ``guidance``,
``sampler``, ``steps``, ``spacing`` (the time grid: one of the sampler's, as ``--spacing``),
``eta`` (DDIM's η), ``levels`` (a consistency sample's re-noising σ's, as ``--levels``), ``seed``
and ``n``; a parameter left out (or empty) means what ``difflab sample`` does without its flag.
Sampling goes through the code of ``difflab sample``: the flags' checks
(:func:`~difflab.cli.common.sampling_args`, :func:`~difflab.cli.levels.levels_arg`), the guided
model (:func:`~difflab.cli.guidance_flags.guided_from_args`), :func:`difflab.runs.draw.draw` and
the pictures of :func:`~difflab.cli.sample.write_samples`; so a page's PNG is the PNG that
``difflab sample RUN --out x.png`` with the same settings writes. One sampling runs at a time.
A bad request (an unknown or malformed parameter, a value that ``difflab sample`` refuses, more
than ``max_n`` samples) is answered 400 with one line of text.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..errors import DifflabError
from ..samplers import grids_of
from .common import SAMPLER_NAMES, UsageError, one_line

PARAMS = ("class", "prompt", "guidance", "sampler", "steps", "spacing", "eta", "levels", "seed",
          "n")
N_DEFAULT, MAX_N = 16, 64
GIF_MAX_FRAMES, GIF_IMAGES, GIF_POINTS = 40, 64, 2000  # the animation (cf. difflab sample)
_FLAG = re.compile(r"(?<![\w-])--?(" + "|".join(PARAMS) + r")\b")


class BadRequestError(DifflabError):
    """A request the page answers with 400 and this one-line message."""


@dataclass
class Pictures:
    png: bytes  # the grid of the samples (images) or their scatter plot (2-D points)
    gif: bytes  # the reverse process x_T → x_0
    settings: dict  # what was sampled: sampler, steps, spacing, eta, levels, n, seed, class, …


class RunSampler:
    """One run, loaded once, sampled on request (one request at a time)."""

    def __init__(self, run_dir: str | Path, device: str = "auto", precision: str = "fp32",
                 max_n: int = MAX_N):
        from ..config import CONSISTENCY_METHODS, is_image
        from ..runs.controlnet_model import run_config
        from ..runs.draw import model_device
        from ..runs.latent import load_codec
        from ..runs.load import load_run
        from .common import autocast_network

        self.run_dir = Path(run_dir)
        kind = run_config(run_dir)[0]
        if kind == "controlnet":
            raise UsageError(f"{run_dir} is a ControlNet run, which samples from hints; use "
                             "'difflab sample RUN --hint FILE'")
        self.cfg, model, self.schedule = load_run(run_dir, device=device)
        if self.cfg.sr_low_res:
            raise UsageError(f"{run_dir} is a super-resolution run; it samples in a cascade "
                             "('difflab sample --cascade BASE,SR')")
        self.image = is_image(self.cfg.dataset)
        self.codec = load_codec(run_dir, self.cfg, model_device(model))
        self.model = autocast_network(model, precision)
        self.consistency = self.cfg.method in CONSISTENCY_METHODS
        self.max_n = max_n
        self.lock = threading.Lock()

    def info(self) -> dict:
        """What the page needs to build its form."""
        cfg = self.cfg
        samplers = (["consistency"] if self.consistency
                    else [s for s in SAMPLER_NAMES if s != "consistency"])
        # each sampler's time grids, as --spacing takes them ("" on the page: the run's default)
        spacings = {s: list(grids_of(s)) for s in samplers}
        return {"run": self.run_dir.name, "dataset": cfg.dataset, "image": self.image,
                "cond": cfg.cond, "samplers": samplers, "sampler": cfg.eval_sampler,
                "spacings": spacings, "eta": cfg.eval_eta,
                "steps": cfg.eval_steps, "T": cfg.T, "guidance": cfg.eval_guidance,
                "n": min(N_DEFAULT, self.max_n), "max_n": self.max_n}

    def args(self, query: dict[str, list[str]]) -> argparse.Namespace:
        """The query as the flags of ``difflab sample``; BadRequestError for a malformed one."""
        unknown = sorted(set(query) - set(PARAMS))
        if unknown:
            raise BadRequestError(f"unknown parameter {unknown[0]!r}; known: {', '.join(PARAMS)}")
        values = {}
        for name in PARAMS:
            given = [v for v in query.get(name, []) if v.strip() != ""]
            if len(given) > 1:
                raise BadRequestError(f"parameter {name!r} is given {len(given)} times")
            values[name] = given[0].strip() if given else None
        sampler = values["sampler"]
        if sampler and " " in sampler and sampler.replace(" ", "+") in SAMPLER_NAMES:
            escaped = sampler.replace(" ", "%2B")
            raise BadRequestError(f"unknown sampler {sampler!r}: a + in a URL reads as a space; "
                                  f"write sampler={escaped}")
        for name, kind in (("steps", int), ("seed", int), ("n", int), ("guidance", float),
                           ("eta", float)):
            if values[name] is not None:
                try:
                    values[name] = kind(values[name])
                except ValueError:
                    what = "an integer" if kind is int else "a number"
                    raise BadRequestError(f"{name} must be {what}, got {values[name]!r}") from None
        if values["class"] is not None and not re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*",
                                                            values["class"]):
            raise BadRequestError("class must be one class or several, comma-separated (like 3 or "
                             f"1,2), got {values['class']!r}")
        n = values["n"] if values["n"] is not None else min(N_DEFAULT, self.max_n)
        if not 1 <= n <= self.max_n:
            raise BadRequestError(f"n must lie in 1..{self.max_n}, got {n}")
        if values["seed"] is not None and not 0 <= values["seed"] < 2**63:
            raise BadRequestError(f"seed must lie in 0..2^63-1, got {values['seed']}")
        return argparse.Namespace(
            run=str(self.run_dir), sampler=values["sampler"], steps=values["steps"],
            eta=values["eta"], spacing=values["spacing"], levels=values["levels"], n=n,
            seed=values["seed"] or 0, labels=values["class"], prompt=values["prompt"],
            guidance=values["guidance"], classifier=None, clip_guidance=None, threshold=None,
            threshold_p=None)

    def sample(self, query: dict[str, list[str]]) -> Pictures:
        """Sample as the query asks; BadRequestError for anything ``difflab sample`` refuses."""
        from ..build.data import model_shape
        from ..runs.draw import Frames, draw, time_grid
        from ..training.backend import torch_threads
        from .common import sampling_args
        from .guidance_flags import guided_from_args
        from .levels import levels_arg
        from .sample import write_samples

        args = self.args(query)
        cfg = self.cfg
        try:
            sampler, steps, eta, n, spacing = sampling_args(args, cfg, args.n)
            levels = levels_arg(args, self.model)  # a consistency sample's σ's, or None
            model = guided_from_args(args, cfg, self.model, self.schedule, sampler, steps, n)[0]
        except DifflabError as err:  # the flags' own messages, named as the page names them
            raise BadRequestError(_FLAG.sub(r"\1", one_line(err))) from None
        shape = model_shape(cfg) if self.image else (2,)
        frames = Frames(keep=min(n, GIF_IMAGES if self.image else GIF_POINTS),
                        max_frames=GIF_MAX_FRAMES)
        with self.lock, torch_threads(cfg.threads):
            x0 = draw(model, self.schedule, (n, *shape), sampler=sampler, steps=steps, eta=eta,
                      spacing=spacing, seed=args.seed, variance=cfg.variance, frames=frames,
                      levels=levels,
                      decode=self.codec.decode if self.codec is not None else None)[0]
        x0 = x0.detach().float().cpu()
        if self.image:
            x0 = x0.clamp(-1.0, 1.0)  # the data range, as difflab sample writes it
        title = f"{cfg.dataset}: {sampler}, {steps} steps (n = {n})"
        with tempfile.TemporaryDirectory(prefix="difflab-serve-") as tmp:
            png, gif = Path(tmp) / "samples.png", Path(tmp) / "reverse.gif"
            write_samples(x0, png, None, self.image, title)
            write_samples(x0, gif, frames, self.image, title)
            pictures = png.read_bytes(), gif.read_bytes()
        # the time grid, as eval records it: the spacing used (the run's eval_spacing or the
        # sampler's default when the query names none) and what a solver's "auto" stands for
        settings = {"sampler": sampler, "steps": steps, **time_grid(sampler, steps, spacing),
                    "eta": eta,
                    "levels": levels, "n": n, "seed": args.seed,
                    "class": args.labels, "prompt": args.prompt, "guidance": args.guidance}
        return Pictures(*pictures, settings)


def page() -> bytes:
    """The HTML of the page (with its script)."""
    return resources.files("difflab").joinpath("assets/serve.html").read_bytes()


class Handler(BaseHTTPRequestHandler):
    """GET routes of the page; ``self.server.app`` is the :class:`RunSampler`."""

    server_version = "difflab-serve"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        app: RunSampler = self.server.app  # type: ignore[attr-defined]
        try:
            if url.path in ("/", "/index.html"):
                self.reply(HTTPStatus.OK, "text/html; charset=utf-8", page())
            elif url.path == "/api/run":
                self.reply_json(app.info())
            elif url.path == "/api/sample":
                pictures = app.sample(query)
                self.reply_json({"grid": _data_url("image/png", pictures.png),
                                 "animation": _data_url("image/gif", pictures.gif),
                                 "settings": pictures.settings})
            elif url.path == "/sample.png":
                self.reply(HTTPStatus.OK, "image/png", app.sample(query).png)
            elif url.path == "/reverse.gif":
                self.reply(HTTPStatus.OK, "image/gif", app.sample(query).gif)
            else:
                self.reply_text(HTTPStatus.NOT_FOUND, f"no page {url.path}")
        except BadRequestError as err:
            self.reply_text(HTTPStatus.BAD_REQUEST, one_line(err))
        except Exception:  # a bug: its traceback on the server's stderr, the page goes on
            traceback.print_exc(file=sys.stderr)
            self.reply_text(HTTPStatus.INTERNAL_SERVER_ERROR,
                            "internal error (the traceback is on the server's stderr)")

    def reply(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, value: dict) -> None:
        self.reply(HTTPStatus.OK, "application/json", json.dumps(value).encode())

    def reply_text(self, status: HTTPStatus, text: str) -> None:
        self.reply(status, "text/plain; charset=utf-8", (text + "\n").encode())

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        if self.server.verbose:  # type: ignore[attr-defined]
            super().log_message(format, *args)


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def make_server(app: RunSampler, host: str = "127.0.0.1", port: int = 7860,
                verbose: bool = False) -> ThreadingHTTPServer:
    """The page's HTTP server for ``app`` on (host, port) (port 0: a free one), not yet
    serving: call ``serve_forever()``. UsageError if the address cannot be bound."""
    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as err:
        raise UsageError(f"cannot serve on {host}:{port}: {err.strerror or one_line(err)}"
                         ) from None
    server.daemon_threads = True
    server.app = app  # type: ignore[attr-defined]
    server.verbose = verbose  # type: ignore[attr-defined]
    return server
