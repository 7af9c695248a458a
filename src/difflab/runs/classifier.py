"""Noisy-classifier runs for classifier guidance (Weng eq. 24-25): ``difflab train-classifier``.

A run directory like a diffusion run's: ``config.json`` (a :class:`~difflab.config.TrainConfig`
whose data, schedule, U-Net widths and optimisation fields are the classifier's), the weights in
``classifier.safetensors`` and ``metrics.json`` with the test accuracy of f_φ(y | x_t, t) at a
few t. The classifier is the U-Net's down-sampling half with an attention-pooled head (ADM;
:class:`~difflab.nn.noisy_classifier.NoisyClassifier`), trained on x_t of the forward process
(:func:`~difflab.classifier_train.train_noisy_classifier`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig, int_list, is_image
from ..errors import ConfigError
from ..nn.noisy_classifier import NoisyClassifier, NoisyClassifierConfig
from ..training.classifier import classifier_accuracy
from . import checkpoint as ckpt
from . import run_config as runcfg

WEIGHTS = ckpt.CLASSIFIER  # = weight_file("classifier", False)
KIND = "noisy-classifier"
ACCURACY_TS = (1, 100, 250, 500, 750, 1000)  # as fractions of T = 1000: t · T / 1000


def classifier_config(cfg: TrainConfig, in_channels: int) -> NoisyClassifierConfig:
    """The classifier of ``cfg``: the U-Net encoder fields of the config, its num_classes."""
    mult = int_list(cfg.channel_mult)
    return NoisyClassifierConfig(
        in_channels=in_channels, num_classes=cfg.num_classes,
        model_channels=cfg.model_channels, channel_mult=mult,
        num_res_blocks=cfg.num_res_blocks, attention_resolutions=int_list(cfg.attention),
        dropout=cfg.dropout, groups=math.gcd(32, *[cfg.model_channels * m for m in mult]))


def build_classifier(cfg: TrainConfig) -> NoisyClassifier:
    """The (untrained) classifier of ``cfg``, initialised from ``cfg.seed``."""
    from ..build.data import image_shape

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return NoisyClassifier(classifier_config(cfg, image_shape(cfg)[0]))


def train_classifier_run(cfg: TrainConfig, run_dir: str | Path, *, overwrite: bool = False,
                         progress: bool = False) -> Path:
    """Train the noisy classifier of ``cfg`` on its image train split (the one loop, with its
    checkpoints, on the config's device); write the run; return its directory. Test accuracy is
    measured on x_t of the test split at :data:`ACCURACY_TS`."""
    from ..build.conditioning import resolve
    from ..build.data import image_split
    from ..build.model import build_schedule
    from ..training import fit
    from ..training.backend import Backend, torch_threads
    from ..training.classifier import NoisyClassifierObjective
    from ..training.losslog import LossLog
    from .load import config_to_json
    from .train import saver

    if not is_image(cfg.dataset):
        raise ConfigError(f"a noisy classifier needs image data with labels, not {cfg.dataset!r}")
    backend = Backend.create(cfg.device, cfg.precision, cfg.compile)
    data = image_split(cfg, "train")
    cfg = resolve(dataclasses.replace(cfg, cond="class"), data)
    cfg = dataclasses.replace(cfg, cond="none", eval_guidance=0.0)
    run_dir = ckpt.prepare_run_dir(run_dir, overwrite=overwrite)
    runcfg.write_run_config(run_dir, KIND, config_to_json(cfg))
    with torch_threads(cfg.threads):
        schedule = build_schedule(cfg)
        net = build_classifier(cfg)
        objective = NoisyClassifierObjective(net, schedule, data.x, data.y, batch=cfg.batch,
                                             lr=cfg.lr, weight_decay=cfg.weight_decay)
        log = LossLog(cfg.log_every)
        losses: list[float] = []
        result = fit(objective, steps=cfg.steps, generator=torch.Generator().manual_seed(cfg.seed),
                     backend=backend, log=log, checkpoint_every=cfg.checkpoint_every,
                     save=saver(run_dir, KIND, log), progress=progress,
                     desc="train-classifier", on_update=lambda _, v: losses.append(v))
        net.eval()
        test = image_split(cfg, "test")
        ts = sorted({max(1, t * cfg.T // 1000) for t in ACCURACY_TS})
        acc = {str(t): classifier_accuracy(net, schedule, test.x.to(backend.device),
                                           test.y.to(backend.device), t,
                                           generator=torch.Generator().manual_seed(1))
               for t in ts}
    tail = losses[-min(50, len(losses)):] or [float("nan")]
    ckpt.write_json(run_dir / ckpt.METRICS, {
        "kind": KIND, "train_seconds": result.seconds, "train_steps": cfg.steps,
        "loss": sum(tail) / len(tail), "test_accuracy_at_t": acc, "n_test": len(test)})
    return run_dir


def is_classifier_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / WEIGHTS).is_file()


def load_classifier_run(run_dir: str | Path) -> tuple[TrainConfig, nn.Module]:
    """The config and the trained classifier (eval mode, frozen) of a classifier run."""
    from .load import read_run

    kind, cfg, _ = read_run(run_dir)
    if kind != KIND or not is_classifier_run(run_dir):
        raise ckpt.CheckpointError(f"{run_dir} is not a classifier run (no {WEIGHTS}); train "
                                   "one with 'difflab train-classifier'")
    net = build_classifier(cfg)
    try:
        net.load_state_dict(ckpt.load_tensors(Path(run_dir) / WEIGHTS)[0])
    except RuntimeError as err:
        msg = " ".join(str(err).split())[:200]
        raise ckpt.CheckpointError(f"weights in {run_dir} do not fit its config ({msg})") from None
    return cfg, net.eval().requires_grad_(False)


def check_compatible(classifier_cfg: TrainConfig, cfg: TrainConfig, *,
                     what: str = "classifier", command: str = "train-classifier") -> None:
    """ValueError unless the classifier (or the noise-aware CLIP, ``what``) was trained on the
    run's noise (schedule, T) and images (dataset, size, channels): its x_t must be the
    sampler's x_t. ``command`` trains one."""
    from ..config import image_size

    if cfg.autoencoder:
        raise ConfigError(f"{what} guidance of a latent run needs a noisy {what} of its "
                          f"latents, which 'difflab {command}' does not train; use "
                          "classifier-free guidance (a run trained with --cond class)")
    for key, a, b in (("schedule", classifier_cfg.schedule, cfg.schedule),
                      ("T", classifier_cfg.T, cfg.T),
                      ("dataset", classifier_cfg.dataset, cfg.dataset),
                      ("image size", image_size(classifier_cfg), image_size(cfg)),
                      ("channels", classifier_cfg.channels, cfg.channels)):
        if a != b:
            raise ConfigError(f"the {what} was trained with {key} {a!r} but the run has "
                             f"{b!r}; train one to match with 'difflab {command}'")
