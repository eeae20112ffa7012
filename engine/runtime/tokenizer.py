"""Text -> token id arrays for ONNX text encoders, with the ``tokenizers`` library only.

Serving needs no PyTorch or ``transformers``: the exporter copies the model's
``tokenizer.json`` beside ``model.onnx`` and records ``max_length`` in the manifest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

#: Characters kept per token of ``max_length`` before tokenising (see :meth:`encode`).
CHARS_PER_TOKEN_CAP = 64


class TextTokenizer:
    """Wraps a ``tokenizers.Tokenizer``: pads each batch to its longest text and
    truncates to ``max_length`` tokens (special tokens included).

    Padding and truncation are set once here, whatever ``tokenizer.json`` says (the
    MiniLM file pads everything to 128), so :meth:`encode` is safe to call from many
    threads.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        if max_length < 2:
            raise ValueError(
                f"max_length must be at least 2 (room for special tokens), got {max_length}"
            )
        pad_token, pad_id = _pad_token(tokenizer)
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, length=None)
        self._tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], max_length: int) -> TextTokenizer:
        return cls(Tokenizer.from_file(os.fspath(path)), max_length)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)``, both int64 ``[len(texts), longest]``."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not one str")
        if not texts:
            empty = np.zeros((0, 0), dtype=np.int64)
            return empty, empty.copy()
        # The tokenizer works on the whole string before truncating to max_length tokens:
        # a 4 MB text cost a second and 600 MB. No token is shorter than a character, so
        # CHARS_PER_TOKEN_CAP characters per token leave the kept tokens unchanged for any
        # real text while bounding the work.
        cap = self.max_length * CHARS_PER_TOKEN_CAP
        encodings = self._tokenizer.encode_batch([t[:cap] for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` becomes after truncation, special tokens included."""
        return sum(self._tokenizer.encode(text).attention_mask)


def _pad_token(tokenizer: Tokenizer) -> tuple[str, int]:
    padding = tokenizer.padding
    if padding and padding.get("pad_token") is not None:
        return str(padding["pad_token"]), int(padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<|pad|>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token, token_id
    raise ValueError("tokenizer.json names no padding token ([PAD], <pad>); add one to pad batches")
