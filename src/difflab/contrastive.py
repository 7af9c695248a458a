"""The maths of a contrastive image-text encoder (CLIP) and of moving in its embedding space, as
unCLIP uses it (Weng eq. 34; Radford et al. 2021; Ramesh et al. 2022). Tensors in, tensors out.

- :func:`info_nce`: CLIP's symmetric cross-entropy over the B×B similarities of a batch of
  matched pairs (Radford et al. 2021, Fig. 3; van den Oord et al. 2018's InfoNCE).
- :func:`slerp`: spherical interpolation between two embeddings (Shoemake 1985), with which
  unCLIP interpolates images (Ramesh et al. 2022, §3.1, Fig. 4).
- :func:`text_diff`: unCLIP's text diffs (ibid. §3.2, Fig. 5): an image embedding moved along
  the normalised difference of two caption embeddings.
- :func:`recall_at_1`: retrieval accuracy from a similarity matrix and which pairs match.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips the learned log-temperature at ln 100


def info_nce(image: Tensor, text: Tensor, log_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE of B matched pairs (Radford et al. 2021, Fig. 3).

    ``image``, ``text``: (B, D), L2-normalised rows; pair i is (image[i], text[i]).
    ``log_scale``: scalar log τ⁻¹ (the learned inverse temperature, clipped at ln 100)::

        logits_ij = exp(log_scale) · ⟨image_i, text_j⟩
        L = ½ [ CE(logits, diag) + CE(logitsᵀ, diag) ]

    i.e. the mean of −log softmax_j(logits_i·)[i] over images and of −log softmax_i(logits_·j)[j]
    over texts. Returns a scalar.
    """
    if image.shape != text.shape or image.ndim != 2:
        raise ValueError(f"expected two (B, D) embeddings of equal shape, got "
                         f"{tuple(image.shape)} and {tuple(text.shape)}")
    scale = log_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * image @ text.T  # (B, B)
    target = torch.arange(len(image), device=image.device)
    return 0.5 * (functional.cross_entropy(logits, target)
                  + functional.cross_entropy(logits.T, target))


def slerp(a: Tensor, b: Tensor, w: float | Tensor) -> Tensor:
    """Spherical interpolation of unit vectors ``a``, ``b`` (…, D) at ``w`` in [0, 1]::

        θ = arccos⟨a, b⟩,  slerp(a, b, w) = sin((1−w)θ)/sin θ · a + sin(wθ)/sin θ · b

    (Shoemake 1985; unCLIP's interpolations, Ramesh et al. 2022, §3.1). w = 0 gives ``a``,
    w = 1 gives ``b``; nearly parallel vectors fall back to the normalised linear mix."""
    a, b = functional.normalize(a, dim=-1), functional.normalize(b, dim=-1)
    w = torch.as_tensor(w, dtype=a.dtype, device=a.device)
    dot = (a * b).sum(-1, keepdim=True).clamp(-1.0, 1.0)  # (…, 1)
    theta = torch.arccos(dot)
    sin = torch.sin(theta)
    small = sin.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(sin), sin)
    out = (torch.sin((1 - w) * theta) * a + torch.sin(w * theta) * b) / safe
    linear = functional.normalize((1 - w) * a + w * b, dim=-1)
    return torch.where(small, linear, out)


def text_diff(image: Tensor, text_from: Tensor, text_to: Tensor, w: float | Tensor) -> Tensor:
    """unCLIP's text diff (Ramesh et al. 2022, §3.2): the direction d = normalise(z_t1 − z_t0)
    from the embedding of the current caption ``text_from`` to that of a new one ``text_to``
    (…, D), and the image embedding ``image`` (…, D) rotated towards it, ``slerp(z_i, d, w)``.
    w = 0 is the image itself; w = 1 the direction alone."""
    d = functional.normalize(text_to - text_from, dim=-1)
    return slerp(image, d, w)


def recall_at_1(similarity: Tensor, match: Tensor) -> Tensor:
    """The fraction of queries (rows of ``similarity`` (Q, K)) whose best key (argmax over the
    row) is a match (``match`` bool (Q, K)). Ties go to the first best key."""
    best = similarity.argmax(dim=1)  # (Q,)
    return match[torch.arange(len(best)), best].double().mean()
