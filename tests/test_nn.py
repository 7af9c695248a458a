"""The ε-network for vector data: shapes, the sinusoidal time embedding, dependence on t."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.nn.embedding import timestep_embedding
from difflab.nn.mlp import MLPDenoiser


def test_embedding_matches_the_formula():
    t = torch.tensor([0, 1, 17, 1000])
    emb = timestep_embedding(t, 8)  # (4, 8)
    assert emb.shape == (4, 8) and emb.dtype == torch.float32
    freqs = [10000.0 ** (-i / 4) for i in range(4)]
    for row, tv in zip(emb, t.tolist(), strict=True):
        want = [math.sin(tv * f) for f in freqs] + [math.cos(tv * f) for f in freqs]
        torch.testing.assert_close(row, torch.tensor(want), atol=1e-4, rtol=0)


def test_embedding_separates_timesteps_and_handles_odd_dim():
    emb = timestep_embedding(torch.arange(1, 1001), 64)  # (1000, 64)
    d = torch.cdist(emb, emb) + torch.eye(1000) * 1e9
    assert d.min() > 1e-3  # every t gets its own vector
    odd = timestep_embedding(torch.arange(5), 7)
    assert odd.shape == (5, 7) and torch.all(odd[:, -1] == 0)
    with pytest.raises(ValueError):
        timestep_embedding(torch.arange(3), 0)


@pytest.mark.parametrize("dim,depth", [(2, 0), (2, 3), (5, 2)])
def test_mlp_shape_and_dtype(dim, depth):
    model = MLPDenoiser(dim=dim, hidden=32, depth=depth, t_dim=16)
    x = torch.randn(7, dim)
    out = model(x, torch.randint(1, 1001, (7,)))
    assert out.shape == (7, dim) and out.dtype == torch.float32


def test_untrained_mlp_predicts_zero_then_depends_on_t_and_x():
    torch.manual_seed(0)
    model = MLPDenoiser(hidden=32, depth=2, t_dim=16)
    x = torch.randn(16, 2)
    t = torch.full((16,), 10)
    assert torch.all(model(x, t) == 0)  # the output layer starts at zero
    torch.nn.init.normal_(model.out.weight)
    a, b = model(x, t), model(x, torch.full((16,), 900))
    assert (a - b).abs().mean() > 1e-3  # the prediction depends on t
    assert (a - model(x + 1.0, t)).abs().mean() > 1e-3  # and on x_t
    a.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_mlp_rejects_bad_sizes():
    with pytest.raises(ValueError):
        MLPDenoiser(hidden=0)
