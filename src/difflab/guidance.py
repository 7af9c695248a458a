"""Guidance: wrappers that take an ε-model and return another — Weng eq. (24)-(26); thresholding.

Every wrapper here is itself a model ``model(x_t, t, **cond) -> ε̂`` (or ``(ε̂, v)`` for a learned
variance, v passed through), so every sampler uses it unchanged and wrappers compose:

    guided = Thresholded(ClassifierFree(net, w=3.0, null_cond={"y": torch.tensor(K)}), schedule)
    x0 = samplers.ddim(guided, schedule, x_T, cond={"y": labels})

- :class:`ClassifierFree` — eq. (26), Ho & Salimans 2021: ε̄ = (w+1) ε(x_t, t, y) − w ε(x_t, t, ∅),
  both passes in one batched forward call.
- :class:`ClassifierGuidance` — eq. (24)-(25), Dhariwal & Nichol 2021, Algorithm 2:
  ε̄ = ε − w √(1−ᾱ_t) ∇_{x_t} log f_φ(y | x_t).
- :class:`CLIPGuidance` — GLIDE (Nichol et al. 2022, §2.4): eq. (25) with the CLIP logit
  s · f(x_t, t) · g(c) of a noise-aware CLIP in place of log f_φ(y | x_t).
- :class:`AncestralClassifierGuidance` — Algorithm 1 of the same paper, μ + s Σ ∇ log f_φ, as the
  ε-shift that gives exactly that mean in :func:`difflab.samplers.ddpm` on the full chain.
- :class:`Thresholded`, :func:`static_threshold`, :func:`dynamic_threshold` — Imagen (Saharia et
  al. 2022, §2.3): clip x̂_0 and re-derive ε from it.
- :class:`Bound` — a model with its conditions fixed, for samplers called without ``cond``.

w follows the post: w = 0 is the plain conditional model; diffusers' ``guidance_scale`` is w + 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .parameterization import Model, eps_from_x0, x0_from_eps
from .schedules import Schedule

Classifier = Callable[[Tensor, Tensor], Tensor]  # classifier(x_t, t) -> logits (B, K)
ImageEncoder = Callable[[Tensor, Tensor], Tensor]  # f(x_t, t) -> embeddings (B, D)
ANCESTRAL_VARIANCES = ("beta_tilde", "beta", "learned")


def _check_weight(w: float, name: str = "w") -> float:
    w = float(w)
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"guidance weight {name} must be a finite number ≥ 0, got {w}")
    return w


def _split(out) -> tuple[Tensor, Tensor | None]:
    """A model's output as (ε̂, v or None): v is the learned-variance vector of Weng eq. (23)."""
    return (out[0], out[1]) if isinstance(out, tuple) else (out, None)


def _join(eps: Tensor, v: Tensor | None):
    return eps if v is None else (eps, v)


def _alpha_bar(schedule: Schedule, t: Tensor, like: Tensor) -> Tensor:
    """ᾱ_t as (B, 1, …, 1) in ``like``'s dtype and device."""
    return Schedule.broadcast(schedule.alpha_bar_at(t.cpu()), like)


# --- classifier-free guidance --------------------------------------------------------------


class ClassifierFree(nn.Module):
    """ε̄_θ(x_t, t, y) = (w+1) ε_θ(x_t, t, y) − w ε_θ(x_t, t, ∅) — Weng eq. (26); Ho & Salimans
    2021, eq. (6).

    ``model`` is one network trained with the condition dropped at random, so that
    ε_θ(x_t, t, ∅) is its unconditional prediction. ``null_cond`` names ∅ for each conditioning
    keyword: for class labels ``{"y": torch.tensor(K)}`` (a null label index); for text
    ``{"context": zeros (1, L, D), "context_mask": all-False (1, L)}``. Each null value is broadcast
    to the batch's shape for that key, so one row (or a scalar) serves any batch.

    Both passes run as ONE forward call on the batch [x_t; x_t] (2B, …) with
    [cond; null] along dim 0 for every key in ``null_cond``; a conditioning keyword not in
    ``null_cond`` is shared by both halves (tensors are repeated along dim 0, other values
    passed as they are). A learned-variance model's v is taken from the conditional half.
    w = 0 makes one call on the conditional batch alone and returns its output unchanged.
    """

    def __init__(self, model: Model, w: float, null_cond: dict[str, Tensor]):
        super().__init__()
        if not null_cond:
            raise ValueError("null_cond must name the null condition ∅ for at least one key")
        self.model = model
        self.w = _check_weight(w)
        self.null_cond = {k: torch.as_tensor(v) for k, v in null_cond.items()}

    def _both(self, cond: dict) -> dict:
        """Every keyword of ``cond`` as [cond; ∅] (or [cond; cond] when shared), dim 0."""
        missing = sorted(set(self.null_cond) - set(cond))
        if missing:
            raise ValueError(f"classifier-free guidance needs the condition(s) {missing}")
        both = {}
        for key, c in cond.items():
            if key in self.null_cond:
                if not isinstance(c, Tensor):
                    raise TypeError(f"condition {key!r} must be a tensor to pair it with ∅")
                null = torch.broadcast_to(self.null_cond[key].to(c.device, c.dtype), c.shape)
                both[key] = torch.cat([c, null])  # (2B, …)
            elif isinstance(c, Tensor):
                both[key] = torch.cat([c, c])
            else:
                both[key] = c
        return both

    def forward(self, x_t: Tensor, t: Tensor, **cond):
        if self.w == 0:
            return self.model(x_t, t, **cond)
        B = x_t.shape[0]
        out = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), **self._both(cond))
        eps, v = _split(out)  # eps: (2B, …)
        eps_c, eps_u = eps[:B], eps[B:]  # ε_θ(x_t, t, y), ε_θ(x_t, t, ∅)
        eps_bar = (self.w + 1) * eps_c - self.w * eps_u  # eq. (26)
        return _join(eps_bar, None if v is None else v[:B])


# --- classifier guidance -------------------------------------------------------------------


def input_grad(fn: Callable[[Tensor, Tensor], Tensor], x_t: Tensor, t: Tensor) -> Tensor:
    """∇_{x_t} fn(x_t, t) per sample, shaped like x_t, for ``fn`` -> (B,).

    The samples of a batch are independent, so the gradient of the batch sum is each sample's
    own (true for any network that does not mix samples, e.g. no BatchNorm in train mode).
    Works inside ``torch.inference_mode`` (every sampler runs there): the gradient is taken
    outside it, on clones of x_t and t — tensors made in inference mode cannot enter autograd.
    The parameters of the networks ``fn`` calls receive no gradient.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = x_t.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(x, t.clone()).sum(), x)
    return g.to(x_t.dtype)


def classifier_grad(classifier: Classifier, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """∇_{x_t} log f_φ(y | x_t, t) per sample, shaped like x_t — the gradient of Weng eq. (24).

    log f_φ(y | x_t) = log_softmax(classifier(x_t, t))[y], with logits (B, K) and y int64 (B,);
    see :func:`input_grad` (inference mode, independence of the samples).
    """
    with torch.inference_mode(False):
        yy = torch.as_tensor(y, device=x_t.device).long().clone()  # (B,)

    def log_f(x: Tensor, tt: Tensor) -> Tensor:
        return classifier(x, tt).log_softmax(-1).gather(-1, yy[:, None])[:, 0]  # (B,)

    return input_grad(log_f, x_t, t)


def clip_grad(image_encoder: ImageEncoder, x_t: Tensor, t: Tensor, text: Tensor,
              scale: float = 1.0) -> Tensor:
    """∇_{x_t} s · f(x_t, t) · g(c) per sample, shaped like x_t — GLIDE's CLIP guidance
    gradient (Nichol et al. 2022, §2.4).

    ``image_encoder(x_t, t) -> (B, D)``: the noise-aware CLIP's image embeddings, unit norm
    (:meth:`difflab.nn.noisy_clip.NoisyCLIP.encode_image`); ``text``: g(c), (B, D) or (1, D),
    the caption embeddings, unit norm; ``scale``: s, CLIP's learned inverse temperature
    exp(log τ⁻¹). So the guided quantity is the logit of CLIP's softmax over captions — the dot
    product of the image and caption encodings of GLIDE's paper, with CLIP's scale, as GLIDE's
    released code computes it.
    """
    with torch.inference_mode(False):
        g_c = text.detach().clone()  # (B or 1, D)

    def logit(x: Tensor, tt: Tensor) -> Tensor:
        return scale * (image_encoder(x, tt) * g_c.to(x.dtype)).sum(-1)  # (B,)

    return input_grad(logit, x_t, t)


class ClassifierGuidance(nn.Module):
    """ε̄_θ(x_t, t) = ε_θ(x_t, t) − w √(1−ᾱ_t) ∇_{x_t} log f_φ(y | x_t) — Weng eq. (25);
    Dhariwal & Nichol 2021, Algorithm 2 (their s is w). For every sampler that reads ε̂ (DDIM,
    the ODE samplers, DDPM).

    ``classifier(x_t, t) -> logits (B, K)``, trained on noisy x_t. The label y is the
    conditioning keyword ``y_key`` (int64 (B,)), given to the sampler like any condition:
    ``ddim(guided, schedule, x_T, cond={"y": labels})``. With ``model_takes_y=False`` (an
    unconditional model) y goes to the classifier only; with True (a conditional model, as in
    ADM-G) the model gets it too. Other keywords go to the model.

    On the exact models of :mod:`difflab.oracle`, w = 1 on the unconditional model gives the
    conditional one exactly (eq. 24: ∇ log q(x_t) + ∇ log q(y | x_t) = ∇ log q(x_t | y)), and
    weight w on a conditional model equals w + 1 on an unconditional one.
    w = 0 returns the model's output unchanged (the classifier is not called).
    """

    def __init__(self, model: Model, classifier: Classifier, schedule: Schedule,
                 w: float = 1.0, *, y_key: str = "y", model_takes_y: bool = False):
        super().__init__()
        self.model = model
        self.classifier = classifier
        self.schedule = schedule
        self.w = _check_weight(w)
        self.y_key = y_key
        self.model_takes_y = model_takes_y

    def _shift_scale(self, x_t: Tensor, t: Tensor, v: Tensor | None) -> Tensor:
        """k such that ε̄ = ε − k ∇ log f: here w √(1−ᾱ_t), (B, 1, …)."""
        return self.w * (1 - _alpha_bar(self.schedule, t, x_t)).sqrt()

    def forward(self, x_t: Tensor, t: Tensor, **cond):
        if self.y_key not in cond:
            raise ValueError(f"classifier guidance needs the label as cond[{self.y_key!r}]")
        y = cond[self.y_key]
        model_cond = cond if self.model_takes_y else {k: c for k, c in cond.items()
                                                       if k != self.y_key}
        out = self.model(x_t, t, **model_cond)
        if self.w == 0:
            return out
        eps, v = _split(out)
        g = self.guide_grad(x_t, t, y)  # ∇_{x_t} log f_φ(y | x_t), like x_t
        return _join(eps - self._shift_scale(x_t, t, v) * g, v)

    def guide_grad(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """The gradient the guidance follows: ∇_{x_t} log f_φ(y | x_t)."""
        return classifier_grad(self.classifier, x_t, t, y)


class CLIPGuidance(ClassifierGuidance):
    """ε̄_θ(x_t, t) = ε_θ(x_t, t) − w √(1−ᾱ_t) ∇_{x_t} s f(x_t, t) · g(c) — CLIP guidance
    (GLIDE, Nichol et al. 2022, §2.4): Weng eq. (25) with a noise-aware CLIP's logit
    s f(x_t, t) · g(c) (:func:`clip_grad`) in place of log f_φ(y | x_t). For every sampler
    that reads ε̂.

    ``image_encoder(x_t, t) -> (B, D)`` unit-norm embeddings, ``scale`` = s (CLIP's learned
    inverse temperature; 1 guides with the cosine similarity alone). The caption embeddings
    g(c), (B, D) or (1, D) unit norm, are the conditioning keyword ``text_key``, given to the
    sampler like any condition; the model gets the other keywords. GLIDE writes the update as
    the mean shift μ + s Σ ∇(f · g) of Dhariwal & Nichol's Algorithm 1; the ε form here is the
    one every sampler can use (Algorithm 2's). w = 0 returns the model's output unchanged
    (the CLIP is not called).
    """

    def __init__(self, model: Model, image_encoder: ImageEncoder, schedule: Schedule,
                 w: float = 1.0, *, scale: float = 1.0, text_key: str = "clip_text"):
        super().__init__(model, image_encoder, schedule, w, y_key=text_key)
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"CLIP guidance's scale must be a finite number > 0, got {scale}")
        self.scale = scale

    def guide_grad(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """∇_{x_t} s f(x_t, t) · g(c), g(c) = ``y`` (B, D) or (1, D)."""
        return clip_grad(self.classifier, x_t, t, y, self.scale)


class AncestralClassifierGuidance(ClassifierGuidance):
    """Dhariwal & Nichol 2021, Algorithm 1: x_{t−1} ~ N(μ + s Σ ∇ log f_φ(y | x_t), Σ), as an
    ε-model for :func:`difflab.samplers.ddpm`.

    The ddpm mean is linear in ε̂ (Weng eq. 17: μ = (x_t − β_t/√(1−ᾱ_t) ε̂)/√α_t), so shifting
    ε̂ by δ moves μ by −β_t/(√α_t √(1−ᾱ_t)) δ. The mean shift s σ_t² g (g = ∇ log f_φ) is hence
    the ε-shift

        ε̄ = ε − s σ_t² √α_t √(1−ᾱ_t) / β_t · g,

    with σ_t² the sampler's variance: β_t (``variance="beta"``; then this is eq. 25 with
    w = s √α_t), β̃_t (``"beta_tilde"``), or the learned Σ_θ = β_t^v β̃_t^{1−v} of eq. (23)
    (``"learned"``, from the v the model returns; elementwise). Pass ddpm the same variance.

    Exact for ddpm on the full chain (steps=None: each update t → t−1). On a strided chain the
    update t → s uses β_{t|s}, α_{t|s} instead, which this wrapper cannot see (it is given t
    only), so the shift there is not Algorithm 1's; use :class:`ClassifierGuidance` (eq. 25),
    which is defined for any sampler. At t = 1 with β̃ the shift is 0 (β̃_1 = 0).
    """

    def __init__(self, model: Model, classifier: Classifier, schedule: Schedule,
                 s: float = 1.0, *, variance: str = "beta_tilde", y_key: str = "y",
                 model_takes_y: bool = False):
        if variance not in ANCESTRAL_VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of "
                             f"{', '.join(ANCESTRAL_VARIANCES)}")
        super().__init__(model, classifier, schedule, _check_weight(s, "s"), y_key=y_key,
                         model_takes_y=model_takes_y)
        self.variance = variance

    def _shift_scale(self, x_t: Tensor, t: Tensor, v: Tensor | None) -> Tensor:
        i = t.cpu().long() - 1
        bc = Schedule.broadcast
        beta = bc(self.schedule.betas[i], x_t)  # (B, 1, …)
        beta_tilde = bc(self.schedule.beta_tildes[i], x_t)
        ab = _alpha_bar(self.schedule, t, x_t)
        if self.variance == "beta":
            var = beta
        elif self.variance == "beta_tilde":
            var = beta_tilde
        elif v is None:
            raise ValueError("variance='learned' needs a model that returns (eps, v)")
        else:
            var = beta.pow(v) * beta_tilde.pow(1 - v)  # eq. (23), elementwise; 0**0 = 1
        return self.w * var * (1 - beta).sqrt() * (1 - ab).sqrt() / beta


# --- thresholding (Imagen) -----------------------------------------------------------------


def static_threshold(x0: Tensor) -> Tensor:
    """Clip x̂_0 to [−1, 1] — static thresholding (Saharia et al. 2022, §2.3)."""
    return x0.clamp(-1.0, 1.0)


def dynamic_threshold(x0: Tensor, p: float = 0.995) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022, §2.3): per sample, s = max(1, the p-quantile of
    |x̂_0| over all its elements); clip x̂_0 to [−s, s] and divide by s.

    x0: (B, …). A sample already inside [−1, 1] has s = 1 and is returned unchanged; any other
    lands inside [−1, 1]. The quantile interpolates linearly between order statistics, as
    ``numpy.percentile`` does by default (and as Imagen's ``jnp.percentile`` does).
    """
    if not 0 < p <= 1:
        raise ValueError(f"p must lie in (0, 1], got {p}")
    a = x0.abs().flatten(1)  # (B, N)
    n = a.shape[1]
    pos = p * (n - 1)  # the quantile's 0-based position among the sorted |x̂_0|
    lo, frac = math.floor(pos), pos - math.floor(pos)
    q = a.kthvalue(lo + 1, dim=1).values  # (B,)
    if frac > 0:
        q = q + frac * (a.kthvalue(lo + 2, dim=1).values - q)
    s = Schedule.broadcast(q.clamp(min=1.0), x0)  # (B, 1, …)
    return x0.clamp(-s, s) / s


class Thresholded(nn.Module):
    """An ε-model whose x̂_0 is thresholded: x̂_0 = x0_from_eps(x_t, ε̂) (Weng eq. 11), clipped by
    ``threshold`` (:func:`dynamic_threshold` by default, or :func:`static_threshold`, or e.g.
    ``functools.partial(dynamic_threshold, p=0.99)``), and ε̂ re-derived from it,
    ε̂' = eps_from_x0(x_t, threshold(x̂_0), ᾱ_t).

    Every sampler that forms x̂_0 from ε̂ (ddpm's μ̃_t(x_t, x̂_0), DDIM's √ᾱ_s x̂_0 term) then
    sees the thresholded x̂_0 without knowing of it. Re-deriving ε̂ is GLIDE's choice, and
    diffusers' DDIM with ``use_clipped_model_output=True`` (its default, False, clips x̂_0 but
    keeps the raw ε̂ in the direction term of eq. 29). Wrap the guided model, as Imagen does
    with large classifier-free guidance weights. Elements whose x̂_0 the threshold leaves unchanged
    keep their ε̂ bit for bit. A learned-variance v passes through.
    """

    def __init__(self, model: Model, schedule: Schedule,
                 threshold: Callable[[Tensor], Tensor] = dynamic_threshold):
        super().__init__()
        self.model = model
        self.schedule = schedule
        self.threshold = threshold

    def forward(self, x_t: Tensor, t: Tensor, **cond):
        eps, v = _split(self.model(x_t, t, **cond))
        ab = _alpha_bar(self.schedule, t, x_t)  # (B, 1, …)
        x0 = x0_from_eps(x_t, eps, ab)  # eq. (11)
        x0_thr = self.threshold(x0)
        eps_thr = torch.where(x0_thr == x0, eps, eps_from_x0(x_t, x0_thr, ab))
        return _join(eps_thr, v)


# --- conditions fixed ----------------------------------------------------------------------


class Bound(nn.Module):
    """``model`` with its conditions fixed: Bound(m, y=labels)(x_t, t) = m(x_t, t, y=labels),
    so samplers that know nothing of conditions sample a conditional model. ``.model`` and
    ``.cond`` (a dict) give them back: the consistency sampler needs the model itself, and
    recognises a bound model by these two attributes alone (samplers import nothing from here;
    see :func:`difflab.samplers.consistency.unbind`)."""

    def __init__(self, model, **cond):
        super().__init__()
        self.model, self.cond = model, cond

    def forward(self, x_t: Tensor, t: Tensor):
        return self.model(x_t, t, **self.cond)
