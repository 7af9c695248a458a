"""``difflab export RUN --format diffusers OUT_DIR``: a run's network and schedule as a folder
that Hugging Face diffusers loads offline (``DDPMPipeline.from_pretrained(OUT_DIR)``,
``DDIMPipeline.from_pretrained(OUT_DIR)``; docs/interop.md). Needs ``pip install
diffusers==0.42.1``. What has no exact diffusers equivalent is refused in one line."""

from __future__ import annotations

import argparse

from .common import writing


def add_parser(sub) -> None:
    what = "export a run to another library's format (diffusers)"
    p = sub.add_parser("export", help=what, description="Write a run's network and noise "
                       "schedule as a diffusers folder: UNet2DModel (or DiTTransformer2DModel) "
                       "weights and config, a DDPMScheduler config, and model_index.json, so "
                       "that DDPMPipeline / DDIMPipeline.from_pretrained(OUT_DIR) sample from "
                       "it offline. The network is the same function as difflab's (checked to "
                       "1e-5); architectures diffusers lacks (text cross-attention, "
                       "super-resolution, Efficient U-Net, rescaled skips, latent runs, "
                       "consistency models) are refused. Needs diffusers==0.42.1.")
    p.add_argument("run", metavar="RUN", help="run directory of a diffusion run or a "
                   "progressive student")
    p.add_argument("out", metavar="OUT_DIR", help="the folder to write (must not exist, or be "
                   "empty)")
    p.add_argument("--format", choices=("diffusers",), default="diffusers",
                   help="the target library's format (default and only: diffusers)")
    p.add_argument("--weights", choices=("ema", "model"), default="ema",
                   help="the EMA weights (default, what 'difflab sample' uses) or the raw ones")
    p.add_argument("--time-embedding", choices=("table", "sinusoid"), default="table",
                   help="how a U-Net's time embedding travels (diffusers counts steps from 0, "
                   "difflab from 1): table (default) holds difflab's features of every t, exact "
                   "to the bit, integer timesteps only (DDPM, DDIM, PNDM, DPM-Solver, UniPC); "
                   "sinusoid keeps diffusers' own features with the shift folded into the "
                   "first time layer, for any timestep (also Euler and Karras schedulers), "
                   "equal to float32 rounding (about 1e-5); needs channel_mult starting at 1")
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    from ..interop.export import export_diffusers

    with writing(args.out, "OUT_DIR"):
        out = export_diffusers(args.run, args.out, which=args.weights,
                               time_embedding=args.time_embedding)
    print(f"wrote {out} (diffusers: DDPMPipeline / DDIMPipeline.from_pretrained('{out}'))"
          if (out / "model_index.json").is_file() else
          f"wrote {out} (diffusers: DiTTransformer2DModel.from_pretrained('{out}', "
          "subfolder='transformer') and its scheduler in scheduler/)")
    return 0
