"""``difflab sample RUN --out FILE``: samples of a trained run as .npy, a picture or the reverse
process as a GIF. Sampling runs on ``--device`` (the model's device) with the network under
autocast in ``--precision``; the samples are written as float32 from the CPU, image samples
clipped to the data range [-1, 1] unless ``--no-clip``."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from .cascade import add_cascade_flags, cascade_requested, check_plain_run, run_cascade
from .common import (
    UsageError,
    add_sampling_flags,
    autocast_network,
    check_output_file,
    sampling_args,
    show_progress,
    writing,
)
from .controlnet import add_hint_flags, bind_hint, default_n, hint_from_args
from .guidance_flags import add_guidance_flags, guided_from_args
from .levels import levels_arg

OUT_SUFFIXES = (".npy", ".png", ".gif")
GIF_MAX_FRAMES, GIF_IMAGES, GIF_POINTS = 40, 64, 10_000  # sample --out x.gif
N_DEFAULT = 1000


def add_parser(sub) -> None:
    what = "draw samples from a trained run"
    p = sub.add_parser("sample", help=what, description=what[0].upper() + what[1:] + ".")
    add_sampling_flags(p, n_help=f"number of samples (default {N_DEFAULT})")
    add_guidance_flags(p)
    add_hint_flags(p)
    add_cascade_flags(p)
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output file, by its suffix. .npy: a float32 numpy array, (n, 2) points "
                   "of a 2-D run, or (n, C, H, W) images of an image run (C = 1 grey or 3 RGB) "
                   "in the data's range [-1, 1] (-1 black, 1 white; clipped to it unless "
                   "--no-clip). .png: a scatter plot of the points (on ±3), or a grid of the "
                   "images (8-bit grey or RGB, each pixel 4×4, [-1, 1] → 0..255). .gif: the "
                   f"reverse process x_T → x_0 in 1 + min(steps, {GIF_MAX_FRAMES}) frames (all "
                   f"n points, at most {GIF_POINTS}, or the first {GIF_IMAGES} images), drawn "
                   "like the .png")
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=True,
                   help="clip image samples to the data range [-1, 1] before writing them "
                   "(default; --no-clip writes the sampler's raw output to a .npy, whose values "
                   "can lie far outside it; .png and .gif are always drawn clipped). 2-D points "
                   "are never clipped")
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    from ..build.data import model_shape
    from ..config import is_image
    from ..runs.draw import Frames, draw, model_device
    from ..runs.latent import load_codec
    from ..runs.load import load_run
    from ..training.backend import torch_threads

    if cascade_requested(args):  # --cascade BASE,SR[,SR2…] (cli/cascade.py)
        return run_cascade(args, write_samples)
    out = Path(args.out)
    if out.suffix not in OUT_SUFFIXES:
        raise UsageError(f"--out must end in {', '.join(OUT_SUFFIXES)}, got {args.out!r}")
    check_output_file(out)
    cfg, model, schedule = load_run(args.run, device=args.device)
    check_plain_run(args, cfg)  # a super-resolution run samples in a cascade
    hints = hint_from_args(args, cfg, model)  # a ControlNet run's hints (N, C_h, H, W), or None
    sampler, steps, eta, n, spacing = sampling_args(args, cfg, default_n(args, N_DEFAULT))
    levels = levels_arg(args, model)  # a consistency sample's re-noising levels, or None
    image = is_image(cfg.dataset)
    shape = model_shape(cfg) if image else (2,)  # a latent run: its latents'
    codec = load_codec(args.run, cfg, model_device(model))
    model = autocast_network(model, args.precision)
    model = guided_from_args(args, cfg, model, schedule, sampler, steps, n)[0]
    model = bind_hint(model, hints, n)
    frames = None
    if out.suffix == ".gif":
        frames = Frames(keep=min(n, GIF_IMAGES if image else GIF_POINTS),
                        max_frames=GIF_MAX_FRAMES)
    with torch_threads(cfg.threads):
        x0 = draw(model, schedule, (n, *shape), sampler=sampler, steps=steps, eta=eta,
                  spacing=spacing, seed=args.seed, variance=cfg.variance, frames=frames,
                  progress=show_progress(args), levels=levels,
                  decode=codec.decode if codec is not None else None)[0]  # (n, 2) or (n, C, H, W)
    x0 = x0.detach().float().cpu()
    if image and args.clip:
        x0 = x0.clamp(-1.0, 1.0)  # the data range (difflab.data.images)
    with writing(out):
        write_samples(x0, out, frames, image,
                      title=f"{cfg.dataset}: {sampler}, {steps} steps (n = {n})")
    print(out)
    return 0


def write_samples(x0, out: Path, frames, image: bool, title: str) -> None:
    """x0 (n, …) to ``out`` by its suffix; a .gif shows ``frames`` of the reverse process."""
    import numpy as np

    from ..runs import checkpoint as ckpt

    if frames is not None:
        from ..runs.plots import save_reverse_process_gif

        save_reverse_process_gif([(p, x.float().cpu()) for p, x in frames.frames], out)
    elif out.suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, x0.numpy().astype(np.float32))
        ckpt.atomic_write_bytes(out, buf.getvalue())
    elif image:
        from ..runs.plots import save_image_grid

        save_image_grid(x0, out)
    else:
        from ..runs.plots import plot_points

        plot_points(x0, out, title=title)
