"""Exact denoisers: ε̂(x_t, t) = E[ε | x_t] in closed form for Gaussian and Gaussian-mixture data.

If x_0 ~ q and x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (Weng eq. 3), the L_simple-optimal model is
ε*(x_t, t) = −√(1−ᾱ_t) ∇ log q_t(x_t) (Weng eq. 21, Tweedie's formula). For Gaussian data
q_t is Gaussian; for a mixture it is a mixture with the same weights, so the score is known
exactly. Tests, benchmarks and docs use these to measure samplers free of training error.

A mixture whose components are the classes also gives the exact pieces of conditioned generation
(Weng eq. 24-26): the class-conditional denoiser ε*(x_t, t, y) (:class:`ClassConditionalDenoiser`,
component y's Gaussian, noised) and the noisy classifier log q(y | x_t) (:class:`NoisyClassifier`,
the posterior over components at noise level t), differentiable in x_t.

All arithmetic is float64; outputs take the dtype of x_t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .schedules import Schedule


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """Isotropic mixture Σ_k π_k N(μ_k, s_k² I) in D dimensions."""

    means: Tensor  # (K, D)
    stds: Tensor  # (K,)
    weights: Tensor  # (K,), sums to 1

    def __post_init__(self) -> None:
        m = torch.as_tensor(self.means, dtype=torch.float64)
        if m.ndim != 2:
            raise ValueError("means must have shape (K, D)")
        s = torch.as_tensor(self.stds, dtype=torch.float64).expand(m.shape[0]).clone()
        w = torch.as_tensor(self.weights, dtype=torch.float64).expand(m.shape[0]).clone()
        if (s <= 0).any() or (w <= 0).any():
            raise ValueError("stds and weights must be positive")
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "stds", s)
        object.__setattr__(self, "weights", w / w.sum())

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None,
               return_labels: bool = False):
        """n draws, float32 (n, D); with ``return_labels`` also the component of each (n,)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = (self.means[k] + self.stds[k, None] * z).float()
        return (x, k) if return_labels else x

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x), shape (B,)."""
        return _mixture_logits(x.double(), self.means, self.stds**2, self.weights).logsumexp(-1)

    def at(self, ab: Tensor | float) -> GaussianMixture:
        """The marginal q_t of x_t when ᾱ_t = ab: Σ π_k N(√ᾱ μ_k, (ᾱ s_k² + 1 − ᾱ) I)."""
        ab = float(ab)
        return GaussianMixture(math.sqrt(ab) * self.means,
                               (ab * self.stds**2 + 1 - ab).sqrt(), self.weights)

    def _noised(self, x_t: Tensor, ab: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For per-sample ᾱ_t, ab (B,): diff_k = √ᾱ μ_k − x_t (B, K, D), the component variances
        var_k = ᾱ s_k² + 1 − ᾱ (B, K), and log π_k + log N(x_t; √ᾱ μ_k, var_k I) up to a
        constant common to all k (B, K)."""
        x, ab = x_t.double(), ab.double().to(x_t.device)[:, None]  # (B, D), (B, 1)
        mu = ab.sqrt()[..., None] * self.means[None]  # (B, K, D)
        var = ab * self.stds[None] ** 2 + 1 - ab  # (B, K)
        diff = mu - x[:, None]  # (B, K, D)
        logits = (self.weights.log() - 0.5 * diff.pow(2).sum(-1) / var
                  - 0.5 * self.dim * var.log())  # (B, K)
        return diff, var, logits

    def marginal_score(self, x_t: Tensor, ab: Tensor) -> Tensor:
        """∇ log q_t(x_t) with a per-sample ᾱ_t, ab (B,): the score of :meth:`at` (ab), batched."""
        diff, var, logits = self._noised(x_t, ab)
        r = logits.softmax(-1)  # p(k | x_t), (B, K)
        return (r[..., None] * diff / var[..., None]).sum(1)  # (B, D)

    def component_score(self, x_t: Tensor, ab: Tensor, k: Tensor) -> Tensor:
        """∇ log q_t(x_t | k) = −(x_t − √ᾱ μ_k) / (ᾱ s_k² + 1 − ᾱ): the score of component k
        noised to ᾱ_t, per sample. x_t (B, D), ab (B,), k int64 (B,) in 0..K−1. Float64 (B, D)."""
        k = torch.as_tensor(k, device=x_t.device).long()
        ab = ab.double().to(x_t.device)[:, None]  # (B, 1)
        mu = ab.sqrt() * self.means[k]  # (B, D)
        var = ab * self.stds[k, None] ** 2 + 1 - ab  # (B, 1)
        return (mu - x_t.double()) / var

    def marginal_log_posterior(self, x_t: Tensor, ab: Tensor) -> Tensor:
        """log q(k | x_t), the posterior over components of the noised mixture at a per-sample
        ᾱ_t, ab (B,): softmax_k[log π_k + log N(x_t; √ᾱ μ_k, (ᾱ s_k² + 1 − ᾱ) I)]. Float64
        (B, K), differentiable in x_t; at ab = 1 it is log :meth:`posterior`."""
        return self._noised(x_t, ab)[2].log_softmax(-1)

    def posterior(self, x: Tensor) -> Tensor:
        """Responsibilities p(k | x), shape (B, K)."""
        return _mixture_logits(x.double(), self.means, self.stds**2, self.weights).softmax(-1)


@dataclass(frozen=True, eq=False)
class Gaussian:
    """Full-covariance Gaussian N(μ, Σ) in D dimensions."""

    mean: Tensor  # (D,)
    cov: Tensor  # (D, D), symmetric positive definite

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", torch.as_tensor(self.mean, dtype=torch.float64))
        object.__setattr__(self, "cov", torch.as_tensor(self.cov, dtype=torch.float64))

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        L = torch.linalg.cholesky(self.cov)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.mean + z @ L.T).float()

    def at(self, ab: Tensor | float) -> Gaussian:
        """q_t: N(√ᾱ μ, ᾱ Σ + (1 − ᾱ) I)."""
        ab = float(ab)
        eye = torch.eye(self.dim, dtype=torch.float64)
        return Gaussian(math.sqrt(ab) * self.mean, ab * self.cov + (1 - ab) * eye)

    def log_prob(self, x: Tensor) -> Tensor:
        d = torch.distributions.MultivariateNormal(self.mean, covariance_matrix=self.cov)
        return d.log_prob(x.double())

    def marginal_score(self, x_t: Tensor, ab: Tensor) -> Tensor:
        """∇ log q_t(x_t) = −(ᾱΣ + (1−ᾱ)I)⁻¹ (x_t − √ᾱ μ) with a per-sample ᾱ, ab (B,)."""
        ab = ab.double()[:, None, None]  # (B, 1, 1)
        cov = ab * self.cov + (1 - ab) * torch.eye(self.dim, dtype=torch.float64)  # (B, D, D)
        diff = x_t.double() - ab[:, :, 0].sqrt() * self.mean  # (B, D)
        return -torch.linalg.solve(cov, diff.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True, eq=False)
class FullCovMixture:
    """Mixture of full-covariance Gaussians Σ_k π_k N(μ_k, Σ_k) in D dimensions: anisotropic
    modes (thin in one direction, wide in another) for the sampler benchmarks.

    Each Σ_k is kept as its eigendecomposition U_k diag(λ_k) U_kᵀ, so the noised component
    ᾱ Σ_k + (1−ᾱ) I = U_k diag(ᾱ λ_k + 1 − ᾱ) U_kᵀ is inverted in O(D²) per point: the
    marginal score ∇ log q_t(x_t) = Σ_k p(k | x_t) (ᾱΣ_k + (1−ᾱ)I)⁻¹ (√ᾱ μ_k − x_t) is exact.
    """

    means: Tensor  # (K, D)
    covs: Tensor  # (K, D, D), symmetric positive definite
    weights: Tensor  # (K,), sums to 1

    def __post_init__(self) -> None:
        m = torch.as_tensor(self.means, dtype=torch.float64)
        c = torch.as_tensor(self.covs, dtype=torch.float64)
        w = torch.as_tensor(self.weights, dtype=torch.float64).expand(m.shape[0]).clone()
        if m.ndim != 2 or c.shape != (m.shape[0], m.shape[1], m.shape[1]):
            raise ValueError("means must have shape (K, D) and covs (K, D, D)")
        c = 0.5 * (c + c.transpose(1, 2))
        lam, U = torch.linalg.eigh(c)  # (K, D), (K, D, D): Σ_k = U diag(λ) Uᵀ
        if (lam <= 0).any() or (w <= 0).any():
            raise ValueError("covariances must be positive definite and weights positive")
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "covs", c)
        object.__setattr__(self, "weights", w / w.sum())
        object.__setattr__(self, "_eig", (lam, U))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None,
               return_labels: bool = False):
        """n draws, float32 (n, D); with ``return_labels`` also the component of each (n,)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        lam, U = self._eig
        x = self.means[k] + torch.einsum("nij,nj->ni", U[k], lam[k].sqrt() * z)
        x = x.float()
        return (x, k) if return_labels else x

    def _noised(self, x_t: Tensor, ab: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For per-sample ᾱ, ab (B,): the coordinates y = U_kᵀ(x_t − √ᾱ μ_k) (B, K, D), the
        eigenvalues of the noised components v = ᾱλ + 1 − ᾱ (B, K, D), and log π_k +
        log N(x_t; √ᾱ μ_k, ᾱΣ_k + (1−ᾱ)I) up to a constant common to all k (B, K)."""
        lam, U = self._eig
        x, ab = x_t.double(), ab.double().to(x_t.device)[:, None, None]  # (B, D), (B, 1, 1)
        diff = x[:, None] - ab[..., 0].sqrt()[..., None] * self.means[None]  # (B, K, D)
        y = torch.einsum("kdj,bkd->bkj", U, diff)  # (B, K, D)
        v = ab * lam[None] + 1 - ab  # (B, K, D)
        logits = self.weights.log() - 0.5 * (y.pow(2) / v).sum(-1) - 0.5 * v.log().sum(-1)
        return y, v, logits

    def at(self, ab: Tensor | float) -> FullCovMixture:
        """The marginal q_t: Σ π_k N(√ᾱ μ_k, ᾱ Σ_k + (1 − ᾱ) I)."""
        ab = float(ab)
        eye = torch.eye(self.dim, dtype=torch.float64)
        return FullCovMixture(math.sqrt(ab) * self.means, ab * self.covs + (1 - ab) * eye,
                              self.weights)

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x), shape (B,)."""
        logits = self._noised(x, torch.ones(x.shape[0], dtype=torch.float64))[2]
        return logits.logsumexp(-1) - 0.5 * self.dim * math.log(2 * math.pi)

    def marginal_score(self, x_t: Tensor, ab: Tensor) -> Tensor:
        """∇ log q_t(x_t) with a per-sample ᾱ_t, ab (B,), float64 (B, D)."""
        y, v, logits = self._noised(x_t, ab)
        r = logits.softmax(-1)  # (B, K)
        g = torch.einsum("kdj,bkj->bkd", self._eig[1], y / v)  # (ᾱΣ_k + (1−ᾱ)I)⁻¹ diff
        return -(r[..., None] * g).sum(1)  # (B, D)

    def posterior(self, x: Tensor) -> Tensor:
        """Responsibilities p(k | x), shape (B, K)."""
        return self._noised(x, torch.ones(x.shape[0], dtype=torch.float64))[2].softmax(-1)


class ExactDenoiser:
    """The L_simple-optimal ε-model for data ``dist`` under ``schedule`` (Weng eq. 21).

    ε*(x_t, t) = −√(1−ᾱ_t) ∇ log q_t(x_t). Callable as model(x_t, t) with x_t (B, D), t (B,).
    """

    def __init__(self, dist: GaussianMixture | Gaussian | FullCovMixture, schedule: Schedule):
        self.dist = dist
        self.schedule = schedule
        self._ab = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alpha_bars])  # (T+1,)

    def alpha_bar(self, t: Tensor) -> Tensor:
        """ᾱ_t for t (B,) in 1..T, float64 (B,), on the CPU."""
        t = torch.as_tensor(t).long().cpu()
        if t.numel() and (int(t.min()) < 1 or int(t.max()) > self.schedule.T):
            raise ValueError(f"t must lie in 1..{self.schedule.T}")
        return self._ab[t]

    def __call__(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        ab = self.alpha_bar(t)  # (B,)
        eps = -(1 - ab).sqrt().to(x_t.device)[:, None] * self.dist.marginal_score(x_t, ab)
        return eps.to(x_t.dtype)  # (B, D)


class ClassConditionalDenoiser(ExactDenoiser):
    """The exact class-conditional ε-model of a mixture whose components are the classes.

    model(x_t, t, y) = ε*(x_t, t, y) = −√(1−ᾱ_t) ∇ log q_t(x_t | y) (Weng eq. 21 for the
    conditional q(x_0 | y) = N(μ_y, s_y² I)), with y int64 (B,) in 0..K−1. The label
    ``null_label`` = K stands for "no condition", y = ∅ (Ho & Salimans 2021): those rows get the
    unconditional ε*(x_t, t) of the whole mixture (:class:`ExactDenoiser`), so one batch can mix
    both, as a classifier-free-guidance network's does. y omitted or None: all unconditional.
    """

    def __init__(self, dist: GaussianMixture, schedule: Schedule):
        if not isinstance(dist, GaussianMixture):
            raise TypeError("the classes are the components of a GaussianMixture")
        super().__init__(dist, schedule)

    @property
    def null_label(self) -> int:
        return self.dist.means.shape[0]

    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor | None = None, **cond) -> Tensor:
        if y is None:
            return super().__call__(x_t, t)
        y = torch.as_tensor(y, device=x_t.device).long()  # (B,)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.null_label):
            raise ValueError(f"y must lie in 0..{self.null_label} ({self.null_label} = null)")
        ab = self.alpha_bar(t)  # (B,)
        null = (y == self.null_label)[:, None]  # (B, 1)
        score = self.dist.component_score(x_t, ab, y.clamp(max=self.null_label - 1))  # (B, D)
        if bool(null.any()):
            score = torch.where(null, self.dist.marginal_score(x_t, ab), score)
        eps = -(1 - ab).sqrt().to(x_t.device)[:, None] * score  # (B, D)
        return eps.to(x_t.dtype)


class NoisyClassifier:
    """The exact noisy classifier of a mixture whose components are the classes:
    classifier(x_t, t) = log q(y | x_t) for every y, (B, K) — the posterior over components of
    q_t (:meth:`GaussianMixture.marginal_log_posterior`), differentiable in x_t.

    Its gradient is the implicit classifier of Weng eq. (26): ∇ log q(y | x_t) =
    ∇ log q_t(x_t | y) − ∇ log q_t(x_t), so classifier guidance (eq. 25) with it and w = 1 on
    the unconditional :class:`ExactDenoiser` is exactly :class:`ClassConditionalDenoiser`.
    Output dtype: that of x_t.
    """

    def __init__(self, dist: GaussianMixture, schedule: Schedule):
        self._denoiser = ClassConditionalDenoiser(dist, schedule)
        self.dist = dist
        self.schedule = schedule

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        ab = self._denoiser.alpha_bar(t)  # (B,)
        return self.dist.marginal_log_posterior(x_t, ab).to(x_t.dtype)  # (B, K)


def _mixture_logits(x: Tensor, means: Tensor, var: Tensor, weights: Tensor) -> Tensor:
    """log π_k + log N(x; μ_k, var_k I), shape (B, K)."""
    D = x.shape[1]
    sq = torch.cdist(x, means).pow(2)  # (B, K)
    return weights.log() - 0.5 * sq / var - 0.5 * D * torch.log(2 * math.pi * var)


def ring_mixture(k: int = 8, radius: float = 2.0, std: float = 0.1,
                 weights: Tensor | None = None) -> GaussianMixture:
    """k isotropic Gaussians on a circle — a standard test target (the 8-Gaussians of the toys)."""
    ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    means = radius * torch.stack([ang.cos(), ang.sin()], 1)  # (k, 2)
    w = torch.ones(k, dtype=torch.float64) if weights is None else weights
    return GaussianMixture(means, torch.full((k,), std, dtype=torch.float64), w)
