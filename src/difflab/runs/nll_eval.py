"""Bits/dim of a trained run on data it has not seen, two ways — ``difflab eval RUN --nll``.

- ``vlb_bpd``: the full variational bound L_vlb = L_T + Σ_{t=2}^T L_{t−1} + L_0 over all T terms
  (Weng eq. 13, 16; Ho et al. 2020, eq. 5), one fresh noise draw per term — an upper bound on
  −log₂ p_θ(x_0)/D of the model's stochastic reverse chain (eq. 6, with the run's Σ_θ: fixed,
  or learned by eq. 23). Reported with its parts L_T (prior), L_0 (decoder) and the rest.
- ``ode_bpd``: −log₂ of the probability-flow ODE's density (Song et al. 2021, App. D.2), the
  divergence integral estimated with one Rademacher probe per image (Hutchinson), on the
  model's grid of ``ode_steps`` timesteps (:func:`difflab.likelihood.ode_bpd`).

Image runs: the first ``n`` images of the run's test split, on the grid of K grey levels (17 for
digits, 256 for MNIST and folders). L_0 is the discretised decoder, so ``vlb_bpd`` bounds the
discrete −log₂ P_θ(x_0)/D; the ODE sees uniformly dequantised y = x_0 + u and adds log₂((K−1)/2),
which bounds the flow's discrete bits/dim in expectation over u (Theis et al. 2016).

2-D runs: the data are continuous, so both are bits/dim of a density (levels = None: the
Gaussian decoder density for L_0, no dequantisation) on ``n`` held-out points that no run has
trained on — comparable between 2-D runs, and negative where the density exceeds 1.

The two numbers bound the likelihoods of two different models that share ε_θ (the reverse
chain and the deterministic flow), so neither need lie below the other for a learned ε_θ; for
the exact denoiser the ODE gives the data's NLL and the bound lies above it. Each standard error
is the standard deviation over the n per-image estimates divided by √n: every estimate carries
its own noise draws (ε per term, u, the probe), so this covers the Monte-Carlo error of both the
draws and the choice of test images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from ..config import TrainConfig, is_image
from ..likelihood import ode_bpd
from ..schedules import Schedule
from ..vlb import prior_kl, vlb_all_terms
from .draw import model_device

ROW_BUDGET = 2**16  # rows × dimensions of one model call of the bound (1024 digits: fastest)


def nll_data(cfg: TrainConfig, n: int) -> tuple[Tensor, int | None, str]:
    """The data to score: (x0 (n, …), levels K or None, a description). ValueError if ``n`` is
    below 1 or above the size of an image test split."""
    from ..build.data import data_levels

    if n < 1:
        raise ValueError(f"-n must be at least 1, got {n}")
    if not is_image(cfg.dataset):
        from ..data import toy2d

        return toy2d.train_test(cfg.dataset, 1, n, cfg.seed)[1], None, f"held-out {cfg.dataset}"
    from ..build.data import image_split

    test = image_split(cfg, "test")
    if n > len(test):
        raise ValueError(f"-n {n} is more than the {len(test)} images of the {cfg.dataset} "
                         "test split")
    return test.x[:n], data_levels(cfg), f"{cfg.dataset} test split"


def _mean_se(x: Tensor) -> tuple[float, float | None]:
    """Mean and standard error (None for a single value) of per-sample estimates (n,)."""
    n = x.numel()
    return x.mean().item(), (x.std().item() / math.sqrt(n) if n > 1 else None)


def evaluate_nll(model: Callable, schedule: Schedule, cfg: TrainConfig, *, n: int = 100,
                 seed: int = 0, ode_steps: int = 100, hutchinson_samples: int = 1,
                 batch: int = 64) -> dict:
    """``vlb_bpd`` and ``ode_bpd`` (means over ``n`` test items, with standard errors) and the
    parts of the bound, as a JSON-ready dict; see the module docstring. ``batch``: items per
    model call (the bound also batches timesteps, up to ``ROW_BUDGET`` values per call)."""
    from ..samplers.consistency import is_consistency_model

    if is_consistency_model(model):  # f_θ maps noise to data in one go: no chain, no ODE here
        raise ValueError("--nll needs an ε-model (a diffusion run or a progressive student); "
                         "this run is a consistency model")
    x0, levels, what = nll_data(cfg, n)
    D, T = x0[0].numel(), schedule.T
    if not 1 <= ode_steps <= T:
        raise ValueError(f"--ode-steps must lie in 1..T (T = {T} for this run), got {ode_steps}")
    if hutchinson_samples < 1:
        raise ValueError(f"--hutchinson-samples must be at least 1, got {hutchinson_samples}")
    x0 = x0.to(model_device(model))  # (n, …) where the model runs
    chunks = x0.split(batch if is_image(cfg.dataset) else 1024)
    g = torch.Generator().manual_seed(seed)
    bits = D * math.log(2)  # nats per sample → bits per dimension

    t0 = time.perf_counter()
    terms, prior = [], []
    for x in chunks:
        batch_t = max(1, min(T, ROW_BUDGET // (len(x) * D)))
        terms.append(vlb_all_terms(model, schedule, x, levels, batch_t=batch_t,
                                   variance=cfg.variance, generator=g) / bits)  # (b, T)
        prior.append(prior_kl(schedule, x).double() / bits)  # (b,)
    terms_bpd, prior_bpd = torch.cat(terms), torch.cat(prior)  # (n, T), (n,)
    vlb = terms_bpd.sum(1) + prior_bpd  # (n,): Weng eq. (16) in bits/dim
    vlb_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    ode = torch.cat([ode_bpd(model, schedule, x, steps=ode_steps,
                             hutchinson_samples=hutchinson_samples, generator=g, levels=levels)
                     for x in chunks])  # (n,)
    ode_seconds = time.perf_counter() - t0

    vlb_mean, vlb_se = _mean_se(vlb)
    ode_mean, ode_se = _mean_se(ode)
    return {
        "vlb_bpd": vlb_mean, "vlb_bpd_se": vlb_se,
        "vlb_prior_bpd": prior_bpd.mean().item(),  # L_T
        "vlb_decoder_bpd": terms_bpd[:, 0].mean().item(),  # L_0
        "vlb_diffusion_bpd": terms_bpd[:, 1:].sum(1).mean().item(),  # Σ_{t=2}^T L_{t−1}
        "ode_bpd": ode_mean, "ode_bpd_se": ode_se,
        "n": n, "data": what, "levels": levels, "T": T, "variance": cfg.variance,
        "ode_steps": ode_steps, "hutchinson_samples": hutchinson_samples, "seed": seed,
        "vlb_seconds": vlb_seconds, "ode_seconds": ode_seconds,
    }
