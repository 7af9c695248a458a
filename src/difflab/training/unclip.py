"""unCLIP's prior as an objective of the one loop (Weng eq. 34; Ramesh et al. 2022, §2.1).

The prior is trained on the scaled CLIP image embeddings z_0 of the training images
(:class:`difflab.nn.unclip_prior.DiffusionPrior`) with the x0-parameterisation: the network
predicts z_0 itself and the loss is

    L = E_{t, z_0, ε} ‖ z_0 − f_θ(√ᾱ_t z_0 + √(1−ᾱ_t) ε, t, y) ‖²

(Ramesh et al. 2022, §2.1: "we train a decoder-only Transformer … to predict the unnoised
CLIP image embedding directly", with a mean-squared error). The caption (tokens and text
embedding) is dropped to ∅ with probability ``p_uncond``, as in the paper (10 %). Everything
else (batches, t, ε, EMA, learning rate) is :class:`~.diffusion.DiffusionObjective`'s.

The decoder needs no objective of its own: it is the diffusion objective with its network
(:class:`difflab.nn.unclip_decoder.UnclipDecoder`) and its conditions
(:class:`difflab.build.unclip.DecoderConditions`).
"""

from __future__ import annotations

from torch import Tensor, nn

from .diffusion import DiffusionObjective


class PriorObjective(DiffusionObjective):
    """x0-prediction MSE of the prior on scaled embeddings (N, D); see the module docstring."""

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        x0, t, noise = batch["x0"], batch["t"], batch["noise"]
        cond = {k: v for k, v in batch.items() if k not in ("x0", "t", "noise")}
        x_t = self.schedule.q_sample(x0, t, noise)  # (B, D), Weng eq. 3
        return (model(x_t, t, **cond) - x0).pow(2).mean()
