"""The checks a :class:`~difflab.config.TrainConfig` passes when it is made: ranges, names from
the registries (datasets, samplers, model kinds), and the combinations that train what they
claim to. Every failure is ONE line that names the config key, as a
:class:`~difflab.errors.ConfigError`."""

from __future__ import annotations

import math

from ..errors import ConfigError
from ..nn.registry import AUTO, MODEL_DATA, MODELS
from .train_config import VALIDATORS, TrainConfig

SCHEDULES = ("linear", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")  # see difflab.training.backend
PRECISIONS = ("fp32", "bf16", "fp16")
LOGS = ("csv", "tensorboard")  # see difflab.training.loggers
LR_SCHEDULES = ("constant", "cosine", "linear")  # see training.diffusion.LRSchedule
VARIANCES = ("beta_tilde", "beta", "learned")  # Σ_θ of p_θ(x_{t−1} | x_t), see vlb.p_from_eps
LOSSES = ("simple", "hybrid", "vlb")
T_SAMPLINGS = ("uniform", "importance")
UNCLIP_METHODS = ("clip", "unclip-prior", "unclip-decoder")  # Weng eq. 34 (difflab.nn.clip)
CONDS = ("none", "class", "text")  # what the network is conditioned on (difflab.conditioning)
# how a run's network was made (difflab.distill): trained as a diffusion model or by consistency
# training (`difflab train --method`), or distilled from a teacher run (`difflab distill`)
METHODS = ("diffusion", "consistency-training", "progressive", "consistency-distillation",
           "autoencoder", "dsm", "ssm", *UNCLIP_METHODS)
SCORE_METHODS = ("dsm", "ssm")  # score networks s_θ(x̃, σ) (difflab.ncsn), Langevin-sampled
CONSISTENCY_METHODS = ("consistency-training", "consistency-distillation")  # f_θ, eq. (30)
PREDICTIONS = ("eps", "x0", "v")  # what the network outputs (progressive students: x0 or v)
# image datasets and the sizes their committed FD classifiers take (difflab.fd)
# (MNIST 16: the padded 32×32 average-pooled by 2, a cascade's base; its FD goes through the
# 32×32 classifier, see difflab.runs.cascade.LowResFD)
IMAGE_SIZES = {"digits": (8, 16, 32), "mnist": (16, 28, 32), "shapes": (32, 64)}
IMAGE_DATASETS = (*IMAGE_SIZES, "folder")  # "folder": the images under `data`, no FD


def is_image(dataset: str) -> bool:
    """Whether ``dataset`` names image data (U-Net, FD) rather than 2-D points (MLP, SWD)."""
    return dataset in IMAGE_DATASETS


def int_list(text: str) -> tuple[int, ...]:
    """"1,2,2" → (1, 2, 2); "" → (). ConfigError (a ValueError) on anything else."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"expected comma-separated integers like '1,2', got {text!r}") from None


def image_size(cfg: TrainConfig) -> int:
    """The run's image side in pixels (``image_size``, or the dataset's own if 0)."""
    return cfg.image_size or {"digits": 8, "mnist": 32, "shapes": 32}.get(cfg.dataset, 32)


def model_kind(cfg: TrainConfig) -> str:
    """The registry name of the run's network (:data:`difflab.nn.registry.MODELS`): ``model``,
    where "auto" is the MLP for 2-D data and the U-Net for images."""
    return AUTO[data_kind(cfg.dataset)] if cfg.model == "auto" else cfg.model


def data_kind(dataset: str) -> str:
    """"images" or "points" (2-D): the kind of data ``dataset`` is, as the model registry
    (:data:`difflab.nn.registry.MODEL_DATA`) names it."""
    return "images" if is_image(dataset) else "points"


def _need(cfg: TrainConfig, ok: bool, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r} {what}, got {getattr(cfg, key)!r}")


def validate(cfg: TrainConfig) -> None:
    """Range checks that need no other module; names of datasets and samplers are checked too."""
    from ..data.toy2d import DATASETS
    from ..samplers import SAMPLERS, SPACING_NAMES, grids_of

    def need(ok: bool, key: str, what: str) -> None:
        _need(cfg, ok, key, what)

    names = (*DATASETS, *IMAGE_DATASETS)
    need(cfg.dataset in names, "dataset", f"must be one of {', '.join(names)}")
    kinds = ("auto", *MODELS)
    need(cfg.model in kinds, "model", f"must be one of {', '.join(kinds)}")
    fits = [k for k in MODELS if MODEL_DATA[k] == data_kind(cfg.dataset)]
    need(cfg.model == "auto" or cfg.model in fits, "model",
         f"must be auto or {' or '.join(fits)} for {cfg.dataset}")
    need(cfg.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}")
    need(cfg.lr_schedule in LR_SCHEDULES, "lr_schedule",
         f"must be one of {', '.join(LR_SCHEDULES)}")
    need(cfg.eval_sampler in SAMPLERS, "eval_sampler", f"must be one of {', '.join(SAMPLERS)}")
    # auto, or a grid of the evaluation's sampler (those of `difflab sample --spacing`); a
    # sampler without a grid (consistency) ignores it
    need(cfg.eval_spacing in ("auto", *SPACING_NAMES), "eval_spacing",
         f"must be auto or one of {', '.join(SPACING_NAMES)}")
    grids = grids_of(cfg.eval_sampler) if cfg.eval_sampler in SAMPLERS else ()
    need(cfg.eval_spacing == "auto" or not grids or cfg.eval_spacing in grids, "eval_spacing",
         f"must be auto or a grid of eval_sampler {cfg.eval_sampler!r} "
         f"({', '.join(grids)})")
    need(cfg.variance in VARIANCES, "variance", f"must be one of {', '.join(VARIANCES)}")
    need(cfg.loss in LOSSES, "loss", f"must be one of {', '.join(LOSSES)}")
    need(cfg.t_sampling in T_SAMPLINGS, "t_sampling", f"must be one of {', '.join(T_SAMPLINGS)}")
    need(math.isfinite(cfg.hybrid_lambda) and cfg.hybrid_lambda > 0, "hybrid_lambda",
         "must be positive and finite")
    _check_objective(cfg)
    need(cfg.cond in CONDS, "cond", f"must be one of {', '.join(CONDS)}")
    need(cfg.cond == "none" or is_image(cfg.dataset), "cond",
         "needs image data (digits, mnist or folder); 2-D data is unconditional")
    need(0 <= cfg.p_uncond < 1, "p_uncond", "must lie in [0, 1)")
    need(cfg.num_classes == 0 or cfg.num_classes >= 2, "num_classes",
         "must be 0 (the dataset's) or at least 2")
    need(cfg.text_tokens >= 2, "text_tokens", "must be at least 2 ([CLS] and [SEP])")
    need(math.isfinite(cfg.eval_guidance) and cfg.eval_guidance >= 0, "eval_guidance",
         "must be a finite number >= 0")
    need(cfg.eval_guidance == 0 or cfg.cond != "none", "eval_guidance",
         "needs a conditional run (cond class or text)")
    _check_method(cfg)
    _check_score_matching(cfg)
    _check_unclip(cfg)
    for key in ("n_train", "T", "hidden", "t_dim", "steps", "batch", "checkpoint_every", "n_eval",
                "log_every"):
        need(getattr(cfg, key) >= 1, key, "must be at least 1")
    for key in ("depth", "warmup", "seed", "skip_nonfinite"):
        need(getattr(cfg, key) >= 0, key, "must be at least 0")
    need(cfg.threads >= 0, "threads", "must be at least 0 (0: all the cores torch is given)")
    need(cfg.device.split(":")[0] in DEVICES, "device", f"must be one of {', '.join(DEVICES)}")
    need(cfg.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
    need(cfg.log in LOGS, "log", f"must be one of {', '.join(LOGS)}")
    need(cfg.grad_accum >= 1, "grad_accum", "must be at least 1")
    need(1 <= cfg.eval_steps <= cfg.T, "eval_steps", f"must lie in 1..T (T={cfg.T})")
    for key in ("lr", "lr_min_ratio", "weight_decay", "adam_beta2", "grad_clip", "ema_decay",
                "eval_eta"):
        need(math.isfinite(getattr(cfg, key)), key, "must be finite")
    need(cfg.lr > 0, "lr", "must be positive")
    need(0 <= cfg.lr_min_ratio <= 1, "lr_min_ratio", "must lie in [0, 1]")
    need(cfg.weight_decay >= 0, "weight_decay", "must be at least 0")
    need(0 < cfg.adam_beta2 < 1, "adam_beta2", "must lie in (0, 1)")
    need(cfg.grad_clip >= 0, "grad_clip", "must be at least 0 (0 disables clipping)")
    need(0 <= cfg.ema_decay < 1, "ema_decay", "must lie in [0, 1)")
    need(cfg.eval_eta >= 0, "eval_eta", "must be at least 0")
    need(cfg.image_size >= 0, "image_size", "must be at least 0 (0: the dataset's own)")
    _check_unet(cfg)
    _check_dit(cfg)
    need(cfg.channels in ((1, 3) if cfg.dataset in ("folder", "shapes") else (1,)), "channels",
         "must be 1 (grey) or 3 (RGB) for folder, 1 otherwise (shapes are RGB: 1, the "
         "default, or 3)")
    need(bool(cfg.data) == (cfg.dataset == "folder"), "data",
         "must name the image directory for dataset folder, and only then")
    factors = [2**level for level in range(len(_ints(cfg, "channel_mult")))]
    if cfg.dataset in IMAGE_SIZES:
        sizes = IMAGE_SIZES[cfg.dataset]
        need(image_size(cfg) in sizes, "image_size",
             f"must be one of {', '.join(map(str, sizes))} for {cfg.dataset} (or 0)")
    _check_autoencoder(cfg)
    _check_super_resolution(cfg)
    if is_image(cfg.dataset) and cfg.method != "autoencoder":
        side, what = image_size(cfg), "the image size"
        if cfg.autoencoder:
            side, what = side // cfg.ae_factor, f"the latent size (image / {cfg.ae_factor})"
        need(side % factors[-1] == 0, "image_size",
             f"must make {what} divisible by {factors[-1]} ({len(factors)} resolution levels "
             f"in channel_mult {cfg.channel_mult!r})")


def _check_unet(cfg: TrainConfig) -> None:
    """The U-Net's keys, checked on every config (a 2-D run's unused U-Net keys too, so that a
    preset is valid whatever data it is later pointed at): widths, levels, attention factors,
    and heads that split every attention layer's channels."""

    def need(ok: bool, key: str, what: str) -> None:
        _need(cfg, ok, key, what)

    need(0 <= cfg.dropout < 1, "dropout", "must lie in [0, 1)")
    for key in ("model_channels", "num_res_blocks", "num_heads"):
        need(getattr(cfg, key) >= 1, key, "must be at least 1")
    need(cfg.num_head_channels >= 0, "num_head_channels",
         "must be at least 0 (0: use num_heads)")
    mult, attn = _ints(cfg, "channel_mult"), _ints(cfg, "attention")
    need(len(mult) >= 1 and min(mult) >= 1, "channel_mult",
         "must be comma-separated integers >= 1, like '1,2'")
    factors = [2**level for level in range(len(mult))]
    need(all(f in factors for f in attn), "attention",
         f"must list downsampling factors among {factors}")
    widths = [cfg.model_channels * m for m in mult]
    if cfg.num_head_channels:  # UNetConfig checks every level, attended or not
        need(all(w % cfg.num_head_channels == 0 for w in widths), "num_head_channels",
             f"must divide the width of every level ({', '.join(map(str, widths))} channels)")
        return
    # the attention layers: the levels in `attention`, and the middle (self-attention, or
    # cross-attention alone for text without mid_attention)
    attended = {widths[factors.index(f)] for f in attn}
    if cfg.mid_attention or cfg.cond == "text":
        attended.add(widths[-1])
    need(all(w % cfg.num_heads == 0 for w in attended), "num_heads",
         f"must divide the width of every attention layer ({', '.join(map(str, sorted(attended)))} "
         "channels)")


def _check_dit(cfg: TrainConfig) -> None:
    """The DiT's keys, checked on every config like the U-Net's; the patch must divide the image
    only when the run builds a DiT."""
    from ..nn.dit import DIT_BLOCKS, DIT_SIZES, TIME_FEATURES

    def need(ok: bool, key: str, what: str) -> None:
        _need(cfg, ok, key, what)

    need(cfg.dit_size in DIT_SIZES, "dit_size", f"must be one of {', '.join(DIT_SIZES)}")
    need(cfg.patch_size >= 1, "patch_size", "must be at least 1")
    need(cfg.dit_block in DIT_BLOCKS, "dit_block", f"must be one of {', '.join(DIT_BLOCKS)}")
    need(cfg.dit_time_features in TIME_FEATURES, "dit_time_features",
         f"must be one of {', '.join(TIME_FEATURES)}")
    if cfg.model == "dit" and is_image(cfg.dataset):
        side = image_size(cfg) // (cfg.ae_factor if cfg.autoencoder else 1)
        need(side % cfg.patch_size == 0, "patch_size",
             f"must divide the {'latent' if cfg.autoencoder else 'image'} size ({side} pixels)")


AE_TYPES, AE_FACTORS, REC_LOSSES = ("kl", "vq"), (1, 2, 4, 8), ("l1", "l2")


def _check_autoencoder(cfg: TrainConfig) -> None:
    """The autoencoder's keys (checked on every config, like the U-Net's), and what an
    autoencoder run or a latent run needs: image data, and for an autoencoder run no
    conditioning; a latent run is trained as a diffusion model (and distilled from one)."""

    def need(ok: bool, key: str, what: str) -> None:
        _need(cfg, ok, key, what)

    need(cfg.ae_type in AE_TYPES, "ae_type", f"must be one of {', '.join(AE_TYPES)}")
    need(cfg.ae_factor in AE_FACTORS, "ae_factor", f"must be one of {AE_FACTORS}")
    need(cfg.rec_loss in REC_LOSSES, "rec_loss", f"must be one of {', '.join(REC_LOSSES)}")
    for key in ("ae_latent_channels", "ae_channels", "ae_res_blocks"):
        need(getattr(cfg, key) >= 1, key, "must be at least 1")
    need(cfg.codebook_size >= 2, "codebook_size", "must be at least 2")
    for key in ("vq_beta", "kl_weight", "perceptual_weight", "disc_weight", "latent_scale"):
        need(math.isfinite(getattr(cfg, key)) and getattr(cfg, key) >= 0, key,
             "must be a finite number >= 0")
    need(cfg.disc_start >= 0, "disc_start", "must be at least 0")
    if cfg.method == "autoencoder" or cfg.autoencoder:
        need(is_image(cfg.dataset), "dataset", "must be image data for an autoencoder or a "
             "latent run")
        need(image_size(cfg) % cfg.ae_factor == 0, "image_size",
             f"must be divisible by the autoencoder's factor ae_factor = {cfg.ae_factor}")
    if cfg.method == "autoencoder":
        need(cfg.cond == "none", "cond", "must be none for an autoencoder run (it is "
             "unconditional)")
        need(not cfg.autoencoder, "autoencoder", "must be empty for an autoencoder run")
    if cfg.autoencoder:
        need(cfg.method != "consistency-training", "autoencoder",
             "is for diffusion runs (latent consistency training is not implemented; distil a "
             "latent run with 'difflab distill' instead)")
    need(not cfg.latent_cache or bool(cfg.autoencoder), "latent_cache",
         "needs a latent run (autoencoder = an autoencoder run)")


SR_AUGMENTS = ("none", "gaussian", "truncated", "blur")  # Ho et al. 2021, §3


def _check_super_resolution(cfg: TrainConfig) -> None:
    """A super-resolution run (``sr_low_res`` > 0): image data in pixel space, a U-Net or DiT
    trained as a diffusion model, a low-resolution side that divides the image side by a power
    of 2, and augmentation parameters in range (s in 0..T, 0 <= σ_min <= σ_max)."""

    def need(ok: bool, key: str, what: str) -> None:
        _need(cfg, ok, key, what)

    need(cfg.sr_augment in SR_AUGMENTS, "sr_augment", f"must be one of {', '.join(SR_AUGMENTS)}")
    need(0 <= cfg.sr_aug_max <= cfg.T, "sr_aug_max", f"must lie in 0..T (T={cfg.T})")
    need(0 <= cfg.sr_aug_level <= cfg.T, "sr_aug_level", f"must lie in 0..T (T={cfg.T})")
    for key in ("sr_blur_min", "sr_blur_max"):
        need(math.isfinite(getattr(cfg, key)) and getattr(cfg, key) >= 0, key,
             "must be a finite number >= 0")
    need(cfg.sr_blur_max >= cfg.sr_blur_min, "sr_blur_max", "must be at least sr_blur_min")
    need(cfg.sr_low_res >= 0, "sr_low_res", "must be at least 0 (0: not super-resolution)")
    if not cfg.sr_low_res:
        need(cfg.sr_augment == "none", "sr_augment", "needs a super-resolution run (sr_low_res)")
        return
    side = image_size(cfg)
    factor = side // cfg.sr_low_res if side % cfg.sr_low_res == 0 else 0
    need(is_image(cfg.dataset), "sr_low_res", "needs image data")
    need(factor >= 2 and factor & (factor - 1) == 0, "sr_low_res",
         f"must be the image size {side} divided by a power of 2 (2, 4, …)")
    need(model_kind(cfg) in ("unet", "dit"), "model",
         "must be unet (or auto) or dit for a super-resolution run")
    need(cfg.method == "diffusion", "method", "must be diffusion for a super-resolution run")
    need(not cfg.autoencoder, "autoencoder", "must be empty: super-resolution runs in pixel space")
    if cfg.sr_augment in ("gaussian", "truncated"):
        need(cfg.sr_aug_max >= 1, "sr_aug_max", f"must be at least 1 for sr_augment "
             f"{cfg.sr_augment!r} (the range 0..sr_aug_max of the level s)")


def _check_objective(cfg: TrainConfig) -> None:
    """The combinations of variance, loss and t_sampling that train what they claim to.

    - L_hybrid's L_vlb term sees μ_θ through a stop-gradient (Weng eq. 23 and the text after it),
      so with a fixed Σ_θ it has no gradient at all: loss "hybrid" needs variance "learned".
    - L_simple does not depend on Σ_θ, so a learned v would keep its initial value: variance
      "learned" needs loss "hybrid" or "vlb".
    - Importance sampling draws t ∝ √E[L_t²] from the history of the bound's terms (Nichol &
      Dhariwal 2021, §3.3), which only losses "hybrid" and "vlb" compute.
    - Loss "vlb" (the bound alone) trains μ_θ and, if learned, Σ_θ: any variance.
    """
    if cfg.t_sampling == "importance" and cfg.loss not in ("hybrid", "vlb"):
        raise ConfigError("config key 't_sampling' = 'importance' needs config key 'loss' = "
                          "'hybrid' or 'vlb' (p_t comes from the history of the L_vlb terms)")
    if cfg.loss == "hybrid" and cfg.variance != "learned":
        raise ConfigError("config key 'loss' = 'hybrid' needs config key 'variance' = 'learned' "
                          "(the L_vlb term has a stop-gradient on μ_θ, so with a fixed Σ_θ it "
                          "trains nothing)")
    if cfg.variance == "learned" and cfg.loss == "simple":
        raise ConfigError("config key 'variance' = 'learned' needs config key 'loss' = 'hybrid' "
                          "or 'vlb' (L_simple does not depend on Σ_θ, so v would never be "
                          "trained)")


def _check_method(cfg: TrainConfig) -> None:
    """A run's method, the network's output and its sampler agree: progressive students (and
    only they) predict x0 or v and carry their step count; consistency models (Weng eq. 30)
    sample with the ``consistency`` sampler only and ε-models never do; neither learns Σ_θ."""
    if cfg.method not in METHODS:
        raise ConfigError(f"config key 'method' must be one of {', '.join(METHODS)}, "
                          f"got {cfg.method!r}")
    if cfg.prediction not in PREDICTIONS:
        raise ConfigError(f"config key 'prediction' must be one of {', '.join(PREDICTIONS)}, "
                          f"got {cfg.prediction!r}")
    progressive = cfg.method == "progressive"
    v_consistency = cfg.method == "consistency-distillation" and cfg.prediction == "v"
    if cfg.ct_variant not in ("improved", "original"):
        raise ConfigError(f"config key 'ct_variant' must be improved or original, got "
                          f"{cfg.ct_variant!r}")
    if not (math.isfinite(cfg.ct_noise_scale) and cfg.ct_noise_scale > 0):
        raise ConfigError(f"config key 'ct_noise_scale' must be a positive number, got "
                          f"{cfg.ct_noise_scale!r}")
    if cfg.ct_init_from and cfg.method != "consistency-training":
        raise ConfigError("config key 'ct_init_from' needs config key 'method' = "
                          "'consistency-training'")
    trained = (cfg.method in ("diffusion", "unclip-decoder") and cfg.loss == "simple"
               and cfg.variance != "learned")
    if cfg.prediction != "eps" and not (progressive or v_consistency or trained):
        raise ConfigError(f"config key 'prediction' = {cfg.prediction!r} needs config key "
                          "'method' = 'diffusion' or 'unclip-decoder' with loss 'simple' and a "
                          "fixed variance (or a distilled student); use prediction 'eps' "
                          "otherwise")
    if progressive and not 1 <= cfg.distilled_steps <= cfg.T // 2:
        raise ConfigError(f"config key 'distilled_steps' must lie in 1..T/2 for a progressive "
                          f"student, got {cfg.distilled_steps!r}")
    if not progressive and cfg.distilled_steps != 0:
        raise ConfigError("config key 'distilled_steps' needs config key 'method' = "
                          "'progressive'")
    consistency = cfg.method in CONSISTENCY_METHODS
    if consistency != (cfg.eval_sampler == "consistency"):
        raise ConfigError(f"config key 'eval_sampler' = {cfg.eval_sampler!r} does not fit config "
                          f"key 'method' = {cfg.method!r} (the 'consistency' sampler is for "
                          "consistency models only)")
    if cfg.method == "consistency-training" and cfg.cond != "none":
        raise ConfigError("config key 'method' = 'consistency-training' needs config key 'cond' "
                          "= 'none' (conditional consistency training is not implemented; "
                          "distil a class-conditional run with 'difflab distill' instead)")
    if cfg.method != "diffusion" and cfg.variance == "learned":
        raise ConfigError(f"config key 'method' = {cfg.method!r} needs a fixed variance (no "
                          "learned Σ_θ)")


def _check_score_matching(cfg: TrainConfig) -> None:
    """The ladder's keys (checked on every config), and what a score-matching run (method dsm
    or ssm) needs: the langevin sampler (the others take ε-models), no conditioning, pixel space
    and none of the diffusion objective's options (they would be silently ignored)."""

    def need(ok: bool, key: str, what: str) -> None:
        _need(cfg, ok, key, what)

    need(math.isfinite(cfg.sigma_min) and cfg.sigma_min > 0, "sigma_min",
         "must be a positive number")
    need(cfg.sigma_max == 0 or (math.isfinite(cfg.sigma_max) and cfg.sigma_max > cfg.sigma_min),
         "sigma_max", "must be 0 (measured from the data) or above sigma_min")
    need(cfg.sigma_levels == 0 or cfg.sigma_levels >= 2, "sigma_levels",
         "must be 0 (technique 2's rule) or at least 2")
    if cfg.method not in SCORE_METHODS:
        return
    need(cfg.eval_sampler == "langevin", "eval_sampler",
         f"must be langevin for a score network (method {cfg.method})")
    need(cfg.cond == "none", "cond", f"must be none for method {cfg.method} (conditional score "
         "networks are not implemented)")
    need(not cfg.autoencoder, "autoencoder", f"must be empty for method {cfg.method} (score "
         "matching runs in pixel space here)")
    need(cfg.sr_low_res == 0, "sr_low_res", f"must be 0 for method {cfg.method}")
    need(cfg.loss == "simple" and cfg.t_sampling == "uniform", "loss",
         f"and t_sampling are diffusion options; leave them at simple and uniform for method "
         f"{cfg.method}")


def _ints(cfg: TrainConfig, key: str) -> tuple[int, ...]:
    try:
        return int_list(getattr(cfg, key))
    except ValueError as err:
        raise ConfigError(f"config key {key!r}: {err}") from None


VALIDATORS.append(validate)


def _check_unclip(cfg: TrainConfig) -> None:
    """unCLIP's keys, and what its runs need (Weng eq. 34): a CLIP run trains on captions of
    image data; a prior or decoder run names the CLIP run it uses (``clip``) and trains on
    captions; a decoder is a U-Net (its extra conditioning lives in
    :class:`~difflab.nn.unclip_decoder.UnclipDecoder`) in pixel space."""

    def need(ok: bool, key: str, what: str) -> None:
        _need(cfg, ok, key, what)

    for key in ("clip_dim", "clip_width", "clip_text_width", "prior_width", "prior_depth",
                "decoder_tokens"):
        need(getattr(cfg, key) >= 1, key, "must be at least 1")
    need(cfg.clip_text_width % 4 == 0, "clip_text_width", "must be a multiple of 4 (heads)")
    need(cfg.prior_width % 4 == 0, "prior_width", "must be a multiple of 4 (heads)")
    need(0 <= cfg.p_uncond_image < 1, "p_uncond_image", "must lie in [0, 1)")
    need(not cfg.clip_noisy or cfg.method == "clip", "clip_noisy", "is for CLIP runs "
         "(difflab train-clip)")
    if cfg.method not in UNCLIP_METHODS:
        need(not cfg.clip, "clip", "is for unclip-prior and unclip-decoder runs")
        return
    need(is_image(cfg.dataset) and cfg.dataset != "folder", "dataset",
         f"must be digits, mnist or shapes for method {cfg.method!r}")
    need(cfg.cond == "text", "cond", f"must be text for method {cfg.method!r} (it trains on "
         "captions)")
    need(not cfg.autoencoder and not cfg.sr_low_res, "method",
         f"{cfg.method!r} runs in pixel space (no autoencoder, no super-resolution)")
    need(not cfg.clip or cfg.method != "clip", "clip", "must be empty for a CLIP run (a prior "
         "or decoder run names its CLIP run here; training checks it is given)")
    if cfg.method == "unclip-decoder":
        need(model_kind(cfg) == "unet", "model", "must be unet (or auto) for an unCLIP decoder")
