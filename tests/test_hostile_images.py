"""Image files a folder dataset meets in the wild (issue 18): damaged, not images at all,
decompression bombs (refused from their header, never decoded) and odd modes (CMYK, 16-bit
grey, palette with transparency, alpha), each skipped and counted in one warning or read with
the right pixel values."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difflab.data import images
from difflab.data.images import MAX_PIXELS, image_folder


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims ``width`` × ``height`` grey pixels and holds almost none of them."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    root.mkdir()
    # readable, in odd modes; 8×8, one value each (x = 2·v/255 − 1 once read)
    Image.new("L", (8, 8), 64).save(root / "grey.png")
    Image.fromarray(np.full((8, 8), 128 * 257, np.uint16)).save(root / "grey16.png")  # → 128
    Image.new("CMYK", (8, 8), (0, 0, 0, 255)).save(root / "cmyk.tif")  # black
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0] * 256)  # index 0 black, but transparent: white
    palette.save(root / "palette.png", transparency=0)
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(root / "rgba.png")  # transparent → white
    Image.new("LA", (8, 8), (0, 255)).save(root / "la.png")  # opaque black
    Image.new("1", (8, 8), 1).save(root / "bilevel.png")  # white
    # not readable
    good = (root / "grey.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "text.png").write_text("this is not an image")
    (root / "empty.jpg").write_bytes(b"")
    png_header_only(root / "bomb.png", 100_000, 100_000)  # past Pillow's own limit
    png_header_only(root / "huge.png", 9_000, 9_000)  # under Pillow's limit, over ours
    return root


EXPECTED = {"grey.png": 64, "grey16.png": 128, "cmyk.tif": 0, "palette.png": 255,
            "rgba.png": 255, "la.png": 0, "bilevel.png": 255}


def test_odd_modes_read_right_and_broken_files_are_skipped_and_counted(folder):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = image_folder(folder, size=8, channels=1, split="all", test_fraction=0.0)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages  # one warning for all (no Pillow bomb warning)
    assert "skipped 5 unreadable file(s) of 12" in messages[0]
    assert f"2 of them over {MAX_PIXELS} pixels" in messages[0]
    assert sorted(data.files) == sorted(EXPECTED)
    for name, x in zip(data.files, data.x, strict=True):
        value = round((x.mean().item() + 1) * 255 / 2)
        assert value == EXPECTED[name], name
        assert x.max().item() == x.min().item(), name


def test_a_decompression_bomb_is_refused_from_its_header(folder, monkeypatch):
    """Never decoded: refusing it takes no memory for its pixels (here: 10^10 of them)."""
    def no_decoding(*args, **kwargs):
        raise AssertionError("a bomb was decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    for name, size in (("bomb.png", "larger than"), ("huge.png", "9000×9000")):
        with pytest.raises(images.RefusedImageError, match=size):
            images._read_image(folder / name, 8, 1)


def test_only_broken_files_is_one_line_error(tmp_path):
    from difflab.errors import ConfigError

    (tmp_path / "a.png").write_text("nope")
    png_header_only(tmp_path / "b.png", 100_000, 100_000)
    with pytest.warns(UserWarning, match="skipped 2"), \
            pytest.raises(ConfigError, match="no readable images"):
        image_folder(tmp_path, size=8)
