"""The patch discriminator of the autoencoder's adversarial loss (Isola et al. 2017, "pix2pix";
Esser et al. 2021, "Taming Transformers", whose loss LDM's first stage uses).

A stack of 4×4 convolutions, stride 2 but the last two, LeakyReLU(0.2): each output logit sees a
patch of the input and says whether it looks real. ``layers`` stride-2 convolutions set the patch
size. GroupNorm (not the BatchNorm of pix2pix) so that a logit never depends on the rest of the
batch, which keeps several processes and one process equal. Weights N(0, 0.02) as pix2pix's.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int, channels: int = 32, layers: int = 2):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(c, out, 4, stride, 1), nn.GroupNorm(math.gcd(32, out), out),
                     nn.LeakyReLU(0.2)]
            c = out
        mods.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) → logits (B, 1, h, w), one a patch
        return self.net(x)
