"""Seeded 2-D toy distributions: swiss roll (Weng Fig. 3), moons, 8 Gaussians, checkerboard.

Every sampler is ``fn(n, generator) -> (n, 2) float32`` and draws only from the given
``torch.Generator`` (torch ops, no numpy), so one seed gives the same points bit for bit. Each
distribution goes through a fixed affine map, worked out in closed form from the distribution
itself (never from the drawn points), that gives it mean 0 and variance 1 on each axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

_F64 = torch.float64


def _standardise(raw: Tensor, mean: tuple[float, float], std: tuple[float, float]) -> Tensor:
    m = torch.tensor(mean, dtype=_F64, device=raw.device)  # (2,)
    s = torch.tensor(std, dtype=_F64, device=raw.device)  # (2,)
    return ((raw - m) / s).to(torch.float32)  # (n, 2)


# --- swiss roll ------------------------------------------------------------------------------
SWISS_ROLL_NOISE = 0.5  # std of the Gaussian noise on each raw coordinate (radius 4.7 .. 14.1)
# With t ~ U(a, b), a = 1.5π, b = 4.5π, integration by parts gives E[t cos t] = 2,
# E[t sin t] = 2/(3π), E[t² cos² t] = 4.875π² - 1/4 and E[t² sin² t] = 4.875π² + 1/4.
SWISS_ROLL_MEAN = (2.0, 2.0 / (3.0 * math.pi))
_PI2 = math.pi**2
SWISS_ROLL_STD = (
    math.sqrt(4.875 * _PI2 - 4.25 + SWISS_ROLL_NOISE**2),  # ≈ 6.642
    math.sqrt(4.875 * _PI2 + 0.25 - 4.0 / (9.0 * _PI2) + SWISS_ROLL_NOISE**2),  # ≈ 6.969
)


def swiss_roll(n: int, generator: torch.Generator) -> Tensor:
    """2-D swiss roll (Sohl-Dickstein et al. 2015; Weng Fig. 3), the (x, z) plane of the 3-D roll.

    (t cos t, t sin t) + N(0, 0.5² I) with t ~ U(1.5π, 4.5π), then standardised.
    """
    kw = {"generator": generator, "dtype": _F64, "device": generator.device}
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, **kw))  # (n,)
    raw = torch.stack((t * t.cos(), t * t.sin()), dim=1)  # (n, 2)
    raw = raw + SWISS_ROLL_NOISE * torch.randn(n, 2, **kw)
    return _standardise(raw, SWISS_ROLL_MEAN, SWISS_ROLL_STD)


# --- two moons -------------------------------------------------------------------------------
MOONS_NOISE = 0.1
# Upper arc (cos θ, sin θ) and lower arc (1 - cos θ, 1/2 - sin θ), θ ~ U(0, π), each with
# probability 1/2: mean (1/2, 1/4); Var x = 1/2 + 1/4, Var y = 1/2 - 4/π² + (2/π - 1/4)².
MOONS_MEAN = (0.5, 0.25)
MOONS_STD = (
    math.sqrt(0.75 + MOONS_NOISE**2),
    math.sqrt(0.5 - 4.0 / math.pi**2 + (2.0 / math.pi - 0.25) ** 2 + MOONS_NOISE**2),
)


def moons(n: int, generator: torch.Generator) -> Tensor:
    """Two interleaved half circles (as sklearn's make_moons) + N(0, 0.1² I), then standardised."""
    kw = {"generator": generator, "device": generator.device}
    lower = torch.randint(0, 2, (n,), **kw).to(_F64)  # (n,) 0: upper arc, 1: lower arc
    theta = math.pi * torch.rand(n, dtype=_F64, **kw)  # (n,)
    sign = 1.0 - 2.0 * lower  # (n,)
    raw = torch.stack((lower + sign * theta.cos(), 0.5 * lower + sign * theta.sin()), dim=1)
    raw = raw + MOONS_NOISE * torch.randn(n, 2, dtype=_F64, **kw)  # (n, 2)
    return _standardise(raw, MOONS_MEAN, MOONS_STD)


# --- 8 Gaussians -----------------------------------------------------------------------------
# Equal-weight modes at the angles kπ/4 on the unit circle with std 0.1 each: per-axis variance
# 1/2 + 0.01, so everything is scaled by 1/√0.51. The standardised modes, for tests and metrics:
_G8_SCALE = 1.0 / math.sqrt(0.51)
EIGHT_GAUSSIANS_STD = 0.1 * _G8_SCALE  # ≈ 0.140
EIGHT_GAUSSIANS_MEANS = _G8_SCALE * torch.tensor(
    [[math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)] for k in range(8)], dtype=_F64
)  # (8, 2), radius ≈ 1.400


def eight_gaussians(n: int, generator: torch.Generator) -> Tensor:
    """Equal mixture of 8 isotropic Gaussians on a circle (radius ≈ 1.40, std ≈ 0.14)."""
    kw = {"generator": generator, "device": generator.device}
    k = torch.randint(0, 8, (n,), **kw)  # (n,)
    means = EIGHT_GAUSSIANS_MEANS.to(generator.device)[k]  # (n, 2)
    return (means + EIGHT_GAUSSIANS_STD * torch.randn(n, 2, dtype=_F64, **kw)).to(torch.float32)


# --- checkerboard ----------------------------------------------------------------------------
# A 4×4 board of unit cells on [-2, 2]²; the 8 cells (i, j) with i + j even (the bottom-left one
# included) are filled uniformly. Each axis is then U(-2, 2), variance 4/3: scale by √3/2.
CHECKERBOARD_STD = (2.0 / math.sqrt(3.0), 2.0 / math.sqrt(3.0))


def checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """Uniform on the 8 'black' squares of a 4×4 checkerboard, then standardised."""
    kw = {"generator": generator, "device": generator.device}
    i = torch.randint(0, 4, (n,), **kw)  # (n,) column
    j = 2 * torch.randint(0, 2, (n,), **kw) + i % 2  # (n,) row, i + j even
    raw = torch.stack((i, j), dim=1).to(_F64) - 2.0 + torch.rand(n, 2, dtype=_F64, **kw)
    return _standardise(raw, (0.0, 0.0), CHECKERBOARD_STD)


DATASETS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "swiss_roll": swiss_roll,
    "moons": moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
}


def _check(name: str, n: int, what: str = "n") -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if n < 1:
        raise ValueError(f"{what} must be at least 1, got {n}")


def _held_out_seed(seed: int) -> int:
    """The splitmix64 finaliser of seed + γ: a bijection of 64-bit seeds, far from small ones."""
    mask = (1 << 64) - 1
    z = (seed + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def sample(name: str, n: int, seed: int) -> Tensor:
    """n points of the dataset ``name``, drawn from a CPU generator seeded with ``seed``."""
    _check(name, n)
    return DATASETS[name](n, torch.Generator().manual_seed(seed))  # (n, 2)


def train_test(name: str, n_train: int, n_test: int, seed: int) -> tuple[Tensor, Tensor]:
    """A training set and a held-out set from two independent generator streams.

    The training set is ``sample(name, n_train, seed)``; the held-out set comes from a seed
    derived from ``seed`` by a 64-bit mix, so it does not depend on ``n_train`` either.
    """
    _check(name, n_train, "n_train")
    _check(name, n_test, "n_test")
    train = sample(name, n_train, seed)  # (n_train, 2)
    test = DATASETS[name](n_test, torch.Generator().manual_seed(_held_out_seed(seed)))
    return train, test  # (n_test, 2)
