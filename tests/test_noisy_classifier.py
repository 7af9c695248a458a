"""The noise-aware classifier f_φ(y | x_t, t) of classifier guidance (ADM §4.1; Weng eq. 24-25):
shapes, uniform start, t-dependence, its gradient for guidance, and on digits: it learns, and
what it can tell falls as the noise grows."""

from __future__ import annotations

import pytest
import torch

from difflab import schedules
from difflab.data.images import digits
from difflab.guidance import classifier_grad
from difflab.nn.noisy_classifier import NoisyClassifier, NoisyClassifierConfig
from difflab.nn.unet_blocks import SelfAttention
from difflab.training.classifier import classifier_accuracy, train_noisy_classifier

SMALL = dict(in_channels=1, model_channels=16, groups=8, channel_mult=(1, 2), num_res_blocks=1)


def perturb_zero_init(model: torch.nn.Module, seed: int = 1, scale: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("attention_pool", [True, False])
@pytest.mark.parametrize("size", [8, 16])
def test_shapes_and_uniform_start(size, attention_pool):
    torch.manual_seed(0)
    net = NoisyClassifier(NoisyClassifierConfig(**SMALL, num_classes=7,
                                                attention_pool=attention_pool))
    x, t = torch.randn(3, 1, size, size), torch.tensor([1, 500, 1000])
    logits = net(x, t)
    assert logits.shape == (3, 7)
    assert torch.equal(logits, torch.zeros(3, 7))  # zero head: the uniform distribution
    perturb_zero_init(net)
    with torch.no_grad():
        a, b = net(x, t), net(x, torch.tensor([2, 2, 2]))
    assert (a - b).abs().amax(dim=1).min() > 1e-5  # conditioned on t


def test_config_checks_and_layout():
    cfg = NoisyClassifierConfig(**{**SMALL, "num_res_blocks": [1, 2]}, attention_resolutions=[2])
    assert cfg.num_res_blocks == (1, 2) and cfg.attention_resolutions == (2,)
    assert cfg.encoder_config().in_channels == 1
    # attention at factor 2 after each of its 2 res blocks, and in the middle
    assert sum(isinstance(m, SelfAttention) for m in NoisyClassifier(cfg).modules()) == 3
    with pytest.raises(ValueError, match="attention_resolutions"):
        NoisyClassifierConfig(**SMALL, attention_resolutions=(8,))
    with pytest.raises(ValueError, match="num_classes"):
        NoisyClassifierConfig(**SMALL, num_classes=1)
    with pytest.raises(ValueError, match="expected input"):
        NoisyClassifier(NoisyClassifierConfig(**SMALL))(torch.zeros(2, 1, 7, 7), torch.ones(2))


def test_gradient_for_classifier_guidance():
    """classifier_grad (the ∇ log f_φ(y | x_t) of eq. 25) works on it, shaped like x_t."""
    torch.manual_seed(0)
    net = perturb_zero_init(NoisyClassifier(NoisyClassifierConfig(**SMALL)))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    with torch.inference_mode():
        g = classifier_grad(net, x, t, torch.tensor([3, 4]))
    assert g.shape == x.shape and g.abs().sum() > 0


def test_learns_digits_and_accuracy_falls_with_noise():
    """Trained a few seconds on noisy digits at t ≤ 400, it is far above chance (0.1) on
    held-out images at small t; at larger t less of x_0 is left (√ᾱ_t shrinks) and accuracy falls,
    to chance at t = T where x_T carries almost nothing of x_0 (ᾱ_T ≈ 4e-5)."""
    train, test = digits("train"), digits("test")
    schedule = schedules.linear(T=1000)
    torch.manual_seed(0)
    net = NoisyClassifier(NoisyClassifierConfig(**SMALL, attention_resolutions=()))
    losses: list[float] = []
    train_noisy_classifier(net, schedule, train.x, train.y, steps=80, batch=128, lr=5e-3,
                           generator=torch.Generator().manual_seed(0), t_max=400,
                           log=lambda step, loss: losses.append(loss))
    assert len(losses) == 80 and not net.training
    assert sum(losses[-10:]) / 10 < 0.6 * losses[0]
    acc = {t: classifier_accuracy(net, schedule, test.x, test.y, t,
                                  generator=torch.Generator().manual_seed(1))
           for t in (1, 300, 1000)}
    assert acc[1] > 0.6
    assert acc[1] > acc[300] + 0.1 > acc[1000] + 0.2
    assert acc[1000] < 0.25


def test_train_argument_checks():
    net = NoisyClassifier(NoisyClassifierConfig(**SMALL))
    s = schedules.linear(T=100)
    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="t_max"):
        train_noisy_classifier(net, s, x, y, steps=1, batch=2, lr=1e-3, t_max=101)
    with pytest.raises(ValueError, match="labels"):
        train_noisy_classifier(net, s, x, y[:3], steps=1, batch=2, lr=1e-3)
