"""Training configuration: one flat dataclass, filled from a TOML preset and then from flags.

Presets are flat TOML tables whose keys are the field names of :class:`TrainConfig`; the built-in
ones live in ``difflab/presets/*.toml`` (``default`` is the swiss-roll model that
``difflab train`` trains with no arguments). Unknown keys and values of the wrong type raise a
``ValueError`` that names the key, so the CLI can print it as one line.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SCHEDULES = ("linear", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")  # see difflab.training.backend
PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")
EVAL_SPACINGS = ("auto", "linspace", "leading", "trailing")
MODELS = ("auto", "mlp", "unet")
VARIANCES = ("beta_tilde", "beta", "learned")  # Σ_θ of p_θ(x_{t−1} | x_t), see vlb.p_from_eps
LOSSES = ("simple", "hybrid")
T_SAMPLINGS = ("uniform", "importance")
CONDS = ("none", "class", "text")  # what the network is conditioned on (difflab.conditioning)
# how a run's network was made (difflab.distill): trained as a diffusion model or by consistency
# training (`difflab train --method`), or distilled from a teacher run (`difflab distill`)
METHODS = ("diffusion", "consistency-training", "progressive", "consistency-distillation")
CONSISTENCY_METHODS = ("consistency-training", "consistency-distillation")  # f_θ, eq. (30)
PREDICTIONS = ("eps", "x0", "v")  # what the network outputs (progressive students: x0 or v)
NO_SPACING = ("consistency",)  # samplers without a timestep grid to space
# image datasets and the sizes their committed FD classifiers take (difflab.fd)
IMAGE_SIZES = {"digits": (8, 16, 32), "mnist": (28, 32)}
IMAGE_DATASETS = (*IMAGE_SIZES, "folder")  # "folder": the images under `data`, no FD


def is_image(dataset: str) -> bool:
    """Whether ``dataset`` names image data (U-Net, FD) rather than 2-D points (MLP, SWD)."""
    return dataset in IMAGE_DATASETS


def int_list(text: str) -> tuple[int, ...]:
    """"1,2,2" → (1, 2, 2); "" → (). ValueError on anything else."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected comma-separated integers like '1,2', got {text!r}") from None


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Defaults are the tuned swiss-roll model."""

    # data
    dataset: str = "swiss_roll"  # 2-D: see data.toy2d; images: "digits", "mnist"
    n_train: int = 100_000  # 2-D only: fixed training set, drawn from `seed`
    image_size: int = 0  # images: 0 → the dataset's own (digits 8, mnist 32, folder 32)
    data: str = ""  # dataset "folder": the directory of images (any Pillow format)
    channels: int = 1  # dataset "folder": 1 (grey) or 3 (RGB); digits and MNIST are grey
    # diffusion
    schedule: str = "linear"  # "linear" | "cosine"
    T: int = 1000
    # model: "auto" → the MLP for 2-D data, the U-Net for images
    model: str = "auto"
    # the MLP (difflab.nn.mlp.MLPDenoiser)
    hidden: int = 64
    depth: int = 3
    t_dim: int = 64
    # the U-Net (difflab.nn.unet.UNetConfig)
    model_channels: int = 32
    channel_mult: str = "1,2"  # one multiplier per resolution level
    num_res_blocks: int = 2
    attention: str = "2"  # downsampling factors with self-attention ("" for none)
    dropout: float = 0.0
    # objective. Σ_θ: fixed at β̃_t or β_t, or "learned" (Weng eq. 23): the network outputs
    # [ε̂, v_raw] (2× channels), wrapped by parameterization.LearnedVariance; it is trained by
    # loss "hybrid" only, and "hybrid" trains nothing beyond L_simple without it (see validate)
    variance: str = "beta_tilde"  # "beta_tilde" | "beta" | "learned"
    loss: str = "simple"  # "simple" (eq. 19) | "hybrid" (L_simple + λ L_vlb, stop-grad on μ_θ)
    hybrid_lambda: float = 0.001  # λ of L_hybrid (Nichol & Dhariwal 2021)
    t_sampling: str = "uniform"  # "uniform" | "importance" (p_t ∝ √E[L_t²], with loss hybrid)
    # conditioning (images only): class labels or captions, dropped to ∅ with probability
    # p_uncond so that one network learns ε(x_t, t, y) and ε(x_t, t, ∅) (Weng eq. 26)
    cond: str = "none"  # "none" | "class" | "text" (see difflab.conditioning)
    p_uncond: float = 0.1
    num_classes: int = 0  # cond "class": 0 → the dataset's (10 digits; a folder's subfolders)
    text_tokens: int = 32  # cond "text": caption tokens kept by the text encoder
    # fast sampling (difflab.distill): "diffusion" | "consistency-training" (train --method);
    # "progressive" | "consistency-distillation" are written by `difflab distill`, whose
    # progressive students predict `prediction` and were distilled for `distilled_steps` steps;
    # consistency-distillation runs with prediction "v" read F_θ as a v-network (a copy of the
    # teacher's, ConsistencyModel.v_from_schedule), with "eps" under EDM's preconditioning
    method: str = "diffusion"
    prediction: str = "eps"  # "eps" | "x0" | "v"
    distilled_steps: int = 0  # progressive students only: N of their DDIM (trailing) grid
    # optimisation
    steps: int = 3000
    batch: int = 1024
    lr: float = 3e-3
    lr_schedule: str = "cosine"  # "constant" | "cosine" (to lr_min_ratio · lr after warmup)
    warmup: int = 100
    lr_min_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    ema_decay: float = 0.995  # with the warm-up min(decay, (1 + n) / (10 + n))
    seed: int = 0
    threads: int = 1  # torch intra-op threads; 0 leaves torch's default
    # where and how the run trains (difflab.training.backend)
    device: str = "auto"  # "auto" (CUDA if present, else CPU) | "cpu" | "cuda" | "mps"
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16" (autocast; fp16 with a grad scaler)
    compile: bool = False  # torch.compile the network
    grad_accum: int = 1  # micro-batches per update (batch = processes × grad_accum × micro)
    checkpoint_every: int = 1000  # steps between checkpoints (one more at the end)
    log_every: int = 10  # steps per row of loss.csv (each row: the mean loss of those steps)
    # evaluation after training
    eval_sampler: str = "heun"  # 50 Heun steps = 99 evaluations, ≈ DDIM 200 in quality here
    eval_steps: int = 50
    eval_eta: float = 0.0
    eval_guidance: float = 0.0  # conditional runs: classifier-free guidance w (Weng eq. 26)
    # timestep spacing of the evaluation sampler: "auto" = "leading" on the cosine schedule
    # (its clipped last step, ᾱ_T ≈ 2e-9, magnifies a learned ε̂'s error; see
    # schedules.cosine) and the sampler's own default otherwise; or linspace/leading/trailing
    eval_spacing: str = "auto"
    n_eval: int = 10_000
    # output: "" → runs/<dataset>-<date>-<time>
    out: str = ""

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
        """``base`` (default: the defaults) with ``values`` applied; checks names and types."""
        base = base if base is not None else cls()
        return dataclasses.replace(base, **_typed(values))


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    """Check that every key is a field and every value has the field's type (int → float ok)."""
    out = {}
    for key, value in values.items():
        if key not in _FIELDS:
            raise ValueError(f"unknown config key {key!r}; known keys: {', '.join(_FIELDS)}")
        want = _TYPES[str(_FIELDS[key].type)]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
            raise ValueError(
                f"config key {key!r} must be {want.__name__}, got {type(value).__name__} {value!r}"
            )
        out[key] = value
    return out


def validate(cfg: TrainConfig) -> None:
    """Range checks that need no other module; names of datasets and samplers are checked too."""
    from ..data.toy2d import DATASETS
    from ..samplers import SAMPLERS

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ValueError(f"config key {key!r} {what}, got {getattr(cfg, key)!r}")

    _typed(cfg.to_dict())
    names = (*DATASETS, *IMAGE_DATASETS)
    need(cfg.dataset in names, "dataset", f"must be one of {', '.join(names)}")
    need(cfg.model in MODELS, "model", f"must be one of {', '.join(MODELS)}")
    want = "unet" if is_image(cfg.dataset) else "mlp"
    need(cfg.model in ("auto", want), "model", f"must be auto or {want} for {cfg.dataset}")
    need(cfg.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}")
    need(cfg.lr_schedule in LR_SCHEDULES, "lr_schedule",
         f"must be one of {', '.join(LR_SCHEDULES)}")
    need(cfg.eval_sampler in SAMPLERS, "eval_sampler", f"must be one of {', '.join(SAMPLERS)}")
    need(cfg.eval_spacing in EVAL_SPACINGS, "eval_spacing",
         f"must be one of {', '.join(EVAL_SPACINGS)}")
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
    for key in ("n_train", "T", "hidden", "t_dim", "steps", "batch", "checkpoint_every", "n_eval",
                "log_every"):
        need(getattr(cfg, key) >= 1, key, "must be at least 1")
    for key in ("depth", "warmup", "seed", "threads"):
        need(getattr(cfg, key) >= 0, key, "must be at least 0")
    need(cfg.device.split(":")[0] in DEVICES, "device", f"must be one of {', '.join(DEVICES)}")
    need(cfg.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
    need(cfg.grad_accum >= 1, "grad_accum", "must be at least 1")
    need(1 <= cfg.eval_steps <= cfg.T, "eval_steps", f"must lie in 1..T (T={cfg.T})")
    for key in ("lr", "lr_min_ratio", "weight_decay", "grad_clip", "ema_decay", "eval_eta"):
        need(math.isfinite(getattr(cfg, key)), key, "must be finite")
    need(cfg.lr > 0, "lr", "must be positive")
    need(0 <= cfg.lr_min_ratio <= 1, "lr_min_ratio", "must lie in [0, 1]")
    need(cfg.weight_decay >= 0, "weight_decay", "must be at least 0")
    need(cfg.grad_clip >= 0, "grad_clip", "must be at least 0 (0 disables clipping)")
    need(0 <= cfg.ema_decay < 1, "ema_decay", "must lie in [0, 1)")
    need(cfg.eval_eta >= 0, "eval_eta", "must be at least 0")
    need(cfg.image_size >= 0, "image_size", "must be at least 0 (0: the dataset's own)")
    need(0 <= cfg.dropout < 1, "dropout", "must lie in [0, 1)")
    for key in ("model_channels", "num_res_blocks"):
        need(getattr(cfg, key) >= 1, key, "must be at least 1")
    mult, attn = _ints(cfg, "channel_mult"), _ints(cfg, "attention")
    need(len(mult) >= 1 and min(mult) >= 1, "channel_mult",
         "must be comma-separated integers >= 1, like '1,2'")
    factors = [2**level for level in range(len(mult))]
    need(all(f in factors for f in attn), "attention",
         f"must list downsampling factors among {factors}")
    need(cfg.channels in ((1, 3) if cfg.dataset == "folder" else (1,)), "channels",
         "must be 1 (grey) or 3 (RGB) for folder, 1 otherwise")
    need(bool(cfg.data) == (cfg.dataset == "folder"), "data",
         "must name the image directory for dataset folder, and only then")
    if cfg.dataset in IMAGE_SIZES:
        sizes = IMAGE_SIZES[cfg.dataset]
        need(image_size(cfg) in sizes, "image_size",
             f"must be one of {', '.join(map(str, sizes))} for {cfg.dataset} (or 0)")
    if is_image(cfg.dataset):
        need(image_size(cfg) % factors[-1] == 0, "image_size",
             f"must be divisible by {factors[-1]} ({len(mult)} resolution levels in "
             f"channel_mult {cfg.channel_mult!r})")


def _check_objective(cfg: TrainConfig) -> None:
    """The combinations of variance, loss and t_sampling that train what they claim to.

    - L_hybrid's L_vlb term sees μ_θ through a stop-gradient (Weng eq. 23 and the text after it),
      so with a fixed Σ_θ it has no gradient at all: loss "hybrid" needs variance "learned".
    - L_simple does not depend on Σ_θ, so a learned v would keep its initial value: variance
      "learned" needs loss "hybrid".
    - Importance sampling draws t ∝ √E[L_t²] from the history of the bound's terms (Nichol &
      Dhariwal 2021, §3.3), which only loss "hybrid" computes.
    """
    if cfg.t_sampling == "importance" and cfg.loss != "hybrid":
        raise ValueError("config key 't_sampling' = 'importance' needs config key 'loss' = "
                         "'hybrid' (p_t comes from the history of the L_vlb terms)")
    if cfg.loss == "hybrid" and cfg.variance != "learned":
        raise ValueError("config key 'loss' = 'hybrid' needs config key 'variance' = 'learned' "
                         "(the L_vlb term has a stop-gradient on μ_θ, so with a fixed Σ_θ it "
                         "trains nothing)")
    if cfg.variance == "learned" and cfg.loss != "hybrid":
        raise ValueError("config key 'variance' = 'learned' needs config key 'loss' = 'hybrid' "
                         "(L_simple does not depend on Σ_θ, so v would never be trained)")


def _check_method(cfg: TrainConfig) -> None:
    """A run's method, the network's output and its sampler agree: progressive students (and
    only they) predict x0 or v and carry their step count; consistency models (Weng eq. 30)
    sample with the ``consistency`` sampler only and ε-models never do; neither learns Σ_θ."""
    if cfg.method not in METHODS:
        raise ValueError(f"config key 'method' must be one of {', '.join(METHODS)}, "
                         f"got {cfg.method!r}")
    if cfg.prediction not in PREDICTIONS:
        raise ValueError(f"config key 'prediction' must be one of {', '.join(PREDICTIONS)}, "
                         f"got {cfg.prediction!r}")
    progressive = cfg.method == "progressive"
    v_consistency = cfg.method == "consistency-distillation" and cfg.prediction == "v"
    if cfg.prediction != "eps" and not (progressive or v_consistency):
        raise ValueError(f"config key 'prediction' = {cfg.prediction!r} needs config key "
                         "'method' = 'progressive' (only distilled students predict x0 or v)")
    if progressive and not 1 <= cfg.distilled_steps <= cfg.T // 2:
        raise ValueError(f"config key 'distilled_steps' must lie in 1..T/2 for a progressive "
                         f"student, got {cfg.distilled_steps!r}")
    if not progressive and cfg.distilled_steps != 0:
        raise ValueError("config key 'distilled_steps' needs config key 'method' = 'progressive'")
    consistency = cfg.method in CONSISTENCY_METHODS
    if consistency != (cfg.eval_sampler == "consistency"):
        raise ValueError(f"config key 'eval_sampler' = {cfg.eval_sampler!r} does not fit config "
                         f"key 'method' = {cfg.method!r} (the 'consistency' sampler is for "
                         "consistency models only)")
    if cfg.method == "consistency-training" and cfg.cond != "none":
        raise ValueError("config key 'method' = 'consistency-training' needs config key 'cond' "
                         "= 'none' (conditional consistency training is not implemented; "
                         "distil a class-conditional run with 'difflab distill' instead)")
    if cfg.method != "diffusion" and cfg.variance == "learned":
        raise ValueError(f"config key 'method' = {cfg.method!r} needs a fixed variance (no "
                         "learned Σ_θ)")


# a consistency-training run evaluates with these unless its flags say otherwise (a preset's
# sampler is a diffusion sampler)
CONSISTENCY_EVAL = {"eval_sampler": "consistency", "eval_steps": 1, "eval_eta": 0.0}


def _ints(cfg: TrainConfig, key: str) -> tuple[int, ...]:
    try:
        return int_list(getattr(cfg, key))
    except ValueError as err:
        raise ValueError(f"config key {key!r}: {err}") from None


def image_size(cfg: TrainConfig) -> int:
    """The run's image side in pixels (``image_size``, or the dataset's own if 0)."""
    return cfg.image_size or {"digits": 8, "mnist": 32}.get(cfg.dataset, 32)


# --- presets -----------------------------------------------------------------------------------


def builtin_presets() -> list[str]:
    root = resources.files("difflab") / "config" / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def read_preset(name_or_path: str) -> dict[str, Any]:
    """The table of a preset: a path to a .toml file, or the name of a built-in preset."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ValueError(f"preset file {name_or_path!r} does not exist")
        text, where = path.read_bytes(), str(path)
    else:
        res = resources.files("difflab") / "config" / "presets" / f"{name_or_path}.toml"
        if not res.is_file():
            raise ValueError(
                f"unknown preset {name_or_path!r}; built-in presets: "
                f"{', '.join(builtin_presets())} (or give a path to a .toml file)"
            )
        text, where = res.read_bytes(), f"built-in preset {name_or_path!r}"
    try:
        table = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"malformed preset {where}: {err}") from None
    for key, value in table.items():
        if isinstance(value, dict):
            raise ValueError(f"malformed preset {where}: [{key}] tables are not supported; "
                             "use flat keys")
    return table


def load_config(preset: str | None = None, overrides: dict[str, Any] | None = None
                ) -> TrainConfig:
    """Defaults ← preset (if given) ← overrides (e.g. command-line flags; None values skipped)."""
    values = read_preset(preset) if preset else {}
    extra = {k: v for k, v in (overrides or {}).items() if v is not None}
    if extra.get("method") in CONSISTENCY_METHODS:  # see CONSISTENCY_EVAL
        given = {k: v for k, v in CONSISTENCY_EVAL.items() if k not in extra}
        return TrainConfig.from_dict({**values, **given, **extra})
    cfg = TrainConfig.from_dict(values)
    return TrainConfig.from_dict(extra, base=cfg)


def spacing_for(cfg: TrainConfig, sampler: str, spacing: str | None = None) -> str | None:
    """The timestep spacing to sample ``cfg``'s run with: ``spacing`` if given, else the run's
    ``eval_spacing``, where "auto" means "leading" for cosine-schedule runs (except Langevin,
    whose noise levels are geometric in σ, and DPM-Solver++ and EDM-Heun, which cut the cosine
    tail themselves) and the sampler's own default (None) otherwise. Samplers in
    ``NO_SPACING`` (consistency) always get None; an explicit ``spacing`` for them is an
    error."""
    if sampler in NO_SPACING:  # consistency sampling re-noises to σ levels, no grid to space
        if spacing is not None:
            raise ValueError(f"--spacing does not apply to sampler {sampler!r}")
        return None
    choice = spacing or cfg.eval_spacing
    if choice != "auto":
        return choice
    # dpm++ clips the cosine tail itself (lambda_min) and edm-heun caps σ at 80 on a Karras grid
    own = ("langevin", "dpm++", "edm-heun")
    return "leading" if cfg.schedule == "cosine" and sampler not in own else None
