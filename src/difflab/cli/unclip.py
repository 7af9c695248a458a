"""``difflab unclip``: unCLIP's uses (Weng eq. 34; Ramesh et al. 2022, §3) from a decoder run and
a prior run (both trained with the same ``--clip`` run)::

    difflab unclip DECODER --prior PRIOR --prompt TEXT [-n N] [--best-of 2] --out x.png
    difflab unclip DECODER --variations I [-n N] --out v.png         # test image I's c_i
    difflab unclip DECODER --interpolate I,J [-n N] --out i.png      # slerp, one fixed noise
    difflab unclip DECODER --text-diff I --to TEXT [-n N] --out d.png  # from I's own caption

Images are given by their index in the run's held-out test split. ``--out`` is a PNG grid or
an ``.npy`` array (n, C, H, W) in [-1, 1]; variations and text diffs put the source image first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    PROG,
    UsageError,
    add_device_flags,
    check_output_file,
    writing,
)

MODES = ("prompt", "variations", "interpolate", "text_diff")


def add_parser(sub) -> None:
    p = sub.add_parser("unclip", help="unCLIP: text → image, variations, interpolations, text "
                       "diffs", description="unCLIP (Ramesh et al. 2022): sample through a "
                       "prior and a decoder run (text → image), or use the decoder alone on "
                       "held-out test images: variations, slerp interpolations and text diffs.")
    p.add_argument("decoder", metavar="DECODER_RUN", help="a run of 'difflab train --preset "
                   "shapes-unclip-decoder --clip CLIP'")
    p.add_argument("--prior", metavar="PRIOR_RUN", help="a prior run with the same CLIP (needed "
                   "for --prompt)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="text → image: c_i ~ prior, then the decoder")
    what.add_argument("--variations", type=int, metavar="I", help="n variations of test image I")
    what.add_argument("--interpolate", metavar="I,J", help="n images along slerp(c_i(I), c_i(J))")
    what.add_argument("--text-diff", type=int, metavar="I", help="test image I moved towards "
                      "--to's caption (from its own caption)")
    p.add_argument("--to", help="the new caption of --text-diff")
    p.add_argument("--max-weight", type=float, default=0.5, help="--text-diff: the largest slerp "
                   "weight towards the caption direction (default 0.5)")
    p.add_argument("-n", type=int, default=8, help="images (default 8)")
    p.add_argument("--steps", type=int, default=50, help="decoder DDIM steps (default 50)")
    p.add_argument("--prior-steps", type=int, default=64, help="prior DDIM steps (default 64)")
    p.add_argument("--guidance", type=float, default=2.0, help="decoder classifier-free "
                   "guidance w (default 2)")
    p.add_argument("--prior-guidance", type=float, default=1.0, help="prior classifier-free "
                   "guidance w (default 1)")
    p.add_argument("--threshold", choices=("static", "dynamic", "none"), default="static",
                   help="clipping of the decoder's x̂_0 at every step (Imagen's thresholding; "
                   "default static: [-1, 1])")
    p.add_argument("--best-of", type=int, default=1, help="prior draws per image, the one most "
                   "similar to the caption kept (the paper: 2; default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="a .png grid or a .npy array")
    add_device_flags(p)
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..runs.plots import save_image_grid
    from ..runs.unclip import load_unclip, unclip_images

    if args.n < 1 or args.steps < 1 or args.prior_steps < 1 or args.best_of < 1:
        raise UsageError("-n, --steps, --prior-steps and --best-of must be at least 1")
    if args.guidance < 0 or args.prior_guidance < 0:
        raise UsageError("guidance weights must be >= 0")
    if args.prompt is not None and not args.prior:
        raise UsageError("--prompt needs --prior PRIOR_RUN")
    if (args.text_diff is not None) != (args.to is not None):
        raise UsageError("--text-diff I and --to TEXT go together")
    pair = None
    if args.interpolate is not None:
        try:
            pair = tuple(int(v) for v in args.interpolate.split(","))
        except ValueError:
            pair = ()
        if len(pair) != 2:
            raise UsageError(f"--interpolate takes two test indices I,J, got {args.interpolate!r}")
    out = Path(args.out)
    if out.suffix not in (".png", ".npy"):
        raise UsageError(f"--out must end in .png or .npy, got {out.name}")
    check_output_file(out)
    cfg, unclip = load_unclip(args.decoder, args.prior, args.device,
                              decoder_steps=args.steps, prior_steps=args.prior_steps,
                              decoder_guidance=args.guidance,
                              prior_guidance=args.prior_guidance,
                              decoder_threshold=args.threshold)
    g = torch.Generator().manual_seed(args.seed)
    x = unclip_images(cfg, unclip, n=args.n, generator=g, prompt=args.prompt,
                      variations=args.variations, interpolate=pair, text_diff=args.text_diff,
                      to=args.to, max_weight=args.max_weight, best_of=args.best_of)
    with writing(out):
        if out.suffix == ".npy":
            np.save(out, x.numpy())
        else:
            save_image_grid(x, out, nrow=min(len(x), 9))
    print(f"{PROG}: wrote {len(x)} images to {out}")
    return 0
