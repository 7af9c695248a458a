"""difflab.data.toy2d: seeded, standardised 2-D toy distributions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from difflab.data import toy2d
from difflab.metrics import mode_weights

NAMES = list(toy2d.DATASETS)
SEEDS = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _raw(x: torch.Tensor, mean: tuple[float, float], std: tuple[float, float]) -> torch.Tensor:
    """Undo the standardisation: back to the dataset's own coordinates, float64."""
    return x.double() * torch.tensor(std, dtype=torch.float64) + torch.tensor(mean)  # (n, 2)


def test_the_four_datasets_are_registered() -> None:
    assert NAMES == ["swiss_roll", "moons", "8gaussians", "checkerboard"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_shape_dtype_finite(name: str, n: int) -> None:
    x = toy2d.sample(name, n, seed=3)
    assert x.shape == (n, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_points_other_seed_other_points(name: str) -> None:
    a, b, c = (toy2d.sample(name, 500, s) for s in (11, 11, 12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a != c).any(dim=1).float().mean() > 0.99  # not a shared prefix or a few rows


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_the_registered_sampler_on_a_seeded_generator(name: str) -> None:
    g = torch.Generator().manual_seed(5)
    assert torch.equal(toy2d.DATASETS[name](300, g), toy2d.sample(name, 300, 5))


@pytest.mark.parametrize("name", NAMES)
def test_standardised_to_mean_0_variance_1_per_axis(name: str) -> None:
    # the constants are closed forms of the distribution; a large sample must agree with them
    x = toy2d.sample(name, 200_000, seed=0).double()
    assert x.mean(dim=0).abs().max() < 0.012  # standard error 0.0022
    assert (x.std(dim=0) - 1.0).abs().max() < 0.01


def test_unknown_name_raises_and_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'spiral'; choose one of") as e:
        toy2d.sample("spiral", 10, 0)
    assert all(name in str(e.value) for name in NAMES)
    with pytest.raises(ValueError, match="unknown dataset"):
        toy2d.train_test("spiral", 10, 10, 0)


@pytest.mark.parametrize("n", [0, -3])
def test_bad_sizes_raise(n: int) -> None:
    with pytest.raises(ValueError):
        toy2d.sample("moons", n, 0)
    with pytest.raises(ValueError, match="n_train"):
        toy2d.train_test("moons", n, 10, 0)
    with pytest.raises(ValueError, match="n_test"):
        toy2d.train_test("moons", 10, n, 0)


# --- train / held-out split ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_train_test_are_different_draws(name: str) -> None:
    train, test = toy2d.train_test(name, 400, 400, seed=0)
    assert train.shape == (400, 2) and test.shape == (400, 2) and test.dtype == torch.float32
    assert torch.equal(train, toy2d.sample(name, 400, 0))
    shared = (train[:, None, :] == test[None, :, :]).all(dim=-1)  # (400, 400)
    assert not shared.any()  # no point of the held-out set is a training point


@pytest.mark.parametrize("name", NAMES)
def test_held_out_set_does_not_depend_on_the_training_size(name: str) -> None:
    _, t1 = toy2d.train_test(name, 10, 200, seed=4)
    _, t2 = toy2d.train_test(name, 999, 200, seed=4)
    assert torch.equal(t1, t2)


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS)
def test_train_test_is_deterministic_for_any_seed(seed: int) -> None:
    tr1, te1 = toy2d.train_test("swiss_roll", 50, 30, seed)
    tr2, te2 = toy2d.train_test("swiss_roll", 50, 30, seed)
    assert torch.equal(tr1, tr2) and torch.equal(te1, te2)
    assert not torch.equal(tr1[:30], te1)
    _, te_next = toy2d.train_test("swiss_roll", 50, 30, seed + 1)
    assert not torch.equal(te1, te_next)


# --- each distribution is the one it claims to be ------------------------------------------------
def test_swiss_roll_lies_on_the_spiral_r_equals_theta() -> None:
    p = _raw(toy2d.sample("swiss_roll", 20_000, 0), toy2d.SWISS_ROLL_MEAN, toy2d.SWISS_ROLL_STD)
    r = p.norm(dim=1)  # (n,)
    phi = torch.atan2(p[:, 1], p[:, 0])  # (n,)
    # on (t cos t, t sin t) the radius equals the angle mod 2π; noise 0.5 moves r by about 0.5
    res = torch.remainder(r - phi + math.pi, 2 * math.pi) - math.pi  # (n,) in [-π, π)
    assert res.abs().median() < 0.45  # uniform points would give π/2
    assert res.abs().quantile(0.99) < 1.6
    assert r.min() > 1.5 * math.pi - 2.5 and r.max() < 4.5 * math.pi + 2.5
    # t ~ U(1.5π, 4.5π): the radius is uniform over the range, so its mean is 3π
    assert abs(r.mean().item() - 3 * math.pi) < 0.1


def test_moons_lie_on_two_unit_half_circles() -> None:
    p = _raw(toy2d.sample("moons", 20_000, 0), toy2d.MOONS_MEAN, toy2d.MOONS_STD)
    d_upper = (p.norm(dim=1) - 1).abs()  # (n,) distance to the circle around (0, 0)
    d_lower = ((p - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs()
    res = torch.minimum(d_upper, d_lower)  # (n,)
    assert res.median() < 0.08 and res.max() < 0.6  # noise std 0.1


def test_eight_gaussians_modes_weights_and_spread() -> None:
    x = toy2d.sample("8gaussians", 80_000, 0).double()
    means = toy2d.EIGHT_GAUSSIANS_MEANS  # (8, 2)
    w = mode_weights(x, means)  # (8,)
    assert torch.allclose(w, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.006)
    nearest = torch.cdist(x, means).argmin(dim=1)  # (n,)
    spread = (x - means[nearest]).std(dim=0)  # (2,) per-axis std around the mode
    assert torch.allclose(spread, torch.full((2,), toy2d.EIGHT_GAUSSIANS_STD).double(), rtol=0.03)


def test_checkerboard_fills_only_the_black_squares_evenly() -> None:
    n = 80_000
    p = _raw(toy2d.sample("checkerboard", n, 0), (0.0, 0.0), toy2d.CHECKERBOARD_STD)
    assert p.min() >= -2.0 - 1e-6 and p.max() <= 2.0 + 1e-6
    cell = (p + 2.0).floor().clamp(0, 3).long()  # (n, 2) column i and row j of the 4×4 board
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
    counts = torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16)  # (16,)
    black = counts[counts > 0]
    assert black.numel() == 8
    assert ((black / n - 1 / 8).abs() < 0.006).all()
