"""A residual MLP that predicts ε for vector data (2-D toys and other low-dimensional x).

    h = W_in x_t + emb(t)                      (B, hidden)
    h = h + W_2 SiLU(W_1 SiLU(h) + emb_k(t))   × depth residual blocks
    ε̂ = W_out SiLU(h)                          (B, out_dim), out_dim = dim by default

``out_dim = 2·dim`` gives [ε̂, v_raw] for a learned variance (Weng eq. 23), to be wrapped by
:class:`difflab.parameterization.LearnedVariance`.

Each block gets its own projection of the time embedding, so every layer knows the noise level.
The output layer starts at zero: an untrained model predicts ε̂ = 0, which keeps the first
gradient steps calm. No normalisation layers: on a CPU they cost more than they help here.

Class conditioning (``num_classes`` = K > 0): ``forward(x_t, t, y)`` with y int64 (B,) in 0..K,
K being the null label ∅ (y None → ∅ for every row). A learned embedding of y, split like the
time projection into one vector for the input and one per block, is added to emb(t) and each
emb_k(t): the label enters every layer just as the noise level does (ADM adds it to the time
embedding the same way).
"""

from __future__ import annotations

from torch import Tensor, nn

from .embedding import check_labels, timestep_embedding


class ResidualBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:  # h, temb: (B, hidden)
        return h + self.fc2(self.act(self.fc1(self.act(h)) + temb))


class MLPDenoiser(nn.Module):
    """ε_θ(x_t, t) for x_t of shape (B, dim) and integer t of shape (B,) in 1..T."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, t_dim: int = 64,
                 out_dim: int | None = None, num_classes: int = 0):
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        if min(dim, hidden, t_dim, out_dim) < 1 or depth < 0:
            raise ValueError("dim, hidden, t_dim and out_dim must be >= 1 and depth >= 0")
        self.dim, self.hidden, self.depth, self.t_dim = dim, hidden, depth, t_dim
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {num_classes}")
        self.num_classes = num_classes
        self.inp = nn.Linear(dim, hidden)
        # one projection of the sinusoidal features for the input and every block
        self.temb = nn.Linear(t_dim, hidden * (depth + 1))
        if num_classes:  # the same split for the label y; the last row is the null label ∅
            self.label_embed = nn.Embedding(num_classes + 1, hidden * (depth + 1))
        self.blocks = nn.ModuleList(ResidualBlock(hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, out_dim)
        self.act = nn.SiLU()
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.temb(timestep_embedding(t, self.t_dim))  # (B, hidden·(depth+1))
        if y is not None and not self.num_classes:
            raise ValueError("y given to an unconditional network (num_classes = 0)")
        if self.num_classes:
            emb = emb + self.label_embed(check_labels(y, self.num_classes, t))
        temb = emb.chunk(self.depth + 1, 1)  # (B, hidden) each
        h = self.inp(x_t) + temb[0]  # (B, hidden)
        for block, e in zip(self.blocks, temb[1:], strict=True):
            h = block(h, e)
        return self.out(self.act(h))  # (B, out_dim)
