"""difflab.data.captions: digit templates, captions.csv for image folders, prompts."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from difflab.data.captions import (
    DIGIT_TEMPLATES,
    DIGIT_WORDS,
    captions_for,
    digit_caption,
    digit_captions,
    prompt_captions,
    read_captions,
)


def _named_digits(caption: str) -> set[int]:
    """Every digit a caption names, as a numeral or as a word."""
    words = re.findall(r"[a-z]+|\d", caption)
    return {int(w) for w in words if w.isdigit()} | {
        DIGIT_WORDS.index(w) for w in words if w in DIGIT_WORDS
    }


def test_every_template_names_its_class_and_no_other() -> None:
    assert len(DIGIT_TEMPLATES) >= 5
    for k in range(10):
        captions = [digit_caption(k, j) for j in range(len(DIGIT_TEMPLATES))]
        assert len(set(captions)) == len(captions)  # the templates differ
        for c in captions:
            assert _named_digits(c) == {k}, c
            assert not re.search(r"\ba [aeiou]", c), c  # no "a eight"
    assert digit_caption(7, 0) == "a handwritten seven" and digit_caption(7, 1) == "the digit 7"


def test_digit_captions_are_seeded_and_cover_classes_and_templates() -> None:
    labels = torch.arange(1000) % 10
    a, b, c = digit_captions(labels, seed=0), digit_captions(labels, seed=0), digit_captions(
        labels, seed=1
    )
    assert a == b and a != c and len(a) == 1000
    assert [_named_digits(x) for x in a] == [{int(y)} for y in labels]
    # template of each caption: every one is drawn, about uniformly (1000/8 = 125 each)
    used = Counter(
        next(j for j in range(len(DIGIT_TEMPLATES)) if digit_caption(int(y), j) == x)
        for x, y in zip(a, labels, strict=True)
    )
    assert set(used) == set(range(len(DIGIT_TEMPLATES)))
    assert min(used.values()) > 0.5 * 1000 / len(DIGIT_TEMPLATES)
    assert digit_captions([3, 3], seed=5) == digit_captions(torch.tensor([3, 3]), seed=5)
    with pytest.raises(ValueError, match="digit label must be in 0..9, got 10"):
        digit_captions([10])


def _write(folder: Path, text: str) -> None:
    (folder / "captions.csv").write_text(text, encoding="utf-8")


def test_read_captions_and_lookup(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "\ufefffile,caption\n"  # a spreadsheet's byte-order mark
        'cats/tabby.jpg,"a tabby cat, asleep"\n'
        "\n"
        "dogs\\rex.png, a black dog \n"
        "empty.png,\n"
        "gone.png,an image that was deleted\n",
    )
    caps = read_captions(tmp_path)
    assert caps["cats/tabby.jpg"] == "a tabby cat, asleep" and caps["dogs/rex.png"] == "a black dog"
    assert caps["empty.png"] == ""  # no caption: the null condition
    files = [Path("dogs") / "rex.png", "cats/tabby.jpg", "empty.png"]
    assert captions_for(files, caps) == ["a black dog", "a tabby cat, asleep", ""]
    missing = r"2 of 3 image\(s\) have no row in captions.csv, e.g. 'a.png'"
    with pytest.raises(ValueError, match=missing):
        captions_for(["a.png", "cats/tabby.jpg", "b/c.png"], caps)


def test_captions_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no captions file .*header file,caption"):
        read_captions(tmp_path)
    _write(tmp_path, "name,text\na.png,x\n")
    with pytest.raises(ValueError, match="first line must be file,caption"):
        read_captions(tmp_path)
    _write(tmp_path, "file,caption\na.png,x\na.png,y\n")
    with pytest.raises(ValueError, match="line 3: 'a.png' has a caption already"):
        read_captions(tmp_path)
    _write(tmp_path, "file,caption\na.png,a cat, asleep\n")
    with pytest.raises(ValueError, match="line 2: expected 2 fields .* quote captions"):
        read_captions(tmp_path)


def test_prompt_captions() -> None:
    assert prompt_captions(" a handwritten seven ", 3) == ["a handwritten seven"] * 3
    assert prompt_captions("", 2) == ["", ""] and prompt_captions("x", 0) == []
    with pytest.raises(ValueError, match="must be >= 0"):
        prompt_captions("x", -1)
    with pytest.raises(TypeError, match="prompt must be a str"):
        prompt_captions(["x"], 1)
