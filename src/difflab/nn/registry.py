"""The kinds of network by name: ``MODELS[name](**kwargs) -> nn.Module``.

A builder takes plain keyword arguments (numbers, tuples, flags: never a config object, since
``nn`` sits below ``config``) and returns an initialised network; it draws its initial weights
from torch's global RNG, which the caller seeds. :mod:`difflab.build.model` maps a run's config
to these keywords; the config's ``model`` key names the kind ("auto": ``AUTO`` for the data).

Adding a network (a DiT, say) is a file in ``nn/`` and one entry here::

    @register_model("dit", data="images")
    def dit(**config) -> nn.Module:
        return DiT(DiTConfig(**config))

plus its keywords in :mod:`difflab.build.model` and a preset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .mlp import MLPDenoiser
from .unet import UNet, UNetConfig

Builder = Callable[..., nn.Module]
DATA_KINDS = ("points", "images")  # x of shape (B, D), or (B, C, H, W)

MODELS: dict[str, Builder] = {}
MODEL_DATA: dict[str, str] = {}  # the kind of data each network takes, one of DATA_KINDS
AUTO = {"points": "mlp", "images": "unet"}  # what model "auto" builds for each kind of data


def register_model(name: str, *, data: str) -> Callable[[Builder], Builder]:
    """Decorator: enter ``builder`` in ``MODELS`` as ``name``, for ``data`` ("points" or
    "images")."""
    if data not in DATA_KINDS:
        raise ValueError(f"data must be one of {', '.join(DATA_KINDS)}, got {data!r}")

    def register(builder: Builder) -> Builder:
        if name in MODELS or name == "auto":
            raise ValueError(f"model kind {name!r} is already registered")
        MODELS[name] = builder
        MODEL_DATA[name] = data
        return builder

    return register


@register_model("mlp", data="points")
def mlp(*, dim: int = 2, hidden: int = 128, depth: int = 3, t_dim: int = 64,
        learn_sigma: bool = False, num_classes: int = 0) -> nn.Module:
    """:class:`~difflab.nn.mlp.MLPDenoiser` for points of ``dim`` coordinates; with
    ``learn_sigma`` it outputs [ε̂, v_raw] (2·dim values, Weng eq. 23)."""
    return MLPDenoiser(dim=dim, hidden=hidden, depth=depth, t_dim=t_dim,
                       out_dim=2 * dim if learn_sigma else dim, num_classes=num_classes)


@register_model("unet", data="images")
def unet(**config: Any) -> nn.Module:
    """:class:`~difflab.nn.unet.UNet`; the keywords are the fields of
    :class:`~difflab.nn.unet.UNetConfig`."""
    return UNet(UNetConfig(**config))


@register_model("dit", data="images")
def dit(**config: Any) -> nn.Module:
    """:class:`~difflab.nn.dit.DiT`, the diffusion transformer (Peebles & Xie 2023); the keywords
    are the fields of :class:`~difflab.nn.dit.DiTConfig`."""
    from .dit import DiT, DiTConfig

    return DiT(DiTConfig(**config))
