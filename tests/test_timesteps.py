"""Timestep spacings: the documented values, strictly decreasing, in 1..T."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from difflab.samplers import timesteps
from difflab.samplers.langevin import geometric_levels
from difflab.samplers.timesteps import resolve
from difflab.schedules import cosine, linear


def test_documented_values_T1000_S10():
    assert timesteps(1000, 10, "linspace").tolist() == [1000, 889, 778, 667, 556, 445, 334, 223,
                                                        112, 1]
    assert timesteps(1000, 10, "leading").tolist() == [901, 801, 701, 601, 501, 401, 301, 201,
                                                       101, 1]
    assert timesteps(1000, 10, "trailing").tolist() == list(range(1000, 0, -100))


def test_documented_values_uneven():
    # T = 10, S = 3: linspace 1, 5.5 → 6, 10; leading step ⌊10/3⌋ = 3; trailing 10 − k·10/3
    assert timesteps(10, 3, "linspace").tolist() == [10, 6, 1]
    assert timesteps(10, 3, "leading").tolist() == [7, 4, 1]
    assert timesteps(10, 3, "trailing").tolist() == [10, 7, 3]


@settings(max_examples=200, deadline=None)
@given(T=st.integers(1, 2000), data=st.data(), spacing=st.sampled_from(["linspace", "leading",
                                                                         "trailing"]))
def test_every_spacing_is_valid(T, data, spacing):
    S = data.draw(st.integers(1, T))
    ts = timesteps(T, S, spacing)
    assert ts.dtype == torch.int64 and ts.numel() == S
    assert bool((ts[:-1] > ts[1:]).all())
    assert int(ts[-1]) >= 1 and int(ts[0]) <= T
    if spacing == "leading" or (spacing == "linspace" and S > 1):
        assert int(ts[-1]) == 1
    if spacing in ("linspace", "trailing"):
        assert int(ts[0]) == T
    if spacing == "trailing":
        assert int(ts[-1]) == int(T / S + 0.5)  # round(T/S): the last update jumps to x_0
    if S == T:
        assert ts.tolist() == list(range(T, 0, -1))


def test_bad_spacing_and_explicit_lists():
    with pytest.raises(ValueError, match="spacing"):
        timesteps(100, 10, "uniform")
    assert resolve(100, [5, 50, 1]).tolist() == [50, 5, 1]
    assert resolve(100, None).tolist() == list(range(100, 0, -1))
    for bad in ([0, 5], [5, 5], [101], []):
        with pytest.raises(ValueError):
            resolve(100, bad)


@pytest.mark.parametrize("sched", [linear(1000), cosine(1000)])
def test_geometric_levels(sched):
    ts = geometric_levels(sched, 30)
    assert ts[0] == 1000 and ts[-1] == 1 and ts == sorted(set(ts), reverse=True)
    sig = ((1 - sched.alpha_bars) / sched.alpha_bars).sqrt()[torch.tensor(ts) - 1].log()
    # successive log σ gaps are close to equal where the grid is fine enough to resolve them
    gaps = sig[:-1] - sig[1:]
    assert gaps.min() > 0
