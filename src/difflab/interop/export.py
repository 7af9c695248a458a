"""``difflab export RUN --format diffusers OUT``: a run's network and schedule as a folder that
diffusers loads offline.

A U-Net run becomes a pipeline folder::

    OUT/model_index.json                      DDPMPipeline: unet + scheduler
    OUT/unet/config.json, diffusion_pytorch_model.safetensors      UNet2DModel
    OUT/scheduler/scheduler_config.json       DDPMScheduler

so ``DDPMPipeline.from_pretrained(OUT)`` and ``DDIMPipeline.from_pretrained(OUT)`` (which makes
its DDIMScheduler from the same config) sample from it, and ``UNet2DModel.from_pretrained(OUT,
subfolder="unet")`` is the network (:mod:`difflab.interop.unet_map` says why it is the same
function). A DiT run becomes ``OUT/transformer`` (``DiTTransformer2DModel``) and
``OUT/scheduler`` (:mod:`difflab.interop.dit_map`); diffusers' DiTPipeline needs a VAE, which a
pixel-space run has not, so there is no model_index.json.

Refused, each in one line (:class:`~difflab.errors.InteropError`): runs that are not a diffusion
model or a progressive student (consistency models, ControlNets, classifiers, autoencoders),
latent runs (their autoencoder is difflab's own), the 2-D MLP, and networks with parts that
diffusers' classes lack (see the two mapping modules). The folder is written beside ``OUT`` and
renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..build.data import model_shape
from ..build.model import build_schedule
from ..config import TrainConfig, model_kind
from ..errors import InteropError
from ..parameterization import LearnedVariance
from ..runs.checkpoint import current_umask
from ..runs.load import load_network, read_run
from .requirement import require_diffusers
from .schedule_map import scheduler_kwargs
from .unet_map import TIME_EMBEDDINGS, unet2d_config, unet2d_state_dict

FORMATS = ("diffusers",)
EXPORTABLE_KINDS = ("diffusion", "progressive")


def check_run(kind: str, cfg: TrainConfig, run_dir: str | Path) -> str:
    """The network kind ("unet", "dit") of an exportable run; InteropError otherwise."""
    if kind not in EXPORTABLE_KINDS:
        why = {"consistency-training": "a consistency model f_θ(x, σ) (Weng eq. 30), which "
               "diffusers' UNet2DModel with a DDPM/DDIM scheduler does not describe",
               "consistency-distillation": "a consistency model f_θ(x, σ) (Weng eq. 30), which "
               "diffusers' UNet2DModel with a DDPM/DDIM scheduler does not describe",
               "controlnet": "a ControlNet over a difflab base (diffusers' ControlNetModel "
               "belongs to its text-conditioned U-Net)",
               "progressive-distillation": "the job directory of a distillation; its rounds' "
               "students are in its steps-<N> directories"}.get(kind, "not a diffusion model")
        raise InteropError(f"{run_dir} is a {kind} run: {why}; export a diffusion run or a "
                           "progressive student")
    if cfg.autoencoder:
        raise InteropError(f"{run_dir} is a latent run: its denoiser works on the latents of "
                           "difflab's own autoencoder, which has no diffusers equivalent")
    net = model_kind(cfg)
    if net not in ("unet", "dit"):
        raise InteropError(f"{run_dir} has a {net} network (2-D points); diffusers' models "
                           "are image networks")
    return net


def export_diffusers(run_dir: str | Path, out_dir: str | Path, which: str = "ema",
                     time_embedding: str = "table") -> Path:
    """Write the run's network (EMA weights, or ``which="model"``: the raw ones) and schedule
    as a diffusers folder ``out_dir``, which must not exist yet (or be empty). Returns it.
    ``time_embedding`` (U-Nets): "table", exact, integer timesteps; or "sinusoid", any
    timestep, equal to float32 rounding (:mod:`difflab.interop.unet_map`)."""
    kind, cfg, _ = read_run(run_dir)
    net_kind = check_run(kind, cfg, run_dir)
    if time_embedding not in TIME_EMBEDDINGS:
        raise InteropError(f"time_embedding must be one of {', '.join(TIME_EMBEDDINGS)}, got "
                           f"{time_embedding!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InteropError(f"{out} exists and is not an empty directory; choose a new one")
    if not out.parent.is_dir():
        raise InteropError(f"the directory of {out}, {out.parent}, does not exist")
    diffusers = require_diffusers()
    net = load_network(run_dir, cfg, which)
    learned = isinstance(net, LearnedVariance)
    if learned:
        net = net.net
    schedule = build_schedule(cfg)
    prediction = cfg.prediction if kind == "progressive" else "eps"
    sched_kwargs = scheduler_kwargs(schedule, prediction, cfg.variance)
    scheduler = diffusers.DDPMScheduler(**sched_kwargs)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0o700 → what mkdir would give
        if net_kind == "unet":
            _, H, W = model_shape(cfg)
            unet = diffusers.UNet2DModel(**unet2d_config(
                net.config, schedule.T, H if H == W else (H, W), time_embedding))
            unet.load_state_dict(unet2d_state_dict(net, schedule.T, time_embedding),
                                 strict=True)
            diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp)
        else:
            from .dit_map import dit_transformer

            dit_transformer(diffusers, net).save_pretrained(tmp / "transformer")
            scheduler.save_pretrained(tmp / "scheduler")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
