"""difflab: diffusion models as Lilian Weng's post "What are Diffusion Models?" explains them.

The maths lives in small modules, each citing the post's equations:
``schedules`` (eq 1, 3, 7-12, 22), ``parameterization`` (eq 11, 21, v), ``losses`` (eq 19),
``samplers`` (eq 4, 17, 27-29, probability-flow ODE), ``oracle`` (exact denoisers),
``metrics`` (sliced Wasserstein), ``data``, ``vlb`` (eq 13-18, 23: the variational bound)
``likelihood`` (bits/dim from the probability-flow ODE), ``ncsn`` (score networks: the σ
ladder, denoising and sliced score matching), ``guidance`` (eq 24-26,
thresholding) and ``distill`` (progressive distillation, consistency models: eq 30-32).
The machinery above the maths lives in layers that import only downward (docs/architecture.md):
``config`` (presets and settings), ``build`` (config → schedule, network, data, conditions),
``training`` (the one loop and its objectives, devices, processes), ``runs`` (run directories,
loading, evaluation, pictures) and ``cli``. Entry points: :func:`build_model`, :func:`load_run`
and, for a latent run, :func:`load_codec`; to and from Hugging Face diffusers (optional,
docs/interop.md): :func:`export_diffusers` and :func:`load_diffusers`.
"""

from . import (
    data,
    distill,
    guidance,
    likelihood,
    losses,
    metrics,
    ncsn,
    oracle,
    parameterization,
    samplers,
    schedules,
    vlb,
)
from .version import __version__  # noqa: F401 (difflab.__version__)


def build_model(preset="default"):
    """The network a built-in preset (a name, a path to a .toml file, or a
    :class:`~difflab.config.TrainConfig`) trains, initialised from its seed."""
    from .build.model import build_model as build
    from .config import TrainConfig, load_config

    return build(preset if isinstance(preset, TrainConfig) else load_config(preset))


def load_run(run_dir, which: str = "ema", device: str | None = None):
    """(config, model, schedule) of a run directory: the EMA model in eval mode, ready to
    sample (see :func:`difflab.runs.load.load_run`)."""
    from .runs.load import load_run as load

    return load(run_dir, which, device)


def load_codec(run_dir, device: str | None = None):
    """The autoencoder of a latent run as a :class:`~difflab.pipelines.LatentCodec` (``encode``
    x → z = s · E(x), ``decode`` z → x), on ``device``; None for a pixel-space run. The model
    of :func:`load_run` samples latents; ``decode`` turns them into images::

        cfg, model, s = difflab.load_run("runs/ld")
        codec = difflab.load_codec("runs/ld")
        z = difflab.samplers.ddim(model, s, torch.randn(8, *codec.latent_shape((1, 32, 32))))
        x = codec.decode(z)  # (8, 1, 32, 32)
    """
    from .runs.latent import load_codec as load
    from .runs.load import read_run_config
    from .training.backend import resolve_device

    return load(run_dir, read_run_config(run_dir),
                resolve_device(device) if device is not None else None)


def load_diffusers(path, device: str | None = None):
    """(model, schedule) of a local diffusers ``UNet2DModel`` folder (a pipeline folder with
    ``unet/`` and ``scheduler/``, or a model folder with its ``scheduler_config.json``; a DiT
    export's ``transformer/`` too): the
    network as a difflab ε-model (ε-, v- or sample-prediction; a learned variance as (ε̂, v)),
    in eval mode on ``device`` (None: the CPU), so every sampler, guidance method and the
    likelihood run on it. Needs ``pip install diffusers==0.42.1``; nothing is downloaded::

        model, schedule = difflab.load_diffusers("exported/")
        x = difflab.samplers.ddim(model, schedule, torch.randn(8, 1, 8, 8), steps=50)
    """
    from .interop.load import load_diffusers as load
    from .training.backend import resolve_device

    return load(path, resolve_device(device) if device is not None else None)


def export_diffusers(run_dir, out_dir, which: str = "ema", time_embedding: str = "table"):
    """Write a run's network and schedule as a diffusers folder that
    ``DDPMPipeline.from_pretrained(out_dir)`` loads (``difflab export RUN --format diffusers
    OUT_DIR``; see :mod:`difflab.interop.export`). Returns the folder's path."""
    from .interop.export import export_diffusers as export

    return export(run_dir, out_dir, which, time_embedding)


__all__ = ["build_model", "data", "distill", "export_diffusers", "guidance", "likelihood",
           "load_codec", "load_diffusers", "load_run", "losses", "metrics", "ncsn", "oracle",
           "parameterization", "samplers", "schedules", "vlb"]
