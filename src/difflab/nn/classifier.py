"""A small CNN classifier for images, whose penultimate layer is the feature space of FD.

    h = [Conv3×3 → SiLU → Conv3×3 → SiLU] per stage, AvgPool 2× between stages
    h = AdaptiveAvgPool(2×2)(h), flattened                  (B, 4 · channels[-1])
    f = SiLU(W_f h)                                         (B, features)   ← features(x)
    logits = W_c dropout(f)                                 (B, num_classes)

It plays the role Inception-v3 plays for FID (Heusel et al. 2017), trained by difflab's own code
(``scripts/train_classifier.py``) on each built-in dataset, since no pretrained weights can be
downloaded here. It sees clean images only: it is not the noise-aware classifier p_φ(y | x_t, t)
of classifier guidance (Weng eq. 25). No normalisation layers, so train and eval modes differ
only by dropout, and the features of an image never depend on the rest of its batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class ClassifierConfig:
    in_channels: int = 1
    num_classes: int = 10
    channels: tuple[int, ...] = (16, 32, 64)  # one stage each; AvgPool 2× between stages
    features: int = 128  # width of the penultimate (feature) layer
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self) | {"channels": list(self.channels)}

    @classmethod
    def from_dict(cls, d: dict) -> ClassifierConfig:
        return cls(**(d | {"channels": tuple(d["channels"])}))


class Classifier(nn.Module):
    """logits = model(x) for x (B, in_channels, H, W) in [-1, 1]; any H, W ≥ 2^(stages - 1)."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = cfg = config or ClassifierConfig()
        layers: list[nn.Module] = []
        c_in = cfg.in_channels
        for i, c in enumerate(cfg.channels):
            if i > 0:
                layers.append(nn.AvgPool2d(2))
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.SiLU()]
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.SiLU()]
            c_in = c
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.feature = nn.Sequential(nn.Linear(4 * c_in, cfg.features), nn.SiLU())
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.features, cfg.num_classes))

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
        return self.head(self.features(x))  # (B, num_classes)
