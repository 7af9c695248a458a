"""The fields of :class:`TrainConfig`, their sections and their help text.

``TrainConfig`` is flat (the code reads ``cfg.lr``), but every field carries
``metadata={"section": ..., "help": ...}``: the section groups it in a config file (``[model]``)
and the help is what ``difflab train --help`` prints beside its flag (:func:`field_help`).
:meth:`TrainConfig.to_sections` and :meth:`TrainConfig.from_sections` give the sectioned form;
a flat dict (the ``config.json`` of older runs) is accepted too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError

# the sections of a config file, in the order they are written
SECTIONS = ("data", "model", "autoencoder", "diffusion", "objective", "conditioning", "optimiser",
            "evaluation", "run")


def _in(section: str) -> Callable[[Any, str], Any]:
    """``field(default, help)`` for the fields of ``section``."""
    assert section in SECTIONS

    def field(default: Any, help: str) -> Any:
        return dataclasses.field(default=default, metadata={"section": section, "help": help})

    return field


_data, _model, _diffusion, _objective = (_in("data"), _in("model"), _in("diffusion"),
                                         _in("objective"))
_conditioning, _optimiser, _evaluation, _run = (_in("conditioning"), _in("optimiser"),
                                                _in("evaluation"), _in("run"))
_autoencoder = _in("autoencoder")


# the checks every config passes when it is made, registered by difflab.config.checks (which
# imports this module, so this one need not import it back)
VALIDATORS: list[Callable[[Any], None]] = []


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Defaults are the tuned swiss-roll model."""

    # --- data ---
    dataset: str = _data("swiss_roll", "2-D: swiss_roll, moons, 8gaussians, checkerboard; images: "
                                       "digits, mnist, shapes (generated scenes with exact "
                                       "captions), folder (with --data)")
    n_train: int = _data(100_000, "size of the fixed 2-D training set, drawn from the seed "
                                  "(images: the whole train split)")
    image_size: int = _data(0, "image side in pixels (digits 8, 16, 32; mnist 16, 28, 32; folder: "
                               "any multiple of 2^(levels-1); 0: the dataset's own: digits 8, "
                               "mnist, shapes and folder 32; shapes 32 or 64)")
    data: str = _data("", "image directory for --dataset folder (any Pillow format)")
    channels: int = _data(1, "image channels for --dataset folder: 1 (grey) or 3 (RGB); digits "
                             "and mnist are grey, shapes RGB")

    # --- model: "auto" → the MLP for 2-D data, the U-Net for images (difflab.nn.registry) ---
    model: str = _model("auto", "auto (MLP for 2-D data, U-Net for images), mlp or unet")
    # the MLP (difflab.nn.mlp.MLPDenoiser)
    hidden: int = _model(64, "MLP width")
    depth: int = _model(3, "number of residual MLP blocks")
    t_dim: int = _model(64, "MLP: width of the sinusoidal time embedding")
    # the U-Net (difflab.nn.unet.UNetConfig); the defaults of the options below it are DDPM's
    # network as every run before them had it
    model_channels: int = _model(32, "U-Net base width")
    channel_mult: str = _model("1,2", "U-Net width multipliers, one per resolution level, e.g. "
                                      "1,2")
    num_res_blocks: int = _model(2, "U-Net residual blocks per level")
    attention: str = _model("2", "U-Net self-attention at these downsampling factors, e.g. 2 "
                                 "('' for none)")
    mid_attention: bool = _model(True, "U-Net self-attention in the middle block (DDPM, ADM)")
    num_heads: int = _model(4, "U-Net attention heads (when --num-head-channels is 0)")
    num_head_channels: int = _model(0, "U-Net channels per attention head, heads = channels // "
                                       "this (ADM: 64; Dhariwal & Nichol 2021, §3); 0: use "
                                       "--num-heads")
    resblock_updown: bool = _model(False, "U-Net down/up-sampling by BigGAN residual blocks "
                                          "(Dhariwal & Nichol 2021, §3)")
    rescale_skip: bool = _model(False, "U-Net residual sums and skip connections scaled by 1/√2 "
                                       "(Dhariwal & Nichol 2021, §3; Saharia et al. 2022, App. F)")
    efficient: bool = _model(False, "Imagen's Efficient U-Net: one skip per level, convolutions "
                                    "at the lower resolution (Saharia et al. 2022, App. F)")
    pool_context: bool = _model(True, "with --cond text: the masked mean of the caption tokens, "
                                      "projected, added to the time embedding (Saharia et al. "
                                      "2022, §2.2)")
    dropout: float = _model(0.0, "U-Net dropout")
    # the diffusion transformer (difflab.nn.dit.DiTConfig; Peebles & Xie 2023), model "dit"
    dit_size: str = _model("XS", "DiT size: depth/width/heads from difflab.nn.dit.DIT_SIZES: T "
                                 "4/64/4, XS 6/128/4 (CPU); the paper's S 12/384/6, B 12/768/12, "
                                 "L 24/1024/16, XL 28/1152/16")
    patch_size: int = _model(2, "DiT patch side p: (H/p)(W/p) tokens (the paper's DiT-XL/2 has "
                                "p = 2); must divide the image size")
    dit_block: str = _model("adaln-zero", "DiT block design (Peebles & Xie 2023, Fig. 5): "
                                          "adaln-zero, adaln, cross-attention or in-context")
    dit_time_features: str = _model("difflab", "DiT sinusoidal features of t: difflab (sin, cos "
                                               "of t) or diffusers (cos, sin of t - 1 with "
                                               "diffusers' frequencies): a run trained with "
                                               "diffusers exports exactly to diffusers' "
                                               "DiTTransformer2DModel (difflab export)")
    # unCLIP (Weng eq. 34; Ramesh et al. 2022): the small CLIP (difflab.nn.clip, method
    # "clip"), the diffusion prior over its image embeddings (difflab.nn.unclip_prior, method
    # "unclip-prior") and the decoder's extra conditioning (method "unclip-decoder")
    clip_dim: int = _model(64, "CLIP: dimension of the shared image/text embedding")
    clip_width: int = _model(32, "CLIP: base width of the image encoder (a small CNN)")
    clip_text_width: int = _model(128, "CLIP: width of the text tower over the frozen MiniLM's "
                                       "tokens")
    clip_noisy: bool = _model(False, "CLIP: a noise-aware image encoder f(x_t, t), trained on "
                                     "x_t of the run's schedule, for CLIP guidance (GLIDE; "
                                     "difflab sample --clip-guidance)")
    prior_width: int = _model(128, "unCLIP prior: width of its causal transformer")
    prior_depth: int = _model(4, "unCLIP prior: transformer layers")
    decoder_tokens: int = _model(4, "unCLIP decoder: extra cross-attention tokens projected "
                                    "from the CLIP image embedding")

    # --- autoencoder: the first stage of latent diffusion (difflab.nn.autoencoder; Rombach et
    # al. 2022). `difflab train-autoencoder` trains one (method "autoencoder"); a diffusion run
    # given `autoencoder` = that run's directory trains in its latent space and copies these
    # fields and the measured `latent_scale` from it ---
    autoencoder: str = _autoencoder("", "an autoencoder run (difflab train-autoencoder): train "
                                        "the denoiser on its latents z = scale · E(x) (latent "
                                        "diffusion, Weng eq. 33); '' for pixel space")
    latent_cache: bool = _autoencoder(False, "latent runs: encode the training set once (the "
                                             "posterior's mean and log-variance, so z is still "
                                             "drawn afresh each step) instead of every batch")
    latent_scale: float = _autoencoder(0.0, "latent runs: z = scale · E(x); 0 (the default): "
                                            "the autoencoder run's measured 1/std of its latents "
                                            "over the training set (never a fixed 0.18215)")
    ae_type: str = _autoencoder("kl", "autoencoder regularisation: kl (q(z|x) towards N(0, I)) "
                                      "or vq (a codebook; van den Oord et al. 2017)")
    ae_factor: int = _autoencoder(4, "autoencoder downsampling factor f (1, 2, 4, 8): latents "
                                     "are H/f × W/f")
    ae_latent_channels: int = _autoencoder(3, "autoencoder latent channels c")
    ae_channels: int = _autoencoder(32, "autoencoder base width (levels × 1, 2, 2, 4)")
    ae_res_blocks: int = _autoencoder(1, "autoencoder residual blocks a level")
    codebook_size: int = _autoencoder(256, "VQ codebook entries K")
    vq_beta: float = _autoencoder(0.25, "VQ commitment weight β")
    kl_weight: float = _autoencoder(1e-6, "KL weight (LDM's: KL summed over latent dims against "
                                          "the reconstruction summed over pixels)")
    rec_loss: str = _autoencoder("l1", "autoencoder reconstruction loss: l1 or l2")
    perceptual_weight: float = _autoencoder(1.0, "weight of the perceptual distance in the "
                                                 "committed classifier's features (an LPIPS "
                                                 "stand-in; 0: off, as folders need)")
    disc_weight: float = _autoencoder(0.0, "weight of the patch discriminator's hinge loss, "
                                           "scaled by LDM's adaptive weight (0: no "
                                           "discriminator)")
    disc_start: int = _autoencoder(0, "step from which the discriminator trains and its loss "
                                      "counts")

    # --- diffusion ---
    schedule: str = _diffusion("linear", "noise schedule: linear or cosine")
    T: int = _diffusion(1000, "number of diffusion steps")

    # --- objective. Σ_θ: fixed at β̃_t or β_t, or "learned" (Weng eq. 23): the network outputs
    # [ε̂, v_raw] (2× channels), wrapped by parameterization.LearnedVariance; it is trained by
    # loss "hybrid" or "vlb" only, and "hybrid" trains nothing beyond L_simple without it (see
    # checks); "vlb" is the bound alone (any variance; Nichol & Dhariwal 2021, §3.3) ---
    variance: str = _objective("beta_tilde", "Σ_θ of the reverse process: beta_tilde or beta "
                                             "(fixed), or learned (eq 23: the network outputs "
                                             "[ε, v]; needs --loss hybrid)")
    loss: str = _objective("simple", "simple (L_simple, eq 19), hybrid (L_simple + λ L_vlb "
                                     "with the stop-gradient on μ_θ; needs --variance learned) "
                                     "or vlb (L_vlb alone, eq 16, through μ_θ and Σ_θ; best "
                                     "with --t-sampling importance)")
    hybrid_lambda: float = _objective(0.001, "λ of L_hybrid (Nichol & Dhariwal 2021)")
    t_sampling: str = _objective("uniform", "uniform, or importance (p_t ∝ √E[L_t²] from the "
                                            "history of the bound's terms; needs --loss hybrid "
                                            "or vlb)")
    # fast sampling (difflab.distill): "diffusion" | "consistency-training" (train --method);
    # "progressive" | "consistency-distillation" are written by `difflab distill`, whose
    # progressive students predict `prediction` and were distilled for `distilled_steps` steps;
    # consistency-distillation runs with prediction "v" read F_θ as a v-network (a copy of the
    # teacher's, ConsistencyModel.v_from_schedule), with "eps" under EDM's preconditioning
    method: str = _objective("diffusion", "diffusion, consistency-training (Weng eq. 32: a "
                                          "consistency model, sampled with --sampler "
                                          "consistency), autoencoder (the first stage of "
                                          "latent diffusion; difflab train-autoencoder), "
                                          "dsm / ssm (a noise-conditional score network by "
                                          "denoising or sliced score matching, sampled with "
                                          "--sampler langevin; also --objective), clip "
                                          "(difflab train-clip), unclip-prior or "
                                          "unclip-decoder (Weng eq. 34, with --clip RUN)")
    prediction: str = _objective("eps", "what the network outputs and regresses: eps, v "
                                        "(Salimans & Ho 2022) or x0; v and x0 need loss simple "
                                        "and a fixed variance (also set on students of "
                                        "'difflab distill')")
    distilled_steps: int = _objective(0, "set by 'difflab distill' (the steps a progressive "
                                         "student takes)")
    # consistency training (method "consistency-training"): Song & Dhariwal 2023's improved
    # recipe or the original Alg. 3 of Song et al. 2023; optionally warm-started from the EMA
    # ε-network of a diffusion run (read as a v-network: ConsistencyModel.v_from_schedule)
    ct_variant: str = _objective("improved", "consistency training: improved (Song & Dhariwal "
                                             "2023: no EMA target, pseudo-Huber, lognormal "
                                             "levels, N doubling 10 → 1280) or original (Song "
                                             "et al. 2023, Alg. 3)")
    ct_noise_scale: float = _objective(10.0, "consistency training from a fresh F_θ: "
                                             "c_noise(σ) = scale · ln σ, the network's noise "
                                             "input (the digits and mnist presets set 250, "
                                             "Song et al.'s 1000 · ¼ ln σ)")
    ct_init_from: str = _objective("", "consistency training: a diffusion run directory whose "
                                       "EMA network F_θ starts from (same model fields; read as "
                                       "a v-network); empty: a fresh F_θ")
    # score matching (method "dsm" / "ssm"; difflab.ncsn): a noise-conditional score network
    # over the geometric ladder σ_1 > … > σ_L of q_σ(x̃ | x) = N(x, σ² I) (Song & Ermon 2019,
    # 2020); sigma_max = 0 and sigma_levels = 0 are measured when the run starts (techniques 1
    # and 2) and written into its config
    sigma_max: float = _objective(0.0, "score matching: σ_1, the largest noise level (0: the "
                                       "largest pairwise distance of the training data, "
                                       "technique 1 of Song & Ermon 2020)")
    sigma_min: float = _objective(0.01, "score matching: σ_L, the smallest noise level")
    sigma_levels: int = _objective(0, "score matching: L, the number of noise levels (0: "
                                      "technique 2's rule for the data's dimension D; 10 where "
                                      "it has no solution, D <= 4)")

    # --- conditioning (images only): class labels or captions, dropped to ∅ with probability
    # p_uncond so that one network learns ε(x_t, t, y) and ε(x_t, t, ∅) (Weng eq. 26) ---
    cond: str = _conditioning("none", "none, class (label embedding) or text (captions through "
                                      "the frozen MiniLM and cross-attention, eq 33); images only")
    p_uncond: float = _conditioning(0.1, "probability of dropping the condition to ∅ in training "
                                         "(classifier-free guidance)")
    num_classes: int = _conditioning(0, "number of classes (0: the dataset's own)")
    text_tokens: int = _conditioning(32, "caption tokens kept by the text encoder")
    clip: str = _conditioning("", "unCLIP prior or decoder: the CLIP run (difflab train-clip) "
                                  "whose embeddings the prior generates and the decoder is "
                                  "conditioned on")
    p_uncond_image: float = _conditioning(0.1, "unCLIP decoder: probability of dropping the "
                                               "CLIP image embedding in training (the caption's "
                                               "is p_uncond)")
    # super-resolution: a stage of a cascade (Ho et al. 2021; Weng, "Scale up Generation
    # Resolution and Quality"), p(x | z) with z the image average-pooled to sr_low_res and
    # corrupted by the conditioning augmentation sr_augment (difflab.training.super_resolution)
    sr_low_res: int = _conditioning(0, "super-resolution: side of the low-resolution image z "
                                       "the network is conditioned on (the training images "
                                       "average-pooled to it; 0: not a super-resolution run)")
    sr_augment: str = _conditioning("none", "conditioning augmentation of z: none, gaussian (z "
                                            "forward-diffused to a level s, s embedded), "
                                            "truncated (trained as gaussian; sampled from the "
                                            "previous stage stopped at step s) or blur "
                                            "(Ho et al. 2021, §3)")
    sr_aug_max: int = _conditioning(0, "gaussian/truncated: s drawn uniformly from 0..this at "
                                       "training (a timestep of the schedule)")
    sr_aug_level: int = _conditioning(0, "gaussian/truncated: the level s used at sampling "
                                         "(difflab sample --aug-level overrides it)")
    sr_blur_min: float = _conditioning(0.4, "blur: smallest σ (low-res pixels) of the Gaussian "
                                            "blur drawn at training")
    sr_blur_max: float = _conditioning(0.6, "blur: largest σ of the Gaussian blur drawn at "
                                            "training (none at sampling)")

    # --- optimiser ---
    steps: int = _optimiser(3000, "training steps (optimizer updates)")
    batch: int = _optimiser(1024, "batch size")
    lr: float = _optimiser(3e-3, "peak learning rate (AdamW)")
    lr_schedule: str = _optimiser("cosine", "constant, cosine or linear (decay after warm-up; "
                                            "consistency training: linear)")
    warmup: int = _optimiser(100, "linear learning-rate warm-up steps (consistency training: 0)")
    lr_min_ratio: float = _optimiser(0.05, "final learning rate of the cosine or linear decay, "
                                           "as a fraction of --lr (consistency training: 0)")
    weight_decay: float = _optimiser(0.0, "AdamW weight decay")
    adam_beta2: float = _optimiser(0.999, "AdamW β2, the decay of the second-moment average "
                                          "(β1 = 0.9)")
    grad_clip: float = _optimiser(1.0, "clip the global gradient norm to this (0: off)")
    ema_decay: float = _optimiser(0.995, "decay of the exponential moving average of the weights "
                                         "(warmed up as min(decay, (1 + n) / (10 + n)))")
    grad_accum: int = _optimiser(1, "micro-batches per optimizer update (--batch is the whole "
                                    "update's batch: processes × grad_accum × micro-batch)")

    # --- evaluation after training ---
    eval_sampler: str = _evaluation("heun", "sampler for the evaluation after training")
    eval_steps: int = _evaluation(50, "sampler steps for the evaluation after training")
    eval_eta: float = _evaluation(0.0, "DDIM eta for the evaluation after training")
    eval_guidance: float = _evaluation(0.0, "classifier-free guidance w for the evaluation of a "
                                            "conditional run (Weng eq. 26)")
    # "auto" = "leading" on the cosine schedule (its clipped last step, ᾱ_T ≈ 2e-9, magnifies a
    # learned ε̂'s error; see schedules.cosine) and the sampler's own default otherwise
    eval_spacing: str = _evaluation("auto", "timestep grid for the evaluation: auto (leading "
                                            "on the cosine schedule for the samplers that take "
                                            "it, else the sampler's own default) or a grid of "
                                            "eval_sampler, as 'difflab sample --spacing' takes "
                                            "them (linspace, leading, trailing; logsnr, karras, "
                                            "angle, blend, capped-blend for dpm++/unipc; …)")
    n_eval: int = _evaluation(10_000, "samples (and held-out points) for the evaluation "
                                      "(images: FD sample size)")

    # --- run: where and how it trains (difflab.training.backend), and what it writes ---
    seed: int = _run(0, "seed of initialisation, batches and noise")
    threads: int = _run(0, "torch intra-op threads (0: all the cores torch is given)")
    device: str = _run("auto", "where to train: auto, cpu, cuda, mps (auto: CUDA if present, "
                               "else the CPU)")
    precision: str = _run("fp32", "fp32, bf16, fp16: autocast precision (fp16 with a gradient "
                                  "scaler, CUDA only); weights, optimiser and EMA stay float32")
    compile: bool = _run(False, "torch.compile the network")
    checkpoint_every: int = _run(1000, "steps between checkpoints (one more at the end)")
    skip_nonfinite: int = _run(0, "skip up to this many updates in a row whose loss or "
                                  "gradient is NaN or infinite (not applied); 0: the first "
                                  "one stops the run, keeping the last checkpoint")
    log_every: int = _run(10, "steps per row of loss.csv (the mean loss of those steps)")
    log: str = _run("csv", "training log: csv (loss.csv only) or tensorboard (also TensorBoard "
                           "event files in RUN/tensorboard: loss, learning rate, gradient norm "
                           "and throughput every log_every steps, the evaluation's metrics and "
                           "pictures; needs the tensorboard package)")
    out: str = _run("", "run directory (default: runs/<dataset>-<date>-<time>)")

    def __post_init__(self) -> None:
        _typed(self.to_dict())  # every value of its field's type
        for check in VALIDATORS:  # config/checks.py: ranges, names, combinations
            check(self)

    def to_dict(self) -> dict[str, Any]:
        """Flat: {field: value}."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: TrainConfig | None = None
                  ) -> TrainConfig:
        """``base`` (default: the defaults) with the flat ``values`` applied; checks names and
        types (ConfigError naming the key)."""
        base = base if base is not None else cls()
        return dataclasses.replace(base, **_typed(values))

    def to_sections(self) -> dict[str, dict[str, Any]]:
        """{section: {field: value}}, sections in ``SECTIONS`` order: a config file's tables."""
        out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for f in fields(self):
            out[f.metadata["section"]][f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_sections(cls, values: Mapping[str, Any], base: TrainConfig | None = None
                      ) -> TrainConfig:
        """The inverse of :meth:`to_sections`. ``values`` may also be flat (the config.json of
        an older run) or mix flat keys with sections; fields left out keep ``base``'s value
        (default: the defaults)."""
        return cls.from_dict(flatten(values), base=base)


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def field_section(name: str) -> str:
    """The section of field ``name`` (ConfigError if there is no such field)."""
    return _field(name).metadata["section"]


def field_help(name: str) -> str:
    """The help text of field ``name``, as ``difflab train --help`` shows it."""
    text = _field(name).metadata["help"]
    if name == "eval_sampler":  # the registry's names, read when asked (samplers load lazily)
        from ..samplers import SAMPLERS

        text += ": " + ", ".join(SAMPLERS)
    return text


def _field(name: str) -> dataclasses.Field:
    if name not in _FIELDS:
        raise ConfigError(f"unknown config key {name!r}; known keys: {', '.join(_FIELDS)}")
    return _FIELDS[name]


def flatten(values: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """{field: value} from a sectioned, flat or mixed mapping. A key whose value is a table is a
    section (``data`` and ``model`` are also field names, whose values are strings). ConfigError
    for an unknown section, a field under the wrong section, or a field given twice; ``where``
    (e.g. the preset file) starts its message."""
    flat: dict[str, Any] = {}
    where = f"{where}: " if where else ""

    def put(key: str, value: Any) -> None:
        if key in flat:
            raise ConfigError(f"{where}config key {key!r} is given twice")
        flat[key] = value

    for key, value in values.items():
        if not isinstance(value, Mapping):
            put(key, value)
            continue
        if key not in SECTIONS:
            raise ConfigError(f"{where}unknown section [{key}]; sections: {', '.join(SECTIONS)}")
        for name, v in value.items():
            if name not in _FIELDS:
                known = ", ".join(n for n, f in _FIELDS.items() if _in_section(f, key))
                raise ConfigError(f"{where}unknown config key {name!r} in [{key}]; its keys: "
                                  f"{known}")
            if not _in_section(_FIELDS[name], key):
                raise ConfigError(f"{where}config key {name!r} belongs in "
                                  f"[{field_section(name)}], not [{key}]")
            put(name, v)
    return flat


def _in_section(f: dataclasses.Field, section: str) -> bool:
    return f.metadata["section"] == section


def _typed(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check that every key is a field and every value has the field's type (int → float ok)."""
    out = {}
    for key, value in values.items():
        want = _TYPES[str(_field(key).type)]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
            raise ConfigError(
                f"config key {key!r} must be {want.__name__}, got {type(value).__name__} {value!r}"
            )
        out[key] = value
    return out
