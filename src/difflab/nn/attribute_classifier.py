"""A small CNN that reads several categorical attributes of an image at once (one softmax head
per attribute), whose penultimate layer is also a feature space for FD.

    h = [Conv3×3 → SiLU → Conv3×3 → SiLU] per stage, AvgPool 2× between stages
    h = AdaptiveAvgPool(pool × pool)(h), flattened          (B, pool² · channels[-1])
    f = SiLU(W_f h)                                         (B, features)   ← features(x)
    logits_j = W_j dropout(f)  for each attribute j          (B, heads[j])

The same body as :class:`difflab.nn.classifier.Classifier`, but it keeps a ``pool`` × ``pool``
map before the feature layer (not 2 × 2), since its attributes include where things are (the
shapes dataset's slots are ordered left to right or top to bottom). The heads are one linear
layer whose outputs are cut into ``heads``; what each attribute means is the data's business
(:mod:`difflab.data.shapes_eval`). No normalisation layers: an image's outputs never depend on
the rest of its batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class AttributeClassifierConfig:
    in_channels: int = 3
    heads: tuple[int, ...] = (3, 3)  # classes of each attribute
    channels: tuple[int, ...] = (16, 32, 64)  # one stage each; AvgPool 2× between stages
    pool: int = 4  # side of the map kept before the feature layer
    features: int = 128  # width of the penultimate (feature) layer
    dropout: float = 0.1
    label_head: int = 0  # the head whose classes are the data's labels y (label_logits)

    def to_dict(self) -> dict:
        return asdict(self) | {"channels": list(self.channels), "heads": list(self.heads)}

    @classmethod
    def from_dict(cls, d: dict) -> AttributeClassifierConfig:
        return cls(**(d | {"channels": tuple(d["channels"]), "heads": tuple(d["heads"])}))


class AttributeClassifier(nn.Module):
    """logits = model(x), (B, sum(heads)), for x (B, in_channels, H, W) in [-1, 1]."""

    def __init__(self, config: AttributeClassifierConfig | None = None):
        super().__init__()
        self.config = cfg = config or AttributeClassifierConfig()
        layers: list[nn.Module] = []
        c_in = cfg.in_channels
        for i, c in enumerate(cfg.channels):
            if i > 0:
                layers.append(nn.AvgPool2d(2))
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.SiLU()]
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.SiLU()]
            c_in = c
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(cfg.pool), nn.Flatten())
        self.feature = nn.Sequential(nn.Linear(cfg.pool**2 * c_in, cfg.features), nn.SiLU())
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.features, sum(cfg.heads)))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (B, features): the space in which FD is measured."""
        min_size = 2 ** (len(self.config.channels) - 1)
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or min(x.shape[-2:]) < min_size:
            raise ValueError(
                f"expected images (B, {self.config.in_channels}, H, W) with H, W ≥ {min_size}, "
                f"got shape {tuple(x.shape)}"
            )
        return self.feature(self.body(x))  # (B, features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, sum(heads))

    def split(self, logits: Tensor) -> tuple[Tensor, ...]:
        """The logits (B, sum(heads)) cut into one (B, heads[j]) per attribute."""
        return logits.split(list(self.config.heads), dim=-1)

    def predict(self, x: Tensor) -> Tensor:
        """The most likely class of every attribute: int64 (B, len(heads))."""
        return torch.stack([h.argmax(-1) for h in self.split(self(x))], dim=-1)

    def label_logits(self, x: Tensor) -> Tensor:
        """The logits (B, heads[label_head]) of the attribute that is the data's label."""
        return self.split(self(x))[self.config.label_head]
