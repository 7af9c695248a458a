"""A perceptual distance in the feature space of difflab's own classifier: a stand-in for LPIPS
(Zhang et al. 2018), whose VGG/AlexNet weights cannot be downloaded here.

LPIPS compares unit-normalised activations of a pretrained network layer by layer,

    d(x, x̂) = Σ_l mean_{h,w} ‖w_l ⊙ (φ̂_l(x) − φ̂_l(x̂))‖²,   φ̂ = φ / ‖φ‖ over channels,

with learned per-channel weights w_l ≥ 0. Here φ_l are the activations after each convolution of
the committed classifier of the dataset (the FD classifier; for shapes the attribute classifier),
trained on clean images of that dataset only, and w_l = 1/√L for the L layers (the sum becomes
a mean over layers, so d lies in [0, 4]): LPIPS's "baseline" variant without its learned linear
layer.
It is much weaker than LPIPS on natural images; on digits and MNIST it rewards strokes the
classifier finds recognisable. The classifier is frozen.
"""

from __future__ import annotations

from torch import Tensor, nn


class PerceptualDistance(nn.Module):
    """d(x, x̂) (B,) of images (B, C, H, W), in the activations of ``classifier.body`` (the
    convolution stages of a :class:`~difflab.nn.classifier.Classifier` or an
    :class:`~difflab.nn.attribute_classifier.AttributeClassifier`)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.body = classifier.body
        self.requires_grad_(False).eval()

    def layers(self, x: Tensor) -> list[Tensor]:
        """The activations after each convolution (each (B, c_l, H_l, W_l))."""
        out = []
        h = x
        for m in self.body:
            h = m(h)
            if isinstance(m, nn.SiLU):
                out.append(h)
        return out

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:  # (B, C, H, W) twice → (B,)
        d = x.new_zeros(x.shape[0])
        pairs = list(zip(self.layers(x), self.layers(x_hat), strict=True))
        for a, b in pairs:
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = d + (a - b).pow(2).sum(1).mean(dim=(1, 2))
        return d / len(pairs)

    def train(self, mode: bool = True) -> PerceptualDistance:  # frozen: always in eval mode
        return super().train(False)


__all__ = ["PerceptualDistance"]
