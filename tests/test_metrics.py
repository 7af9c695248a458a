"""difflab.metrics: sliced W1, its two-sample floor, mode weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from difflab.data import toy2d
from difflab.metrics import mode_weights, swd, swd_floor

SIGMA_ABS_COS = math.sqrt(0.5 - 4 / math.pi**2)  # std of |cos θ|, θ ~ U(0, 2π); its mean is 2/π


def _randn(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _w1_by_cdfs(a: np.ndarray, b: np.ndarray) -> float:
    """Reference 1-D W1 = ∫ |F(s) - G(s)| ds over the merged sample: CDFs, not quantiles."""
    s = np.sort(np.concatenate([a, b]))
    F = np.searchsorted(np.sort(a), s[:-1], side="right") / len(a)
    G = np.searchsorted(np.sort(b), s[:-1], side="right") / len(b)
    return float(np.sum(np.abs(F - G) * np.diff(s)))


def _swiss(n: int, seed: int) -> torch.Tensor:
    return toy2d.sample("swiss_roll", n, seed)


# --- exact values -------------------------------------------------------------------------------
def test_zero_on_identical_samples() -> None:
    x = _randn(1000, 2, 0)
    assert swd(x, x) == 0.0
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    assert swd(x, x[perm]) == pytest.approx(0.0, abs=1e-15)  # only the matmul's rounding moves


def test_a_sample_repeated_is_the_same_distribution_for_unequal_sizes() -> None:
    x = _randn(333, 2, 1)
    assert swd(x, x.repeat(3, 1)) == pytest.approx(0.0, abs=1e-15)


def test_1d_shift_is_exact() -> None:
    # on the line every direction is ±1, so SW1 is plain W1: two equal samples shifted by 1
    x = torch.tensor([0.0, 1.0, 2.0])
    assert swd(x, x + 1.0) == pytest.approx(1.0, abs=1e-12)
    assert swd(torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0])) == pytest.approx(0.5)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), m=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_unequal_sizes_match_the_cdf_integral(n: int, m: int, seed: int) -> None:
    a, b = _randn(n, 1, seed), 0.5 + 2.0 * _randn(m, 1, seed + 1)
    ref = _w1_by_cdfs(a[:, 0].numpy(), b[:, 0].numpy())
    assert swd(a, b, n_projections=8) == pytest.approx(ref, rel=1e-12, abs=1e-14)


def test_same_sample_translated_gives_the_mean_absolute_projection_2_over_pi() -> None:
    # y = x + m e1: each projection is a translate by m u1, so SW1 = mean |m u1| over the
    # directions; for u uniform on the circle E|u1| = 2/π. Only the direction count P limits it.
    m, P = 3.0, 16384
    x = _randn(200, 2, 2)
    got = swd(x, x + torch.tensor([m, 0.0], dtype=torch.float64), n_projections=P)
    assert got == pytest.approx(2 * m / math.pi, abs=4 * m * SIGMA_ABS_COS / math.sqrt(P))


def test_shifted_gaussians_match_closed_form() -> None:
    # N(0, I) vs N(m e1, I) in 2-D: per direction W1 = |m u1|, so SW1 = |m| 2/π. Errors: the
    # direction average (std |m| σ/√P) and the finite samples (a few times the two-sample floor).
    m, n, P = -2.5, 10_000, 1024
    x = _randn(n, 2, 10)
    y = _randn(n, 2, 11) + torch.tensor([m, 0.0], dtype=torch.float64)
    floor = swd(x, _randn(n, 2, 12), n_projections=P, seed=1)
    tol = 4 * abs(m) * SIGMA_ABS_COS / math.sqrt(P) + 3 * floor
    assert swd(x, y, n_projections=P, seed=1) == pytest.approx(abs(m) * 2 / math.pi, abs=tol)


# --- properties ---------------------------------------------------------------------------------
SIZES = st.integers(1, 200)


@settings(max_examples=40, deadline=None)
@given(n=SIZES, m=SIZES, d=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_symmetric_and_non_negative(n: int, m: int, d: int, seed: int) -> None:
    x, y = _randn(n, d, seed), 0.3 + _randn(m, d, seed + 1)
    a, b = swd(x, y, 32, seed), swd(y, x, 32, seed)
    assert a >= 0.0
    assert a == pytest.approx(b, rel=1e-12, abs=1e-15)


@settings(max_examples=40, deadline=None)
@given(
    n=SIZES,
    m=SIZES,
    seed=st.integers(0, 10_000),
    shift=st.tuples(st.floats(-50, 50), st.floats(-50, 50)),
)
def test_translating_both_samples_changes_nothing(
    n: int, m: int, seed: int, shift: tuple[float, float]
) -> None:
    x, y = _randn(n, 2, seed), 2.0 * _randn(m, 2, seed + 1)
    c = torch.tensor(shift, dtype=torch.float64)  # (2,)
    assert swd(x + c, y + c, 32, seed) == pytest.approx(swd(x, y, 32, seed), rel=1e-9, abs=1e-9)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0))
def test_scales_linearly(seed: int, scale: float) -> None:
    x, y = _randn(50, 2, seed), _randn(70, 2, seed + 1) + 1.0
    assert swd(scale * x, scale * y) == pytest.approx(scale * swd(x, y), rel=1e-10)


def test_same_seed_same_directions_and_float32_input() -> None:
    x, y = _swiss(500, 0), _swiss(400, 1)
    assert swd(x, y, seed=3) == swd(x, y, seed=3)
    assert swd(x, y, seed=3) != swd(x, y, seed=4)
    assert swd(x, y) == swd(x.double(), y.double())  # computed in float64 either way


def test_bad_inputs_raise() -> None:
    x = _randn(10, 2, 0)
    with pytest.raises(ValueError, match="dimension"):
        swd(x, _randn(10, 3, 1))
    with pytest.raises(ValueError, match="non-empty"):
        swd(x, x[:0])
    with pytest.raises(ValueError, match="n_projections"):
        swd(x, x, n_projections=0)
    with pytest.raises(ValueError, match="repeats"):
        swd_floor(_swiss, 10, repeats=0)


# --- the two-sample floor -----------------------------------------------------------------------
def test_floor_decays_like_one_over_sqrt_n() -> None:
    # E SW1 between two size-n samples ∝ 1/√n; one floor has ~30 % relative spread, so average
    # 16 repeats (ratio spread ≈ 0.2 at these settings) and allow 2.5 of those.
    small = swd_floor(_swiss, 400, n_projections=64, repeats=16)
    large = swd_floor(_swiss, 1600, n_projections=64, repeats=16)
    assert small / large == pytest.approx(2.0, abs=0.5)


def test_floor_uses_independent_samples_and_is_deterministic() -> None:
    f = swd_floor(_swiss, 300, repeats=2)
    assert f > 0.0 and f == swd_floor(_swiss, 300, repeats=2)
    assert swd_floor(_swiss, 300, seed=1) != swd_floor(_swiss, 300, seed=0)


def test_other_distribution_is_far_above_the_floor_and_held_out_data_is_not() -> None:
    # all four toys have mean 0 and variance 1 per axis, so their projections are alike and the
    # gap is only 0.12-0.18; the floor (~0.02 at n = 5000, spread ~30 %) is still far below it
    n = 5000
    floor = swd_floor(_swiss, n, repeats=2)
    train, test = toy2d.train_test("swiss_roll", n, n, seed=0)
    assert swd(train, test) < 2 * floor  # held-out data: same distribution
    for other in ("moons", "8gaussians", "checkerboard"):
        assert swd(train, toy2d.sample(other, n, 0)) > 4 * floor
    assert swd(train, _randn(n, 2, 0)) > 4 * floor  # even N(0, I), same mean and variance
    assert swd(train, 1.5 * test) > 10 * floor


# --- mode weights -------------------------------------------------------------------------------
def test_mode_weights_of_a_known_mixture() -> None:
    n = 40_000
    means = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]], dtype=torch.float64)  # (3, 2)
    truth = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)  # (3,)
    g = torch.Generator().manual_seed(0)
    k = torch.multinomial(truth, n, replacement=True, generator=g)  # (n,)
    x = means[k] + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)  # (n, 2)
    w = mode_weights(x, means)
    assert w.shape == (3,) and w.dtype == torch.float64
    assert w.sum().item() == pytest.approx(1.0)
    assert torch.allclose(w, truth, atol=4 * math.sqrt(0.25 / n))
    assert torch.equal(mode_weights(means, means), torch.full((3,), 1 / 3, dtype=torch.float64))
