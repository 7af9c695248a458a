"""The first stage of latent diffusion: a convolutional autoencoder x ↔ z (Rombach et al. 2022,
§3.1; Weng, "Latent Variable Space", eq. 33's z = E(x), x̃ = D(z)).

    E: x (B, C, H, W) → moments (B, 2c, H/f, W/f)  "kl": mean and log-variance of q(z|x)
                      → h       (B, c,  H/f, W/f)  "vq": the encoder's output before quantisation
    D: z (B, c, H/f, W/f) → x̃ (B, C, H, W)          "vq": quantised first (the quantiser lives
                                                    in the decoder, as in LDM)

f = 2^(levels − 1) is the downsampling factor (1, 2, 4 or 8) and c the latent channels. Each
level has ``res_blocks`` residual blocks (GroupNorm, SiLU, 3×3 convolutions, no time input) and,
except the last, a stride-2 convolution down (encoder) or a nearest upsampling and a 3×3
convolution up (decoder); a middle residual block sits at the lowest resolution. No attention:
the images here are at most 64×64. Widths: ``channels`` × (1, 2, 2, 4)[level].

"kl" regularises q(z|x) = N(μ, diag σ²) towards N(0, I) with a small weight; "vq" maps each
latent vector to its nearest of K codebook entries (:class:`~difflab.nn.quantizer.VectorQuantizer`,
van den Oord et al. 2017). Diffusion runs on z = scale · z, the scale measured from the data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from .quantizer import VectorQuantizer

AE_TYPES = ("kl", "vq")
FACTORS = (1, 2, 4, 8)
WIDTH_MULT = (1, 2, 2, 4)  # the width of level i is channels · WIDTH_MULT[i]
LOGVAR_RANGE = (-30.0, 20.0)  # LDM's clamp of the encoder's log-variance


@dataclass(frozen=True)
class AutoencoderConfig:
    in_channels: int = 1
    latent_channels: int = 3  # c
    factor: int = 4  # f: H/f × W/f latents
    channels: int = 32  # width of the first level
    res_blocks: int = 1  # residual blocks a level
    kind: str = "kl"  # "kl" | "vq"
    codebook_size: int = 256  # K ("vq")
    vq_beta: float = 0.25  # β of the commitment loss ("vq")

    def __post_init__(self) -> None:
        if self.kind not in AE_TYPES:
            raise ValueError(f"autoencoder kind must be one of {', '.join(AE_TYPES)}, "
                             f"got {self.kind!r}")
        if self.factor not in FACTORS:
            raise ValueError(f"downsampling factor must be one of {FACTORS}, got {self.factor}")
        for key in ("in_channels", "latent_channels", "channels", "res_blocks"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.kind == "vq" and self.codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {self.codebook_size}")

    @property
    def levels(self) -> int:
        return int(math.log2(self.factor)) + 1

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.channels * m for m in WIDTH_MULT[: self.levels])

    def to_dict(self) -> dict:
        return asdict(self)


def _groups(ch: int) -> int:
    return math.gcd(32, ch)


class Block(nn.Module):
    """h = x + conv(SiLU(GN(conv(SiLU(GN(x)))))) with a 1×1 skip where the width changes."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, c_in, H, W) → (B, c_out, H, W)
        h = self.conv1(functional.silu(self.norm1(x)))
        h = self.conv2(functional.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        w = cfg.widths
        out = 2 * cfg.latent_channels if cfg.kind == "kl" else cfg.latent_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, w[0], 3, 1, 1)
        layers: list[nn.Module] = []
        c = w[0]
        for i, width in enumerate(w):
            for _ in range(cfg.res_blocks):
                layers.append(Block(c, width))
                c = width
            if i < len(w) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # H → H/2
        self.down = nn.Sequential(*layers)
        self.mid = Block(c, c)
        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.conv_out = nn.Conv2d(c, out, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) → (B, 2c or c, H/f, W/f)
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(functional.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        w = cfg.widths[::-1]
        c = w[0]
        self.conv_in = nn.Conv2d(cfg.latent_channels, c, 3, 1, 1)
        self.mid = Block(c, c)
        layers: list[nn.Module] = []
        for i, width in enumerate(w):
            for _ in range(cfg.res_blocks):
                layers.append(Block(c, width))
                c = width
            if i < len(w) - 1:
                layers += [nn.Upsample(scale_factor=2.0, mode="nearest"),
                           nn.Conv2d(c, c, 3, 1, 1)]  # H → 2H
        self.up = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.conv_out = nn.Conv2d(c, cfg.in_channels, 3, 1, 1)  # "the decoder's last layer"

    def forward(self, z: Tensor) -> Tensor:  # (B, c, H/f, W/f) → (B, C, H, W)
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(functional.silu(self.norm_out(h)))


class Autoencoder(nn.Module):
    """E and D of one kind ("kl" or "vq"); see the module docstring for shapes.

    ``encode(x)`` → moments (KL) or h (VQ); ``latent(moments, noise)`` → z, a draw of q(z|x)
    (KL: μ + σ·noise; VQ: h itself, ``noise`` ignored); ``decode(z)`` → x̃ (VQ: quantised first).
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder, self.decoder = Encoder(config), Decoder(config)
        self.quantizer = (VectorQuantizer(config.codebook_size, config.latent_channels,
                                          config.vq_beta)
                          if config.kind == "vq" else None)

    def latent_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(c, H/f, W/f) of images of ``shape`` (C, H, W)."""
        _, h, w = shape
        f = self.config.factor
        return (self.config.latent_channels, h // f, w // f)

    def check_input(self, x: Tensor) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[-1] % cfg.factor or \
                x.shape[-2] % cfg.factor:
            raise ValueError(f"expected images (B, {cfg.in_channels}, H, W) with H and W "
                             f"divisible by {cfg.factor}, got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.encoder(x)

    def moments(self, moments: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of a KL encoder's output, each (B, c, h, w); log σ² clamped as LDM's."""
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def latent(self, moments: Tensor, noise: Tensor | None = None) -> Tensor:
        """A draw z of q(z | x) (its mean when ``noise`` is None); VQ: h as it is."""
        if self.quantizer is not None:
            return moments
        mean, logvar = self.moments(moments)
        return mean if noise is None else mean + torch.exp(0.5 * logvar) * noise

    def decode(self, z: Tensor) -> Tensor:
        if self.quantizer is not None:
            z = self.quantizer(z).z_q
        return self.decoder(z)

    def last_layer(self) -> Tensor:
        """The weight of the decoder's last convolution (where LDM's adaptive GAN weight is
        measured)."""
        return self.decoder.conv_out.weight
