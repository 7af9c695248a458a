"""Vector quantisation with a straight-through gradient (van den Oord et al. 2017, "Neural
Discrete Representation Learning", eq. 3; the VQ-regularised first stage of Rombach et al. 2022).

For each latent vector h_i (of the encoder's output h, (B, d, h, w)) the nearest codebook entry
e_k, k = argmin_j ‖h_i − e_j‖², replaces it. The quantisation has no gradient, so the decoder's
gradient is copied to the encoder: z_q = h + sg(e_k − h) (straight-through). The codebook and the
encoder are tied by

    L_VQ = ‖sg(h) − e‖² + β ‖h − sg(e)‖²     (codebook loss + commitment loss, β = 0.25)

averaged over the latent vectors. Codes that no vector chooses for a long time ("dead" codes)
never receive a gradient; :meth:`VectorQuantizer.revive` moves them next to live codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional


@dataclass
class Quantized:
    z_q: Tensor  # (B, d, h, w) quantised, straight-through to h
    loss: Tensor  # () L_VQ = codebook + β commitment
    codes: Tensor  # (B, h, w) int64, the chosen entries
    counts: Tensor  # (K,) how many latent vectors chose each entry


class VectorQuantizer(nn.Module):
    """A codebook of K entries in R^d (initialised uniform on ±1/K, as in VQ-VAE's code) and
    an EMA of each entry's share of the assignments (``usage``, a buffer, for revival)."""

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.K, self.dim, self.beta = codebook_size, dim, beta
        self.codebook = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("usage", torch.full((codebook_size,), 1.0 / codebook_size))

    def nearest(self, h: Tensor) -> Tensor:
        """Indices (B, h, w) of the nearest entries to the vectors of h (B, d, h, w)."""
        flat = h.permute(0, 2, 3, 1).reshape(-1, self.dim)  # (n, d)
        e = self.codebook.weight  # (K, d)
        # ‖x − e‖² = ‖x‖² − 2 x·e + ‖e‖² (‖x‖² is the same for every entry)
        dist = e.pow(2).sum(1)[None, :] - 2.0 * flat @ e.T  # (n, K)
        return dist.argmin(dim=1).view(h.shape[0], *h.shape[2:])

    def forward(self, h: Tensor) -> Quantized:
        codes = self.nearest(h.detach())  # (B, h, w)
        e = self.codebook(codes).permute(0, 3, 1, 2)  # (B, d, h, w)
        loss = (functional.mse_loss(e, h.detach())
                + self.beta * functional.mse_loss(h, e.detach()))
        z_q = h + (e - h).detach()  # straight-through: forward e, gradient to h
        counts = torch.bincount(codes.flatten(), minlength=self.K)
        return Quantized(z_q, loss, codes, counts)

    @staticmethod
    def perplexity(counts: Tensor) -> float:
        """exp(entropy) of the code distribution of ``counts`` (K,): 1 (one code) to K."""
        p = counts.double() / counts.sum().clamp(min=1)
        return float(torch.exp(-(p * p.clamp(min=1e-12).log()).sum()))

    @torch.no_grad()
    def revive(self, counts: Tensor, generator: torch.Generator, decay: float = 0.99,
               threshold: float = 0.03) -> Tensor:
        """Update ``usage`` with the assignment ``counts`` (K,) of one update, then move every
        entry whose usage fell below ``threshold``/K to a randomly chosen live entry plus a
        little noise (a tenth of the codebook's spread), and reset its usage to 1/K. Returns
        the indices (n,) of the entries moved. Deterministic given ``generator`` (a CPU
        generator), so every process of a run moves the same entries the same way."""
        share = counts.to(self.usage) / counts.sum().clamp(min=1)
        self.usage.mul_(decay).add_(share, alpha=1 - decay)
        dead = (self.usage < threshold / self.K).cpu()
        n = int(dead.sum())
        w = self.codebook.weight
        if n == 0 or n == self.K:
            return torch.zeros(0, dtype=torch.long, device=w.device)
        live = torch.nonzero(~dead).flatten()
        pick = live[torch.randint(len(live), (n,), generator=generator)]
        spread = w.detach().std().cpu().clamp(min=1e-6)
        noise = torch.randn(n, self.dim, generator=generator) * 0.1 * spread
        idx = torch.nonzero(dead).flatten().to(w.device)
        w[idx] = w[pick.to(w.device)] + noise.to(w)
        self.usage[idx] = 1.0 / self.K
        return idx
