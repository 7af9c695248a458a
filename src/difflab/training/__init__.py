"""The one training loop (:func:`~difflab.training.loop.fit`) and its objectives.

:data:`OBJECTIVES` is the registry of what ``difflab train`` can train, by the config's
``method``: a factory ``(cfg, schedule, data, conds, backend, codec) -> Objective`` (``codec``:
the autoencoder of a latent run, the frozen CLIP of an unCLIP prior or decoder run, or None).
Distillation objectives (:mod:`.progressive`, :mod:`.consistency`) and the noisy classifier
(:mod:`.classifier`) are built by the run code that loads their teacher or labels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..build.data import data_levels
from ..build.model import build_model
from ..config import TrainConfig
from ..pipelines.latent import LatentCodec
from ..schedules import Schedule
from ..vlb import ImportanceSampler
from .backend import Backend
from .consistency import ConsistencyTraining, ImprovedConsistencyTraining
from .diffusion import DiffusionObjective, LRSchedule
from .loop import Objective, fit

SIGMA_DATA = 0.5  # σ_d of f_θ's preconditioning (Song et al. 2023, App. C; data in [−1, 1])


def ct_final_levels(steps: int) -> int:
    """s1 of N(k) for a run of ``steps`` updates: Song et al.'s 150 needs hundreds of thousands
    of steps (1500-3000 steps converge with s1 = 20 on 1-D data), so short runs grow to
    s1 = steps/50, between 20 and 150 — our choice."""
    return min(150, max(20, steps // 50))


def lr_schedule(cfg: TrainConfig) -> LRSchedule:
    """The learning rate of a run's updates: warm-up, then constant, cosine or linear."""
    return LRSchedule(cfg.lr, cfg.steps, cfg.warmup, cfg.lr_schedule, cfg.lr_min_ratio)


def diffusion_objective(cfg: TrainConfig, schedule: Schedule, data: Tensor, conds,
                        backend: Backend, codec: LatentCodec | None = None) -> Objective:
    """L_simple or L_hybrid (Weng eq. 19, 23) with the run's EMA and learning-rate schedule;
    with a ``codec`` (a latent run) on z = s · E(x) (:mod:`.latent`; ``data`` the images, or
    their encoder outputs when ``cfg.latent_cache``); with ``sr_low_res`` a super-resolution
    stage of a cascade (:mod:`.super_resolution`)."""
    lr = lr_schedule(cfg)
    t_sampler = ImportanceSampler(cfg.T) if cfg.t_sampling == "importance" else None
    kwargs = dict(batch=cfg.batch, lr=lr, ema_decay=cfg.ema_decay, conds=conds,
                  p_uncond=cfg.p_uncond, loss=cfg.loss, hybrid_lambda=cfg.hybrid_lambda,
                  t_sampler=t_sampler, levels=data_levels(cfg), weight_decay=cfg.weight_decay,
                  grad_clip=cfg.grad_clip, backend=backend, prediction=cfg.prediction)
    if cfg.sr_low_res:  # a cascade's super-resolution stage, p_θ(x | z) (Ho et al. 2021)
        from .super_resolution import SuperResolutionObjective

        return SuperResolutionObjective(build_model(cfg), schedule, data,
                                        low_res=cfg.sr_low_res, augment=cfg.sr_augment,
                                        aug_max=cfg.sr_aug_max, blur_min=cfg.sr_blur_min,
                                        blur_max=cfg.sr_blur_max, **kwargs)
    if codec is None:
        return DiffusionObjective(build_model(cfg), schedule, data, **kwargs)
    from ..build.data import image_shape
    from .latent import LatentDiffusionObjective, encode_dataset

    cached = cfg.latent_cache
    if cached:
        data = encode_dataset(codec, data)
    return LatentDiffusionObjective(build_model(cfg), schedule, data, codec,
                                    image_shape=image_shape(cfg), cached=cached, **kwargs)


def autoencoder_objective(cfg: TrainConfig, schedule: Schedule, data: Tensor, conds,
                          backend: Backend, codec=None) -> Objective:
    """The first stage of latent diffusion (:mod:`.autoencoder`): the autoencoder of the
    ``ae_*`` fields, a patch discriminator when ``disc_weight`` > 0 and the perceptual distance
    in the dataset's committed classifier when ``perceptual_weight`` > 0."""
    from ..build.data import image_shape
    from ..build.model import build_autoencoder
    from ..config import image_size
    from ..errors import ConfigError
    from ..nn.discriminator import PatchDiscriminator
    from ..nn.perceptual import PerceptualDistance
    from .autoencoder import AutoencoderObjective, AutoencoderTrainer

    perceptual = None
    if cfg.perceptual_weight > 0:
        from ..data.fd import load_classifier

        try:
            classifier = load_classifier(cfg.dataset, image_size(cfg))[0]
        except ValueError:
            raise ConfigError(f"perceptual_weight > 0 needs a committed classifier of "
                              f"{cfg.dataset} at {image_size(cfg)} pixels, and there is none; "
                              "set --perceptual-weight 0") from None
        perceptual = PerceptualDistance(classifier)
    disc = None
    if cfg.disc_weight > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            disc = PatchDiscriminator(image_shape(cfg)[0], cfg.ae_channels)
    trainer = AutoencoderTrainer(build_autoencoder(cfg), disc, perceptual,
                                 rec_loss=cfg.rec_loss, perceptual_weight=cfg.perceptual_weight,
                                 kl_weight=cfg.kl_weight, disc_weight=cfg.disc_weight)
    return AutoencoderObjective(trainer, data, batch=cfg.batch, lr=lr_schedule(cfg),
                                ema_decay=cfg.ema_decay, disc_start=cfg.disc_start,
                                weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
                                seed=cfg.seed, backend=backend)


def score_objective(cfg: TrainConfig, schedule: Schedule, data: Tensor, conds,
                    backend: Backend, codec=None) -> Objective:
    """A noise-conditional score network (:mod:`.score_matching`): denoising (``method`` "dsm")
    or sliced (``"ssm"``, with variance reduction) score matching over the run's ladder
    (:func:`difflab.build.score.score_ladder`), λ(σ) = σ², the run's EMA and learning rate.
    The network is the run's (MLP for 2-D data, U-Net for images), its t the level index."""
    from ..build.score import score_ladder
    from .score_matching import ScoreMatchingObjective

    if cfg.method == "ssm" and backend.world_size > 1:
        from ..errors import ConfigError

        raise ConfigError("method ssm needs a double backward, which DDP does not support; "
                          "train it in one process")
    return ScoreMatchingObjective(build_model(cfg), score_ladder(cfg), data, kind=cfg.method,
                                  batch=cfg.batch, lr=lr_schedule(cfg), ema_decay=cfg.ema_decay,
                                  weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)


def consistency_model(cfg: TrainConfig, net: torch.nn.Module, schedule: Schedule):
    """f_θ around the network F_θ of a consistency run (Weng eq. 30): the v-preconditioning in
    the schedule's own coordinates where F_θ started as a diffusion network (CD with
    ``prediction = "v"``, CT with ``ct_init_from``); else EDM's preconditioning with σ_d = 0.5,
    with c_noise(σ) = ``ct_noise_scale`` · ln σ for consistency training (10 by default, 250 in
    the digits and mnist presets: benchmarks/results/ict_noise_input_*.md) and 10 ln σ for
    distillation's fresh F_θ (:func:`~difflab.distill.consistency.log_sigma_noise`: why)."""
    from ..distill.consistency import ConsistencyModel, log_sigma_noise

    if cfg.prediction == "v" or cfg.ct_init_from:
        return ConsistencyModel.v_from_schedule(net, schedule)
    if cfg.method == "consistency-training":
        return ConsistencyModel.from_schedule(net, schedule, SIGMA_DATA,
                                              c_noise=log_sigma_noise(cfg.ct_noise_scale))
    return ConsistencyModel.from_schedule(net, schedule, SIGMA_DATA)


def ct_objective(cfg: TrainConfig, schedule: Schedule, data: Tensor, conds,
                 backend: Backend, codec=None) -> Objective:
    """Consistency training of f_θ: ``ct_variant = "improved"`` (Song & Dhariwal 2023,
    :class:`~.consistency.ImprovedConsistencyTraining`: s0 = 10 → s1 = 1280 over the run's
    steps, lognormal levels, pseudo-Huber, no EMA target; the sampled EMA decays at
    ``ema_decay``) or "original" (Weng eq. 32, Song et al. 2023 Alg. 3: s0 = 2,
    s1 = :func:`ct_final_levels`, μ0 = 0.9, ℓ2); its lr follows :func:`lr_schedule`, which
    for this method defaults to a linear decay to 0 with no warm-up
    (:data:`~difflab.config.CONSISTENCY_TRAINING_LR`). With ``ct_init_from`` F_θ is read as a
    v-network of the schedule (``ConsistencyModel.v_from_schedule``); the run code copies the
    diffusion run's network into it."""
    cond_data = None
    if conds is not None:  # class labels, never dropped (no guidance for consistency models)
        if set(conds.table) != {"y"}:
            raise ValueError("consistency training of a text-conditional run is not "
                             "implemented; use --cond class or none")
        cond_data = {"y": conds.table["y"][conds.choices[:, 0]]}
    model = consistency_model(cfg, build_model(cfg), schedule)
    kw = dict(batch=cfg.batch, iters=cfg.steps, lr=lr_schedule(cfg),
              weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, cond_data=cond_data)
    if cfg.ct_variant == "improved":
        return ImprovedConsistencyTraining(model, data, ema_decay=cfg.ema_decay, **kw)
    return ConsistencyTraining(model, data, s1=ct_final_levels(cfg.steps), **kw)


def clip_objective(cfg: TrainConfig, schedule: Schedule, data: Tensor, conds,
                   backend: Backend, codec=None) -> Objective:
    """A small CLIP (Radford et al. 2021) on the run's images and captions
    (:class:`.clip.ClipObjective`): symmetric InfoNCE with a learned temperature; with
    ``clip_noisy`` on x_t of the run's schedule (:class:`.noisy_clip.NoisyClipObjective`, GLIDE)."""
    from .clip import ClipObjective
    from .noisy_clip import NoisyClipObjective

    kw = dict(batch=cfg.batch, lr=lr_schedule(cfg), ema_decay=cfg.ema_decay,
              weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)
    if cfg.clip_noisy:
        return NoisyClipObjective(build_model(cfg), schedule, data, conds, **kw)
    return ClipObjective(build_model(cfg), data, conds, **kw)


def unclip_prior_objective(cfg: TrainConfig, schedule: Schedule, data: Tensor, conds,
                           backend: Backend, codec=None) -> Objective:
    """unCLIP's prior P(c_i | y) (Weng eq. 34; :class:`.unclip.PriorObjective`) on the CLIP
    image embeddings of the training images, scaled to unit variance per dimension; ``codec``
    is the run's frozen CLIP."""
    from ..build.unclip import image_embeddings, prior_conditions
    from .unclip import PriorObjective

    if codec is None:
        raise ValueError("an unCLIP prior needs its frozen CLIP (the run's --clip)")
    emb = image_embeddings(codec, data)  # (N, D) unit norm
    net = build_model(cfg)
    net.set_scale(emb)
    return PriorObjective(net, schedule, net.scale(emb), batch=cfg.batch, lr=lr_schedule(cfg),
                          ema_decay=cfg.ema_decay, conds=prior_conditions(conds, codec),
                          p_uncond=cfg.p_uncond, weight_decay=cfg.weight_decay,
                          grad_clip=cfg.grad_clip, backend=backend)


def unclip_decoder_objective(cfg: TrainConfig, schedule: Schedule, data: Tensor, conds,
                             backend: Backend, codec=None) -> Objective:
    """unCLIP's decoder P(x | c_i, y) (Weng eq. 34): L_simple of the U-Net of
    :class:`~difflab.nn.unclip_decoder.UnclipDecoder` given each image's CLIP embedding
    (dropped with ``p_uncond_image``) and caption (dropped with ``p_uncond``), regressing
    ``cfg.prediction`` (ε, v or x_0); ``codec`` is the run's frozen CLIP."""
    from ..build.unclip import DecoderConditions, image_embeddings
    from .diffusion import DiffusionObjective

    if codec is None:
        raise ValueError("an unCLIP decoder needs its frozen CLIP (the run's --clip)")
    dconds = DecoderConditions(conds, image_embeddings(codec, data), cfg.p_uncond_image)
    return DiffusionObjective(build_model(cfg), schedule, data, batch=cfg.batch,
                              lr=lr_schedule(cfg), ema_decay=cfg.ema_decay, conds=dconds,
                              p_uncond=cfg.p_uncond, levels=data_levels(cfg),
                              weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
                              backend=backend, prediction=cfg.prediction)


def with_adam_beta2(objective: Objective, cfg: TrainConfig) -> Objective:
    """``objective`` with AdamW's β2 set to ``cfg.adam_beta2``."""
    objective.betas = (objective.betas[0], cfg.adam_beta2)
    return objective


def _configured(build: Callable[..., Objective]) -> Callable[..., Objective]:
    """``build`` followed by :func:`with_adam_beta2`: an objective as the config asks for."""
    def build_configured(cfg: TrainConfig, *args, **kw) -> Objective:
        return with_adam_beta2(build(cfg, *args, **kw), cfg)

    build_configured.__doc__ = build.__doc__
    return build_configured


OBJECTIVES: dict[str, Callable[..., Objective]] = {name: _configured(build) for name, build in {
    "diffusion": diffusion_objective,
    "consistency-training": ct_objective,
    "autoencoder": autoencoder_objective,
    "dsm": score_objective,
    "ssm": score_objective,
    "clip": clip_objective,
    "unclip-prior": unclip_prior_objective,
    "unclip-decoder": unclip_decoder_objective,
}.items()}

__all__ = ["OBJECTIVES", "SIGMA_DATA", "Backend", "Objective", "ct_final_levels", "fit",
           "lr_schedule", "with_adam_beta2"]
