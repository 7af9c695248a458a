"""Captions for text-conditional training: templates for the digit datasets, a file for folders.

- Digits and MNIST (:func:`digit_captions`): each sample gets one of :data:`DIGIT_TEMPLATES`
  filled with its class ("a handwritten seven", "the digit 7", …), drawn by a seeded generator:
  the same labels and seed give the same captions; another seed (say, the epoch) gives others.
- A folder of images (:func:`read_captions`, :func:`captions_for`): a file ``captions.csv`` at the
  folder's top, with the header ``file,caption`` and one row per image::

      file,caption
      cats/tabby.jpg,a tabby cat asleep on a sofa
      dogs/rex.png,"a black dog, running"

  ``file`` is the image's path relative to the folder, with ``/`` between parts. Quote a caption
  that holds a comma (standard CSV). An empty caption is allowed and means "no caption": the
  null condition of :mod:`difflab.nn.text_encoder`. Rows for files that are not there are
  ignored; an image without a row is an error.
- At sampling time (:func:`prompt_captions`): a prompt is the caption, unchanged, for every
  sample.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError

CAPTIONS_FILE = "captions.csv"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {d}: the digit ("7"); {w}: its word ("seven"). No article stands before {w} ("a eight").
DIGIT_TEMPLATES = (
    "a handwritten {w}",
    "the digit {d}",
    "number {w}",
    "a picture of the number {d}",
    "the number {w}",
    "a handwritten digit {d}",
    "an image of the digit {w}",
    "{w}",
)


def digit_caption(label: int, template: int = 0) -> str:
    """Template ``template`` of :data:`DIGIT_TEMPLATES` for the digit ``label`` (0..9)."""
    if not 0 <= label <= 9:
        raise ValueError(f"digit label must be in 0..9, got {label}")
    return DIGIT_TEMPLATES[template].format(d=label, w=DIGIT_WORDS[label])


def digit_captions(labels: Sequence[int], seed: int = 0) -> list[str]:
    """One caption per label (ints 0..9 or an int tensor (N,)), the template of each drawn
    uniformly at random with ``numpy.random.default_rng(seed)``."""
    labels = [int(y) for y in labels]
    choice = np.random.default_rng(seed).integers(len(DIGIT_TEMPLATES), size=len(labels))
    return [digit_caption(y, int(k)) for y, k in zip(labels, choice, strict=True)]


def read_captions(folder: str | Path, name: str = CAPTIONS_FILE) -> dict[str, str]:
    """The ``file → caption`` mapping of ``folder/name`` (a CSV with header ``file,caption``)."""
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"no captions file {str(path)!r}: write a CSV with the header file,caption"
        )
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheets add a BOM
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header != ["file", "caption"]:
            raise ConfigError(f"{str(path)!r}: the first line must be file,caption, got {header}")
        captions: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue  # blank line
            if len(row) != 2:
                raise ConfigError(
                    f"{str(path)!r} line {line}: expected 2 fields (file,caption), got {len(row)};"
                    " quote captions that contain commas"
                )
            file = row[0].strip().replace("\\", "/")
            if file in captions:
                raise ConfigError(f"{str(path)!r} line {line}: {file!r} has a caption already")
            captions[file] = row[1].strip()
    return captions


def captions_for(files: Sequence[str | Path], captions: dict[str, str]) -> list[str]:
    """The caption of each of ``files`` (paths relative to the folder, as in captions.csv).

    Raises ValueError naming how many files have no caption and the first of them.
    """
    keys = [Path(f).as_posix() for f in files]
    missing = [k for k in keys if k not in captions]
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(keys)} image(s) have no row in {CAPTIONS_FILE}, "
            f"e.g. {missing[0]!r}"
        )
    return [captions[k] for k in keys]


def prompt_captions(prompt: str, n: int) -> list[str]:
    """The captions for ``n`` samples of one prompt: the prompt itself, n times ("" = ∅)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if n < 0:
        raise ValueError(f"number of samples must be >= 0, got {n}")
    return [prompt.strip()] * n
