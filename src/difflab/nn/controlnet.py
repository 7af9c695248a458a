"""ControlNet: spatial control of a frozen diffusion model through zero convolutions (Weng,
"ControlNet", Fig. 18; Zhang, Rao & Agrawala 2023).

For a block F_θ of the frozen network, ControlNet adds a trainable copy F_θc fed with the
condition c through a zero convolution Z_θz1, and adds the copy's output back through a second
zero convolution Z_θz2 (Weng's equation in the ControlNet section)::

    y_c = F_θ(x) + Z_θz2( F_θc( x + Z_θz1(c) ) )

Here, as in lllyasviel/ControlNet (``cldm/cldm.py``), the block is the whole encoder and middle
of the U-Net (:meth:`difflab.nn.unet.UNet.encode`):

- the **control branch** (:class:`ControlNet`) is a trainable copy of the base U-Net's
  embeddings, stem, encoder stages and middle block, initialised from the base's weights;
- a **hint encoder** (:class:`HintEncoder`: 3×3 convolutions, stride 2 where the hint is larger
  than the network's input — a latent base — ending in a zero convolution) brings the control
  image c to the stem's feature map, where it is added (Z_θz1(c) above);
- a 1×1 **zero convolution** (weight and bias zero) on every skip connection and on the middle
  output (the Z_θz2 of each); their outputs, times ``conditioning_scale``, are added to the
  frozen base's skips and middle before its decoder (:class:`ControlledUNet`).

At initialisation every zero convolution outputs exactly 0, so the controlled model equals its
base bit for bit, whatever the hint; the gradients still reach the zero convolutions (their
inputs are not zero), so after one step they are not (Zhang et al. 2023, §3.1). Two zero layers
in series would never train (each one's gradient is the other's zero weight): the hint encoder
ends in ONE zero convolution and the branch's own first layers are the base's trained ones.

:class:`ControlledUNet` is an ε-model like any other: ``model(x_t, t, hint=…, **cond)``; the
hint is one more keyword, so ``guidance.Bound`` binds it and every sampler and guidance wrapper
works unchanged. A ``conditioning_scale`` of 0 gives the base's prediction.

Which base networks can be controlled is a registry (:data:`CONTROL_BRANCHES`, by the base's
class), not a branch in the run code. Beyond the paper, a DiT base has one too
(:class:`DiTControlNet`: a trainable copy of its first blocks, the hint patch-embedded by a zero
convolution and added to the copy's input tokens, zero-initialised linear layers from each
copied block into the frozen block of the same index; the layout of PixArt-δ, Chen et al. 2024).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .dit import DiT
from .unet import UNet
from .unet_blocks import zero_init


def zero_conv(channels_in: int, channels_out: int, kernel: int = 1, zero: bool = True) -> nn.Conv2d:
    """A convolution whose weight and bias start at zero (``zero=False``: PyTorch's default
    initialisation, for the paper's ablation)."""
    conv = nn.Conv2d(channels_in, channels_out, kernel, padding=kernel // 2)
    return zero_init(conv) if zero else conv


class HintEncoder(nn.Module):
    """The control image c (B, C_h, H·2^k, W·2^k) → features (B, C_out, H, W) for the stem.

    conv3×3 → SiLU, then k times [conv3×3 → SiLU → conv3×3 stride 2 → SiLU] doubling the width,
    then a zero 3×3 convolution (cldm's ``input_hint_block``, with k = 3 and widths 16…256 for
    Stable Diffusion's 512-pixel hints and 64-pixel latents; k = 0 for a pixel-space base) — or,
    with ``patch`` p > 1, a zero p×p convolution of stride p: a DiT's tokens (B, D, H/p, W/p).
    """

    def __init__(self, hint_channels: int, channels_out: int, hidden: int = 16,
                 downscale: int = 1, zero: bool = True, patch: int = 1):
        super().__init__()
        k = downscale.bit_length() - 1
        if downscale < 1 or 2**k != downscale:
            raise ConfigError(f"hint downscale must be a power of 2, got {downscale}")
        layers: list[nn.Module] = [nn.Conv2d(hint_channels, hidden, 3, padding=1), nn.SiLU()]
        width = hidden
        for _ in range(k):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                       nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.SiLU()]
            width *= 2
        if patch == 1:
            layers.append(zero_conv(width, channels_out, 3, zero))
        else:  # a DiT's patch embedding of the hint: p×p, stride p → tokens
            last = nn.Conv2d(width, channels_out, patch, stride=patch)
            layers.append(zero_init(last) if zero else last)
        self.net = nn.Sequential(*layers)
        self.hint_channels, self.downscale = hint_channels, downscale

    def forward(self, hint: Tensor) -> Tensor:
        return self.net(hint)


class ControlNet(nn.Module):
    """The control branch of a :class:`~difflab.nn.unet.UNet` ``base``: returns the residuals
    (middle (B, mid_channels, h, w), [skip_i (B, skip_channels[i], …)]) to add to the base's.

    ``hint_channels``: channels of the control image (1 for an edge map); ``downscale``: the
    hint's size over the network input's (1 in pixel space; a latent base's factor f);
    ``hidden``: width of the hint encoder's first layers; ``zero``: zero convolutions (False:
    ordinary initialisation of every connecting convolution, the paper's ablation).
    """

    def __init__(self, base: UNet, hint_channels: int = 1, hidden: int = 16,
                 downscale: int = 1, zero: bool = True):
        super().__init__()
        # the trainable copy: UNet.condition (time, label and pooled-context embeddings) and the
        # stem, encoder and middle of UNet.encode, with the base's weights; the decoder is dropped
        branch = copy.deepcopy(base).requires_grad_(True)
        del branch.up, branch.out
        self.copy = branch
        ch0 = base.skip_channels[0] if not base.config.efficient else base.inp.out_channels
        self.hint_encoder = HintEncoder(hint_channels, ch0, hidden, downscale, zero)
        self.zero_convs = nn.ModuleList(zero_conv(c, c, 1, zero) for c in base.skip_channels)
        self.mid_zero = zero_conv(base.mid_channels, base.mid_channels, 1, zero)
        self.hint_channels, self.downscale = hint_channels, downscale

    def check_hint(self, hint: Tensor, x_t: Tensor) -> None:
        """ConfigError (one line) unless ``hint`` is (B, hint_channels, H·d, W·d) for x_t
        (B, C, H, W) and d = ``downscale``."""
        B, _, H, W = x_t.shape
        d = self.downscale
        want = (B, self.hint_channels, H * d, W * d)
        if not isinstance(hint, Tensor) or tuple(hint.shape) != want:
            got = tuple(hint.shape) if isinstance(hint, Tensor) else type(hint).__name__
            raise ConfigError(f"expected a hint of shape {want} (batch, channels, height, "
                              f"width), got {got}")
        if not hint.is_floating_point():
            raise ConfigError(f"expected a floating-point hint, got {hint.dtype}")

    def forward(self, x_t: Tensor, t: Tensor, hint: Tensor, y: Tensor | None = None,
                context: Tensor | None = None, context_mask: Tensor | None = None
                ) -> tuple[Tensor, list[Tensor]]:
        self.check_hint(hint, x_t)
        net = self.copy
        net.check_input(x_t)
        c = net.condition(t, y, context, context_mask)
        h = net.inp(x_t) + self.hint_encoder(hint.to(x_t.dtype))  # x + Z_θz1(c): (B, ch0, H, W)
        residuals = []
        for stage, zero in zip(net.down, self.zero_convs, strict=True):
            h = stage(h, c)  # (B, ch, H/2^ℓ, W/2^ℓ)
            residuals.append(zero(h))  # Z_θz2(F_θc(…)) of this skip
        return self.mid_zero(net.mid(h, c)), residuals


def controlled_forward(base: UNet, control: nn.Module, x_t: Tensor, t: Tensor,
                       hint: Tensor | None = None, scale: float = 1.0, **cond) -> Tensor:
    """ε̂ of the frozen ``base`` with the residuals of ``control`` (a :class:`ControlNet`,
    possibly wrapped by DDP or compiled) times ``scale`` added to its skips and middle. The
    base's encoder runs without gradients when its weights are frozen (cldm does the same)."""
    frozen = not any(p.requires_grad for p in base.inp.parameters())
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
        c = base.condition(t, **cond)
        h, skips = base.encode(x_t, c)
    if hint is not None and scale != 0:
        mid, residuals = control(x_t, t, hint, **cond)
        h = h + scale * mid
        skips = [s + scale * r for s, r in zip(skips, residuals, strict=True)]
    return base.decode(h, skips, c)


class Controlled(nn.Module):
    """ε_θ(x_t, t, hint, **cond): the frozen ``base`` with its ``control`` branch, through the
    class's ``forward_fn`` (:func:`controlled_forward` for a U-Net); ``conditioning_scale``
    multiplies the control's residuals (0: the base alone). The hint is required: a caller that
    forgot it (``difflab eval`` of a ControlNet run) gets a one-line ConfigError rather than the
    base's samples."""

    forward_fn = staticmethod(controlled_forward)

    def __init__(self, base: nn.Module, control: nn.Module, conditioning_scale: float = 1.0):
        super().__init__()
        self.base, self.control = base, control
        self.conditioning_scale = conditioning_scale

    @property
    def config(self):
        return self.base.config

    def forward(self, x_t: Tensor, t: Tensor, hint: Tensor | None = None, **cond) -> Tensor:
        if hint is None:
            raise ConfigError("a ControlNet model needs its hint (hint=…): sample it with "
                              "'difflab sample RUN --hint FILE' or '--hint-from-data N'")
        return self.forward_fn(self.base, self.control, x_t, t, hint, self.conditioning_scale,
                               **cond)


class ControlledUNet(Controlled):
    """A :class:`~difflab.nn.unet.UNet` with a :class:`ControlNet` (:func:`controlled_forward`)."""


# --- the same for a DiT (beyond the paper; PixArt-δ, Chen et al. 2024, does it this way) -------
class DiTControlNet(nn.Module):
    """The control branch of a :class:`~difflab.nn.dit.DiT`: a trainable copy of its first
    ``depth`` blocks (default half of them), fed the base's tokens plus the hint's (a
    :class:`HintEncoder` whose last layer is a zero p×p patch embedding), each block's output
    through a zero-initialised linear layer (D → D) added to the output of the frozen block of
    the same index. Shares the base's conditioning c (t, label, caption embeddings)."""

    def __init__(self, base: nn.Module, hint_channels: int = 1, hidden: int = 16,
                 downscale: int = 1, zero: bool = True, depth: int | None = None):
        super().__init__()
        cfg = base.config
        if cfg.block == "in-context":
            raise ConfigError("no ControlNet for the in-context DiT design (its conditioning "
                              "tokens precede the patches); use adaln-zero, adaln or "
                              "cross-attention")
        n = depth or max(1, len(base.blocks) // 2)
        if not 1 <= n <= len(base.blocks):
            raise ConfigError(f"depth must lie in 1..{len(base.blocks)}, got {n}")
        self.blocks = copy.deepcopy(base.blocks[:n]).requires_grad_(True)
        D = cfg.width
        self.hint_encoder = HintEncoder(hint_channels, D, hidden, downscale, zero,
                                        patch=cfg.patch_size)
        self.zero_linears = nn.ModuleList(nn.Linear(D, D) for _ in range(n))
        if zero:
            for layer in self.zero_linears:
                zero_init(layer)
        self.hint_channels, self.downscale = hint_channels, downscale

    check_hint = ControlNet.check_hint

    def forward(self, x_t: Tensor, tokens: Tensor, c, hint: Tensor) -> list[Tensor]:
        """Residuals (B, N, D) for the first ``depth`` blocks of the base, from its input
        tokens (B, N, D) and conditioning ``c``."""
        self.check_hint(hint, x_t)
        h = tokens + self.hint_encoder(hint.to(x_t.dtype)).flatten(2).transpose(1, 2)
        residuals = []
        for block, zero in zip(self.blocks, self.zero_linears, strict=True):
            h = block(h, c)  # (B, N, D)
            residuals.append(zero(h))
        return residuals


def dit_controlled_forward(base: nn.Module, control: nn.Module, x_t: Tensor, t: Tensor,
                           hint: Tensor | None = None, scale: float = 1.0, **cond) -> Tensor:
    """ε̂ of the frozen DiT ``base`` with the residuals of a :class:`DiTControlNet` times
    ``scale`` added after its first blocks."""
    base.check_input(x_t)
    H, W = x_t.shape[-2:]
    frozen = not any(p.requires_grad for p in base.x_embedder.parameters())
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
        c = base.condition(t, **cond)
        x = base.patchify(x_t)  # (B, N, D)
    residuals = control(x_t, x, c, hint) if hint is not None and scale != 0 else []
    for i, block in enumerate(base.blocks):
        x = block(x, c)
        if i < len(residuals):
            x = x + scale * residuals[i]
    return base.unpatchify(base.final_layer(x, c), H, W)


class ControlledDiT(Controlled):
    """A :class:`~difflab.nn.dit.DiT` with a :class:`DiTControlNet`."""

    forward_fn = staticmethod(dit_controlled_forward)


# --- the registry: which networks can be controlled, and how ------------------------------------
BranchBuilder = Callable[..., nn.Module]
CONTROL_BRANCHES: dict[type, tuple[BranchBuilder, type[Controlled]]] = {
    UNet: (ControlNet, ControlledUNet),
    DiT: (DiTControlNet, ControlledDiT),
}


def control_branch(base: nn.Module, **kwargs) -> nn.Module:
    """The control branch of ``base`` (keywords: those of its builder, e.g. :class:`ControlNet`),
    by the base's class in :data:`CONTROL_BRANCHES`; ConfigError for a network without one."""
    entry = CONTROL_BRANCHES.get(type(base))
    if entry is None:
        raise ConfigError(f"no ControlNet for a {type(base).__name__} base (controllable: "
                          f"{', '.join(k.__name__ for k in CONTROL_BRANCHES)})")
    return entry[0](base, **kwargs)


def controlled(base: nn.Module, control: nn.Module, conditioning_scale: float = 1.0
               ) -> Controlled:
    """The ε-model of ``base`` with its ``control`` branch (the registry's wrapper class)."""
    return CONTROL_BRANCHES[type(base)][1](base, control, conditioning_scale)


def control_forward(base: nn.Module) -> Callable[..., Tensor]:
    """``forward(base, control, x_t, t, hint, scale, **cond) -> ε̂`` for ``base``'s class (the
    training objective calls it with the branch as the backend prepared it)."""
    return CONTROL_BRANCHES[type(base)][1].forward_fn
