"""Noise-conditional score networks — Weng, "Connection with noise-conditioned score networks
(NCSN)"; Song & Ermon 2019 (NCSN); Song & Ermon 2020 ("Improved techniques", NCSNv2).

The data are perturbed additively (variance exploding): q_σ(x̃ | x) = N(x̃; x, σ² I), at a
geometric ladder σ_1 > σ_2 > … > σ_L. A score network s_θ(x̃, σ_i) ≈ ∇ log q_{σ_i}(x̃) is
trained on all levels jointly and sampled with annealed Langevin dynamics (Weng eq. 4;
:func:`difflab.samplers.langevin`). Here, from the 2020 paper:

- technique 1: σ_1 = the largest pairwise distance of the training data
  (:func:`max_pairwise_distance`);
- technique 2: the common ratio γ = σ_{i−1}/σ_i from the overlap rule (:func:`ladder_ratio`),
  hence L (:func:`ladder_levels`);
- technique 3: s_θ(x̃, σ) = net(x̃, i)/σ (:class:`ScoreModel`; the network also sees the index
  i of its level through the time embedding, as NCSN's does);
- technique 4: the Langevin step size from the variance after T updates
  (:func:`langevin_step_size`);
- technique 5 (an EMA of the weights) is the trainer's.

The objectives, per sample and weighted by λ(σ) = σ² (Song & Ermon 2019, eq. 6):

- denoising score matching (Vincent 2011): σ² · ½ ‖s_θ(x̃, σ) + (x̃ − x)/σ²‖² (:func:`dsm_loss`);
- sliced score matching (Song et al. 2019, eq. 7-8): σ² · [vᵀ ∇_x̃ s_θ v + ½ (vᵀ s_θ)²] with
  v ∼ N(0, I), or with the variance reduction that Gaussian projections allow,
  E_v[(vᵀ s)²] = ‖s‖² (SSM-VR) (:func:`ssm_loss`).

Both equal the explicit score-matching loss ½ E‖s_θ − ∇ log q_σ‖² up to a constant in θ; the
two constants differ by exactly −D/(2σ²) (tests/test_ncsn.py checks it).

Level indices i run 1..L, σ_1 the largest (the papers' order). Tensors: x (B, …); i int64 (B,).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

DEFAULT_LEVELS = 10  # Song & Ermon 2019's L, where technique 2 has no solution (D ≤ 4)
PAIRWISE_SUBSET = 10_000  # technique 1 on at most this many points (exact below it)


# --- the ladder (Song & Ermon 2020, techniques 1, 2) ------------------------------------------


def max_pairwise_distance(x: Tensor, max_points: int = PAIRWISE_SUBSET, seed: int = 0,
                          chunk: int = 1024) -> float:
    """max_{j,k} ‖x_j − x_k‖ over the data x (N, …): σ_1 of technique 1 (Song & Ermon 2020, §3.1).
    Exact for N ≤ ``max_points``; otherwise over a seeded random subset of that size (a lower
    bound: the rule is a rough one, and O(N²) distances of a large set are not worth it)."""
    flat = x.reshape(x.shape[0], -1).double()  # (N, D)
    if flat.shape[0] < 2:
        raise ValueError("the largest pairwise distance needs at least 2 data points")
    if flat.shape[0] > max_points:
        g = torch.Generator().manual_seed(seed)
        flat = flat[torch.randperm(flat.shape[0], generator=g)[:max_points]]
    best = 0.0
    for start in range(0, flat.shape[0], chunk):
        best = max(best, float(torch.cdist(flat[start:start + chunk], flat).max()))
    return best


def ladder_overlap(gamma: float, dim: int) -> float:
    """Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ): technique 2's measure of how much the shells of
    q_{σ_i} and q_{σ_{i−1}} (radius ≈ σ√D, width ≈ σ/√2 in high D) overlap at ratio γ."""
    a = math.sqrt(2 * dim) * (gamma - 1)
    phi = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))  # noqa: E731 — the normal CDF Φ
    return phi(a + 3 * gamma) - phi(a - 3 * gamma)


def ladder_ratio(dim: int, target: float = 0.5) -> float | None:
    """The ratio γ > 1 of technique 2 (Song & Ermon 2020, §3.2): ladder_overlap(γ, D) = 0.5,
    found by bisection. None where no γ reaches it: for D ≤ 4 the overlap stays above 0.5 for
    every γ (in so few dimensions the shells are not thin), so the rule says nothing."""
    if dim < 1:
        raise ValueError(f"dim must be at least 1, got {dim}")
    lo, hi = 1.0, 2.0
    while ladder_overlap(hi, dim) > target:
        hi *= 2
        if hi > 1e6:
            return None
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ladder_overlap(mid, dim) > target else (lo, mid)
    return 0.5 * (lo + hi)


def ladder_levels(sigma_max: float, sigma_min: float, dim: int) -> int:
    """L of a geometric ladder from σ_1 = ``sigma_max`` to σ_L = ``sigma_min`` whose ratio is at
    most technique 2's γ: L = 1 + ⌈log(σ_1/σ_L) / log γ⌉; :data:`DEFAULT_LEVELS` where the rule
    has no solution (D ≤ 4)."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    gamma = ladder_ratio(dim)
    if gamma is None:
        return DEFAULT_LEVELS
    return 1 + math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma) - 1e-9)


def geometric_ladder(sigma_max: float, sigma_min: float, levels: int) -> Tensor:
    """σ_1 > … > σ_L, geometric from ``sigma_max`` to ``sigma_min``; float64 (L,)."""
    if levels < 2 or not 0 < sigma_min < sigma_max:
        raise ValueError(f"a ladder needs L >= 2 and 0 < sigma_min < sigma_max, got L = {levels}, "
                         f"{sigma_min}, {sigma_max}")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), levels,
                          dtype=torch.float64)


# --- the Langevin step size (Song & Ermon 2020, technique 4) ----------------------------------


def langevin_variance_ratio(step_size: float, gamma: float, n_each: int) -> float:
    """s_T²/σ_i² after ``n_each`` = T updates of eq. (4) at level i with δ_i = step_size·σ_i²,
    started from N(0, σ_{i−1}² I) = N(0, γ²σ_i² I), when the data are one point (Song & Ermon
    2020, Prop. 3, in eq. 4's convention: their ε/σ_L² is step_size/2). Each update is
    x ← (1 − step_size/2) x + √δ_i z, so with a = 1 − step_size/2,

        s_T²/σ_i² = a^{2T} γ² + (1 − a^{2T}) · step_size/(1 − a²).
    """
    if not 0 < step_size < 2:
        raise ValueError(f"step_size must lie in (0, 2), got {step_size}")
    a2 = (1 - step_size / 2) ** 2
    decay = a2**n_each
    return decay * gamma**2 + (1 - decay) * step_size / (1 - a2)


def langevin_step_size(gamma: float, n_each: int) -> float:
    """Technique 4: the step_size in (0, 2) that makes :func:`langevin_variance_ratio` closest
    to 1 (it is above 1 for every step size: small steps leave the start's γ², large ones
    overshoot the stationary variance 1/(1 − step_size/4)). A log grid, then golden section."""
    if gamma <= 1 or n_each < 1:
        raise ValueError(f"need gamma > 1 and n_each >= 1, got {gamma} and {n_each}")
    f = lambda s: langevin_variance_ratio(s, gamma, n_each)  # noqa: E731
    grid = torch.logspace(-7, math.log10(1.999), 400, dtype=torch.float64).tolist()
    k = min(range(len(grid)), key=lambda j: f(grid[j]))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    r = (math.sqrt(5) - 1) / 2
    for _ in range(100):
        c, d = hi - r * (hi - lo), lo + r * (hi - lo)
        lo, hi = (lo, d) if f(c) < f(d) else (c, hi)
    return 0.5 * (lo + hi)


# --- the score network (technique 3) ----------------------------------------------------------


class ScoreModel(nn.Module):
    """s_θ(x̃, σ_i) = net(x̃, i)/σ_i — Song & Ermon 2020, technique 3 — for ``net`` any of
    difflab's networks ``net(x, t)`` (here t = i, the level's index 1..L). ``sigmas``: the
    ladder σ_1 > … > σ_L (L,). The samplers know it by ``is_score_model``
    (:func:`difflab.samplers.langevin` takes it directly). Call: model(x̃, i) -> (B, …)."""

    is_score_model = True

    def __init__(self, net: nn.Module, sigmas: Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("sigmas", torch.as_tensor(sigmas, dtype=torch.float64),
                             persistent=False)

    @property
    def levels(self) -> int:
        return self.sigmas.shape[0]

    def forward(self, x: Tensor, i: Tensor) -> Tensor:
        return self.net(x, i) / level_sigma(self.sigmas, i, x)


def level_sigma(sigmas: Tensor, i: Tensor, like: Tensor) -> Tensor:
    """σ_i of the ladder ``sigmas`` (L,) for indices i (B,) in 1..L, shaped (B, 1, …) to
    broadcast against ``like`` (B, …), in its dtype and on its device."""
    s = sigmas.to(like.device)[i.to(like.device) - 1].to(like.dtype)  # (B,)
    return s.reshape(-1, *([1] * (like.ndim - 1)))


def check_levels(i: Tensor, levels: int) -> Tensor:
    """i as int64, ValueError unless every index lies in 1..L."""
    i = torch.as_tensor(i).long()
    if i.numel() and (int(i.min()) < 1 or int(i.max()) > levels):
        raise ValueError(f"level indices must lie in 1..{levels}")
    return i


# --- the objectives ---------------------------------------------------------------------------


def _sum(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)  # (B, …) -> (B,)


def dsm_loss(model: Callable[[Tensor, Tensor], Tensor], sigmas: Tensor, x: Tensor, i: Tensor,
             noise: Tensor) -> Tensor:
    """Denoising score matching with λ(σ) = σ², per sample (B,) — Song & Ermon 2019, eq. (5)-(6);
    Vincent 2011: x̃ = x + σ_i z (z = ``noise``), ∇ log q_σ(x̃ | x) = −(x̃ − x)/σ² = −z/σ, so

        σ_i² · ½ ‖s_θ(x̃, σ_i) + z/σ_i‖²   (= ½ ‖net(x̃, i) + z‖² with technique 3),

    summed over the data dimensions. Its minimiser over functions is ∇ log q_{σ_i}(x̃).
    ``model(x̃, i)`` is s_θ (a :class:`ScoreModel`, perhaps wrapped for training) on the ladder
    ``sigmas`` (L,)."""
    i = check_levels(i, sigmas.shape[0]).to(x.device)
    sigma = level_sigma(sigmas, i, x)  # (B, 1, …)
    x_tilde = x + sigma * noise
    return 0.5 * _sum((sigma * model(x_tilde, i) + noise).pow(2))


def ssm_loss(model: Callable[[Tensor, Tensor], Tensor], sigmas: Tensor, x: Tensor, i: Tensor,
             noise: Tensor, v: Tensor, variance_reduction: bool = True) -> Tensor:
    """Sliced score matching on the perturbed data with λ(σ) = σ², per sample (B,) — Song et al.
    2019, eq. (7)-(8) (Song & Ermon 2019, §4.2, use it for NCSN too): x̃ = x + σ_i z and

        σ_i² · [vᵀ ∇_x̃ s_θ(x̃, σ_i) v + ½ (vᵀ s_θ)²],   v = ``v`` ∼ N(0, I),

    with ½ ‖s_θ‖² for ½ (vᵀ s_θ)² under ``variance_reduction`` (SSM-VR: equal in expectation
    over Gaussian v). vᵀ∇s v is one Jacobian-vector product by autograd, kept in the graph so
    the loss trains θ (a double backward: one process, not under DDP). ``model``, ``sigmas``:
    as for :func:`dsm_loss`."""
    i = check_levels(i, sigmas.shape[0]).to(x.device)
    sigma = level_sigma(sigmas, i, x)  # (B, 1, …)
    # attention through the math kernel: the fused ones have no double backward
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        x_tilde = (x + sigma * noise).detach().requires_grad_(True)
        s = model(x_tilde, i)  # (B, …)
        sv = _sum(s * v)  # (B,) vᵀ s
        grad = torch.autograd.grad(sv.sum(), x_tilde, create_graph=True)[0]  # (B, …) ∇(vᵀs)
    jvp = _sum(grad * v)  # vᵀ ∇s v
    second = 0.5 * _sum(s.pow(2)) if variance_reduction else 0.5 * sv.pow(2)
    return sigma.flatten() ** 2 * (jvp + second)
