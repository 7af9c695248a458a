"""The first stage of latent diffusion: its losses against closed forms and Monte Carlo, vector
quantisation's straight-through gradient and commitment loss, the shapes of every factor f, the
adversarial term's gradients, and a tiny autoencoder that learns."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional

from difflab.autoencoding import (
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
    kl_standard_normal,
    psnr,
)
from difflab.nn.autoencoder import Autoencoder, AutoencoderConfig
from difflab.nn.discriminator import PatchDiscriminator
from difflab.nn.quantizer import VectorQuantizer
from difflab.pipelines.latent import LatentCodec, latent_std
from difflab.training.autoencoder import AutoencoderObjective, AutoencoderTrainer, reconstruct
from difflab.training.diffusion import LRSchedule
from difflab.training.loop import fit


def test_kl_matches_its_monte_carlo_estimate():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(2, 3, 2, 2, generator=g)
    logvar = torch.randn(2, 3, 2, 2, generator=g) * 0.5
    exact = kl_standard_normal(mean, logvar)  # (2,)
    n = 200_000
    std = torch.exp(0.5 * logvar)
    z = mean + std * torch.randn(n, *mean.shape, generator=g)  # (n, 2, 3, 2, 2)
    log_q = -0.5 * (((z - mean) / std) ** 2 + logvar + math.log(2 * math.pi))
    log_p = -0.5 * (z**2 + math.log(2 * math.pi))
    per = (log_q - log_p).flatten(2).sum(2)  # (n, 2)
    estimate, err = per.mean(0), per.std(0) / math.sqrt(n)
    assert torch.all((estimate - exact).abs() < 4 * err)
    assert kl_standard_normal(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_vq_picks_the_nearest_entry_and_passes_the_gradient_straight_through():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3, beta=0.25)
    h = torch.randn(2, 3, 4, 4, requires_grad=True)
    q = vq(h)
    flat = h.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    brute = torch.cdist(flat, vq.codebook.weight.detach()).argmin(1).view(2, 4, 4)
    assert torch.equal(q.codes, brute)
    e = vq.codebook.weight.detach()[q.codes].permute(0, 3, 1, 2)
    torch.testing.assert_close(q.z_q, e)  # forward: the entries
    w = torch.randn_like(h)
    (grad,) = torch.autograd.grad((q.z_q * w).sum(), h)
    torch.testing.assert_close(grad, w)  # backward: straight through to h
    assert int(q.counts.sum()) == 32


def test_vq_loss_is_codebook_plus_beta_commitment_with_the_stop_gradients():
    torch.manual_seed(1)
    beta = 0.25
    vq = VectorQuantizer(8, 2, beta=beta)
    h = torch.randn(1, 2, 3, 3, requires_grad=True)
    q = vq(h)
    e = vq.codebook.weight[q.codes].permute(0, 3, 1, 2)
    mse = functional.mse_loss(h.detach(), e.detach())
    torch.testing.assert_close(q.loss, (1 + beta) * mse)
    q.loss.backward()
    n = h.numel()
    # d/dh: only the commitment term, β · 2 (h − e) / n; d/de: only the codebook term
    torch.testing.assert_close(h.grad, beta * 2 * (h.detach() - e.detach()) / n)
    want = torch.zeros_like(vq.codebook.weight)
    want.index_add_(0, q.codes.flatten(),
                    (2 * (e.detach() - h.detach()) / n).permute(0, 2, 3, 1).reshape(-1, 2))
    torch.testing.assert_close(vq.codebook.weight.grad, want)


def test_perplexity_and_revival_of_dead_entries():
    assert VectorQuantizer.perplexity(torch.tensor([5, 5, 5, 5])) == pytest.approx(4.0)
    assert VectorQuantizer.perplexity(torch.tensor([7, 0, 0, 0])) == pytest.approx(1.0)
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2)
    counts = torch.tensor([10, 10, 0, 0, 0, 0, 0, 0])
    before = vq.codebook.weight.detach().clone()
    moved = torch.tensor([], dtype=torch.long)
    for step in range(400):  # usage of entries 2..7 decays below 0.03/K
        moved = vq.revive(counts, torch.Generator().manual_seed(step))
        if len(moved):
            break
    assert sorted(moved.tolist()) == [2, 3, 4, 5, 6, 7]
    after = vq.codebook.weight.detach()
    assert torch.equal(after[:2], before[:2])  # live entries stay
    near = torch.cdist(after[2:], before[:2]).min(1).values  # next to a live entry
    assert torch.all(near < 0.5 * before.std())  # noise of 0.1·std a coordinate
    assert torch.all(vq.usage[moved] == 1 / 8)


@pytest.mark.parametrize("kind", ["kl", "vq"])
@pytest.mark.parametrize("f", [1, 2, 4, 8])
def test_encode_decode_shapes_for_every_factor(kind, f):
    cfg = AutoencoderConfig(in_channels=3, latent_channels=4, factor=f, channels=8, kind=kind,
                            codebook_size=16)
    ae = Autoencoder(cfg)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    m = ae.encode(x)
    assert m.shape == (2, 8 if kind == "kl" else 4, 16 // f, 16 // f)
    z = ae.latent(m, torch.randn(2, 4, 16 // f, 16 // f))
    assert z.shape == (2, *ae.latent_shape((3, 16, 16)))
    assert ae.decode(z).shape == x.shape
    with pytest.raises(ValueError, match="expected images"):  # wrong channels
        ae.encode(torch.zeros(1, 1, 16, 16))
    if f > 1:
        with pytest.raises(ValueError, match="divisible by"):
            ae.encode(torch.zeros(1, 3, 16 + f // 2, 16))


def test_autoencoder_config_refuses_bad_values():
    with pytest.raises(ValueError, match="factor"):
        AutoencoderConfig(factor=3)
    with pytest.raises(ValueError, match="kind"):
        AutoencoderConfig(kind="vae")


def test_adaptive_weight_is_the_ratio_of_the_gradient_norms():
    w = torch.randn(5, requires_grad=True)
    a, b = torch.randn(5), torch.randn(5)
    rec, gan = (a * w).sum(), (b * w).sum()  # ∇_w = a and b
    lam = adaptive_weight(rec, gan, w)
    assert lam.item() == pytest.approx(a.norm().item() / (b.norm().item() + 1e-4), rel=1e-5)
    assert not lam.requires_grad


def test_hinge_losses_and_psnr_closed_forms():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # ½ (mean(max(0, 1 − [2, .5])) + mean(max(0, 1 + [−2, 0]))) = ½ (0.25 + 0.5)
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.375)
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)
    x = torch.zeros(2, 1, 4, 4)
    assert psnr(x, x + 0.1).tolist() == pytest.approx([10 * math.log10(4 / 0.01)] * 2)


def _trainer(kind="kl", disc=True):
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(in_channels=1, latent_channels=2, factor=2, channels=8,
                                       kind=kind, codebook_size=16))
    d = PatchDiscriminator(1, 8, layers=1) if disc else None
    return AutoencoderTrainer(ae, d, None, disc_weight=0.5)


def test_each_network_gets_the_gradient_of_its_own_loss_only():
    trainer = _trainer()
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    noise = torch.randn(4, 2, 4, 4)
    terms = trainer(x, noise, torch.ones(4))
    terms["loss"].backward()
    got = [p.grad.clone() for p in trainer.disc.parameters()]
    # the discriminator's gradient is that of L_D alone (the generator term does not reach it)
    trainer.zero_grad()
    x_hat = trainer.ae.decoder(trainer.ae.latent(trainer.ae.encode(x), noise)).detach()
    hinge_d_loss(trainer.disc(x), trainer.disc(x_hat)).backward()
    for a, p in zip(got, trainer.disc.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)
    assert terms["d_weight"].item() > 0
    # before disc_start (factor 0) the discriminator gets no gradient and λ is not computed
    trainer.zero_grad()
    terms = trainer(x, noise, torch.zeros(4))
    terms["loss"].backward()
    assert all(float(p.grad.abs().sum()) == 0 for p in trainer.disc.parameters())
    assert terms["d_weight"].item() == 0


def _digits16() -> torch.Tensor:
    from difflab.data import images

    return images.digits("train", size=16).x[:256]


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_a_tiny_autoencoder_learns_to_reconstruct(kind):
    x = _digits16()
    trainer = _trainer(kind, disc=False)
    obj = AutoencoderObjective(trainer, x, batch=32, lr=LRSchedule(3e-3, 60, 5, "constant"),
                               ema_decay=0.0)
    ae = trainer.ae

    def error() -> float:
        with torch.no_grad():
            return float((reconstruct(ae, x) - x).abs().mean())

    before = error()
    fit(obj, steps=60, generator=torch.Generator().manual_seed(0))
    after = error()
    assert after < 0.6 * before, (before, after)


def test_the_latent_scale_makes_unit_variance_latents():
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(in_channels=1, latent_channels=3, factor=2, channels=8))
    with torch.no_grad():  # latents far from unit variance
        ae.encoder.conv_out.weight.mul_(7.0)
    x = _digits16()
    std = latent_std(ae, x, torch.Generator().manual_seed(0))
    assert not 0.8 < std < 1.25
    codec = LatentCodec(ae, 1.0 / std)
    with torch.no_grad():
        z = codec.encode(x, torch.randn(len(x), *codec.latent_shape((1, 16, 16))))
    assert z.std().item() == pytest.approx(1.0, abs=0.05)
    torch.testing.assert_close(codec.decode(z), ae.decode(z * std))
