"""``difflab serve RUN [--port 7860] [--host 127.0.0.1]``: a local web page to sample from a run
(:mod:`difflab.cli.serve_app`): class or prompt, guidance scale, sampler, steps, seed and number
of images; it shows the grid and the reverse-process animation and downloads the PNG. It binds
127.0.0.1 (this machine only) unless ``--host`` says otherwise, and runs until Ctrl-C."""

from __future__ import annotations

import argparse
import sys

from .common import PROG, UsageError, add_device_flags

DEFAULT_PORT = 7860
DEFAULT_HOST = "127.0.0.1"


def add_parser(sub) -> None:
    what = "a local web page to sample from a trained run"
    p = sub.add_parser("serve", help=what, description=what[0].upper() + what[1:] + ": class "
                       "or prompt, guidance, sampler, steps, time grid, DDIM's eta, a consistency "
                       "model's levels, seed and number of images; it "
                       "shows the grid and the reverse process, and downloads the PNG.")
    p.add_argument("run", metavar="RUN", help="run directory written by 'difflab train' (or "
                   "'difflab distill')")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 "
                   "opens the page to the network, without any authentication)")
    p.add_argument("--max-n", type=int, default=None, metavar="N",
                   help="most images one request may ask for (default 64)")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr")
    add_device_flags(p)
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    from .serve_app import MAX_N, RunSampler, make_server

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must lie in 0..65535, got {args.port}")
    max_n = MAX_N if args.max_n is None else args.max_n
    if max_n < 1:
        raise UsageError(f"--max-n must be at least 1, got {max_n}")
    app = RunSampler(args.run, device=args.device, precision=args.precision, max_n=max_n)
    server = make_server(app, args.host, args.port, verbose=args.verbose)
    host, port = server.server_address[:2]
    print(f"serving {args.run} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"{PROG}: stopped serving", file=sys.stderr)
    finally:
        server.server_close()
    return 0
