"""The maths of CLIP and unCLIP's embedding moves (difflab.contrastive), the small CLIP network
(difflab.nn.clip), and a CLIP run trained end to end on digits (zero-shot above chance)."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.contrastive import MAX_LOGIT_SCALE, info_nce, recall_at_1, slerp, text_diff
from difflab.nn.clip import CLIP, CLIPConfig
from helpers import one_error_line, run_cli


def test_info_nce_equals_a_hand_computed_value():
    """B = 2, D = 2: logits = 2 · [[1, 0.6], [0, 0.8]] = [[2, 1.2], [0, 1.6]]."""
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    e = math.exp
    rows = (-math.log(e(2) / (e(2) + e(1.2))) - math.log(e(1.6) / (e(0) + e(1.6)))) / 2
    cols = (-math.log(e(2) / (e(2) + e(0))) - math.log(e(1.6) / (e(1.2) + e(1.6)))) / 2
    got = info_nce(image, text, torch.tensor(math.log(2.0)))
    assert abs(float(got) - 0.5 * (rows + cols)) < 1e-6


def test_info_nce_clips_the_temperature_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=1)
    big = info_nce(a, b, torch.tensor(10.0))
    assert torch.allclose(big, info_nce(a, b, torch.tensor(MAX_LOGIT_SCALE)))
    assert torch.allclose(info_nce(a, b, torch.tensor(1.0)), info_nce(b, a, torch.tensor(1.0)))
    # perfectly matched, well separated pairs: the loss goes to 0 as the scale grows
    eye = torch.eye(4)
    assert float(info_nce(eye, eye, torch.tensor(MAX_LOGIT_SCALE))) < 1e-3
    with pytest.raises(ValueError, match="equal shape"):
        info_nce(a, b[:4], torch.tensor(1.0))


def test_slerp_endpoints_unit_norm_and_constant_angular_speed():
    g = torch.Generator().manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    theta = torch.arccos((a * b).sum(1))
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    for w in (0.25, 0.5, 0.8):
        s = slerp(a, b, w)
        assert torch.allclose(s.norm(dim=1), torch.ones(6), atol=1e-6)
        assert torch.allclose(torch.arccos((a * s).sum(1).clamp(-1, 1)), w * theta, atol=1e-4)
    assert torch.allclose(slerp(a, a, 0.3), a, atol=1e-6)  # parallel: no 0/0


def test_text_diff_moves_towards_the_caption_direction():
    g = torch.Generator().manual_seed(2)
    img, t0, t1 = (torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
                   for _ in range(3))
    d = torch.nn.functional.normalize(t1 - t0, dim=1)
    assert torch.allclose(text_diff(img, t0, t1, 0.0), img, atol=1e-6)
    sims = [float((text_diff(img, t0, t1, w) * d).sum(1).mean()) for w in (0.0, 0.3, 0.6, 1.0)]
    assert sims == sorted(sims) and abs(sims[-1] - 1) < 1e-5


def test_recall_at_1():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.1, 0.7], [0.0, 0.3, 0.2]])
    match = torch.eye(3, dtype=torch.bool)
    assert float(recall_at_1(sim, match)) == pytest.approx(1 / 3)
    match[1, 2] = True  # query 1's best key also matches
    assert float(recall_at_1(sim, match)) == pytest.approx(2 / 3)


def test_clip_embeddings_are_unit_norm_and_padding_does_not_matter():
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(in_channels=3, image_size=32, width=8, embed_dim=16, text_width=32))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    tokens = torch.randn(3, 6, 384)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]).bool()
    i, t, s = clip(x, tokens, mask)
    assert i.shape == t.shape == (3, 16)
    assert torch.allclose(i.norm(dim=1), torch.ones(3)) and torch.allclose(t.norm(dim=1),
                                                                           torch.ones(3))
    assert abs(s.detach().item() - math.log(1 / 0.07)) < 1e-6
    other = tokens.clone()
    other[~mask] = torch.randn(int((~mask).sum()), 384)  # change only the padding
    assert torch.allclose(clip.encode_text(other, mask), t, atol=1e-5)
    # flattening keeps position: an image and its mirror image differ
    assert not torch.allclose(clip.encode_image(x.flip(-1)), i, atol=1e-3)


def test_train_clip_refuses_other_methods_and_unclip_needs_clip(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train-clip", "--method", "diffusion", "--out", tmp_path / "a")
    assert one_error_line(code, err) and "train-clip trains method clip" in err
    code, _, err = run_cli(capsys, "train", "--preset", "digits-unclip-prior", "--out",
                           tmp_path / "b")
    assert one_error_line(code, err) and "--clip RUN" in err
    code, _, err = run_cli(capsys, "train", "--preset", "digits-unclip-prior", "--clip",
                           tmp_path / "none", "--out", tmp_path / "c")
    assert one_error_line(code, err) and "no such run directory" in err
    code, _, err = run_cli(capsys, "train-clip", "--preset", "digits-clip", "--cond", "none",
                           "--out", tmp_path / "d")
    assert one_error_line(code, err) and "--cond must be text" in err
