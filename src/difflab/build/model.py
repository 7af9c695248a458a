"""The objects a config names: the noise schedule and the network (through the registry of
model kinds in :mod:`difflab.nn.registry`).

The registry's builders take plain keywords (``nn`` sits below ``config``); ``MODEL_KWARGS`` maps
a config to them, one function per kind, registered by :func:`kwargs_for` under the same name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import schedules
from ..config import TrainConfig, int_list, model_kind
from ..nn.registry import MODELS
from ..parameterization import LearnedVariance
from ..schedules import Schedule

KwargsFn = Callable[[TrainConfig], dict[str, Any]]
MODEL_KWARGS: dict[str, KwargsFn] = {}  # model kind → (config → the builder's keywords)


def kwargs_for(kind: str) -> Callable[[KwargsFn], KwargsFn]:
    """Decorator: the function that maps a config to the keywords of ``MODELS[kind]``."""

    def register(fn: KwargsFn) -> KwargsFn:
        if kind not in MODELS:
            raise ValueError(f"no model kind {kind!r} in difflab.nn.registry.MODELS")
        MODEL_KWARGS[kind] = fn
        return fn

    return register


# --- pieces ---
def build_schedule(cfg: TrainConfig) -> Schedule:
    return schedules.linear(cfg.T) if cfg.schedule == "linear" else schedules.cosine(cfg.T)


def build_model(cfg: TrainConfig) -> nn.Module:
    """The ε-network of kind ``model_kind(cfg)`` — by default the MLP for 2-D data, the U-Net for
    images — initialised from ``cfg.seed`` without touching torch's global RNG. With
    ``variance = "learned"`` the network outputs [ε̂, v_raw] (twice the channels) and comes
    wrapped in :class:`~difflab.parameterization.LearnedVariance`, so the model returns (ε̂, v) —
    Weng eq. (23). An autoencoder run (``method = "autoencoder"``) gets its autoencoder
    (:func:`build_autoencoder`)."""
    if cfg.method == "autoencoder":
        return build_autoencoder(cfg)
    if cfg.method in UNCLIP_BUILDERS:  # Weng eq. 34: the CLIP, the prior, the decoder
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return UNCLIP_BUILDERS[cfg.method](cfg)
    kind = model_kind(cfg)
    kwargs = MODEL_KWARGS[kind](cfg)  # draws no random numbers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = MODELS[kind](**kwargs)
    return LearnedVariance(net) if cfg.variance == "learned" else net


@kwargs_for("mlp")
def mlp_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """The MLP (:class:`~difflab.nn.mlp.MLPDenoiser`) on 2-D points."""
    return dict(dim=2, hidden=cfg.hidden, depth=cfg.depth, t_dim=cfg.t_dim,
                learn_sigma=cfg.variance == "learned")


@kwargs_for("unet")
def unet_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """The fields of the run's :class:`~difflab.nn.unet.UNetConfig`. Beside DDPM's network (the
    defaults) the config reaches every option of the U-Net:

    - ``num_heads`` / ``num_head_channels``: several heads, or a fixed width a head, in every
      attention layer; ``resblock_updown``: BigGAN residual blocks that down/up-sample;
      ``rescale_skip``: residual sums and skips scaled by 1/√2 (Dhariwal & Nichol 2021, §3).
    - ``efficient``: Imagen's Efficient U-Net, one skip per level and the convolutions at the
      lower resolution (Saharia et al. 2022, App. F); ``pool_context``: the pooled caption added
      to the time embedding (ibid. §2.2); ``mid_attention``: self-attention in the middle.

    GroupNorm takes gcd(32, every level's width) groups, so any width works."""
    from .data import model_shape

    mult = int_list(cfg.channel_mult)
    widths = [cfg.model_channels * m for m in mult]
    return dict(
        in_channels=model_shape(cfg)[0], model_channels=cfg.model_channels, channel_mult=mult,
        num_res_blocks=cfg.num_res_blocks, attention_resolutions=int_list(cfg.attention),
        mid_attention=cfg.mid_attention, num_heads=cfg.num_heads,
        num_head_channels=cfg.num_head_channels or None, dropout=cfg.dropout,
        num_classes=cfg.num_classes if cfg.cond == "class" else 0,
        context_dim=text_dim() if cfg.cond == "text" else 0, pool_context=cfg.pool_context,
        resblock_updown=cfg.resblock_updown, rescale_skip=cfg.rescale_skip,
        learn_sigma=cfg.variance == "learned", efficient=cfg.efficient,
        groups=math.gcd(32, *widths), **super_resolution_kwargs(cfg))


def super_resolution_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """A super-resolution run's U-Net (or DiT) options (Ho et al. 2021; Saharia et al. 2022,
    §2.5): the low-resolution image's channels, and the embedding of the augmentation level s
    for the gaussian and truncated augmentations. {} for every other run, so its network is
    unchanged."""
    if not cfg.sr_low_res:
        return {}
    from .data import model_shape

    return dict(low_res_channels=model_shape(cfg)[0],
                aug_embedding=cfg.sr_augment in ("gaussian", "truncated"))


def text_dim() -> int:
    from ..nn.text_encoder import MiniLMConfig

    return MiniLMConfig().dim  # D of the frozen text encoder's tokens


@kwargs_for("dit")
def dit_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """The fields of the run's :class:`~difflab.nn.dit.DiTConfig`: the named size ``dit_size``
    (depth, width, heads from :data:`~difflab.nn.dit.DIT_SIZES`), ``patch_size``, the block
    design ``dit_block`` (Peebles & Xie 2023, Fig. 5), the image's channels and size, labels
    or caption tokens as the run's ``cond`` says, and [ε, v] outputs for a learned Σ_θ."""
    from ..nn.dit import DIT_SIZES
    from .data import model_shape

    channels, height, width = model_shape(cfg)
    return dict(
        **DIT_SIZES[cfg.dit_size]._asdict(), in_channels=channels, input_size=(height, width),
        patch_size=cfg.patch_size, block=cfg.dit_block, time_features=cfg.dit_time_features,
        num_classes=cfg.num_classes if cfg.cond == "class" else 0,
        context_dim=text_dim() if cfg.cond == "text" else 0, pool_context=cfg.pool_context,
        learn_sigma=cfg.variance == "learned", **super_resolution_kwargs(cfg))


def build_autoencoder(cfg: TrainConfig):
    """The :class:`~difflab.nn.autoencoder.Autoencoder` the ``ae_*`` fields describe, for the
    run's images, initialised from ``cfg.seed`` without touching torch's global RNG."""
    from ..nn.autoencoder import Autoencoder, AutoencoderConfig
    from .data import image_shape

    config = AutoencoderConfig(
        in_channels=image_shape(cfg)[0], latent_channels=cfg.ae_latent_channels,
        factor=cfg.ae_factor, channels=cfg.ae_channels, res_blocks=cfg.ae_res_blocks,
        kind=cfg.ae_type, codebook_size=cfg.codebook_size, vq_beta=cfg.vq_beta)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return Autoencoder(config)


# --- unCLIP (Weng eq. 34; Ramesh et al. 2022) ---------------------------------------------------
def build_clip(cfg: TrainConfig) -> nn.Module:
    """The small :class:`~difflab.nn.clip.CLIP` of a CLIP run (method "clip") for its images;
    with ``clip_noisy`` the noise-aware :class:`~difflab.nn.noisy_clip.NoisyCLIP` (GLIDE)."""
    from ..nn.clip import CLIP, CLIPConfig
    from ..nn.noisy_clip import NoisyCLIP
    from .data import image_shape

    c, s, _ = image_shape(cfg)
    net = NoisyCLIP if cfg.clip_noisy else CLIP
    return net(CLIPConfig(in_channels=c, image_size=s, width=cfg.clip_width,
                           embed_dim=cfg.clip_dim, text_dim=text_dim(),
                           text_width=cfg.clip_text_width, max_tokens=max(64, cfg.text_tokens)))


def build_prior(cfg: TrainConfig) -> nn.Module:
    """The :class:`~difflab.nn.unclip_prior.DiffusionPrior` of a prior run; ``clip_dim`` is its
    CLIP run's (copied into the run's config when it starts)."""
    from ..nn.unclip_prior import DiffusionPrior, PriorConfig

    return DiffusionPrior(PriorConfig(embed_dim=cfg.clip_dim, text_dim=text_dim(),
                                      width=cfg.prior_width, depth=cfg.prior_depth,
                                      max_tokens=max(64, cfg.text_tokens)))


def build_decoder(cfg: TrainConfig) -> nn.Module:
    """The :class:`~difflab.nn.unclip_decoder.UnclipDecoder` of a decoder run: the run's
    text-conditional U-Net and the CLIP image embedding's two pathways."""
    from ..nn.unclip_decoder import UnclipDecoder

    unet = MODELS["unet"](**MODEL_KWARGS["unet"](cfg))
    return UnclipDecoder(unet, cfg.clip_dim, cfg.decoder_tokens)


UNCLIP_BUILDERS: dict[str, Callable[[TrainConfig], nn.Module]] = {
    "clip": build_clip, "unclip-prior": build_prior, "unclip-decoder": build_decoder}
