"""A word-level tokenizer for small CLIP text towers (the toy CLIP of the phantom world).

open_clip's BPE vocabulary has 49,408 entries: its embedding table alone would be larger than the
whole toy model. The phantom captions use a few hundred words, so the toy CLIP reads words from a
closed vocabulary stored in its checkpoint; unknown words map to ``<unk>`` (a nonsense prompt is then
a string of ``<unk>``, which the model has learned nothing about).

The ids follow open_clip's conventions so that its ``TextTransformer`` works unchanged: 0 pads,
every sequence starts with ``<sot>`` and ends with ``<eot>``, and ``<eot>`` has the highest id (the
text tower pools at the arg-max token).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

__all__ = ["WordTokenizer"]

_WORD = re.compile(r"[a-z0-9]+")
_SPECIAL_HEAD = ["<pad>", "<unk>", "<sot>"]
_EOT = "<eot>"


class WordTokenizer:
    """Lower-cases, splits on non-alphanumerics, looks words up; ``(B, context_length)`` ids."""

    def __init__(self, words: Sequence[str], context_length: int = 32):
        words = [w for w in words if w not in (*_SPECIAL_HEAD, _EOT)]
        if len(set(words)) != len(words):
            raise ValueError("WordTokenizer: the vocabulary has duplicate words")
        self.vocab: list[str] = [*_SPECIAL_HEAD, *words, _EOT]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context_length = int(context_length)
        self.pad_id, self.unk_id, self.sot_id = 0, 1, 2
        self.eot_id = len(self.vocab) - 1

    @classmethod
    def from_texts(cls, texts: Iterable[str], extra_words: Iterable[str] = (), context_length: int = 32):
        """Build the vocabulary from a corpus (sorted, so the ids do not depend on its order)."""
        words = set(extra_words)
        for t in texts:
            words.update(_WORD.findall(t.lower()))
        return cls(sorted(words), context_length=context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def words(self, text: str) -> list[str]:
        """The words of ``text`` as the tokenizer sees them (unknown ones as ``<unk>``)."""
        return [w if w in self.index else "<unk>" for w in _WORD.findall(text.lower())]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        n = int(context_length or self.context_length)
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.index.get(w, self.unk_id) for w in _WORD.findall(text.lower())][: n - 2]
            ids = [self.sot_id, *ids, self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def to_config(self) -> dict:
        """Plain data for a checkpoint (``WordTokenizer.from_config`` reads it back)."""
        return {"type": "word", "vocab": self.vocab[3:-1], "context_length": self.context_length}

    @classmethod
    def from_config(cls, cfg: dict) -> WordTokenizer:
        if cfg.get("type") != "word":
            raise ValueError(f"not a word tokenizer config: type={cfg.get('type')!r}")
        return cls(cfg["vocab"], context_length=cfg.get("context_length", 32))

    def __repr__(self) -> str:
        return f"WordTokenizer({self.vocab_size} ids, context_length={self.context_length})"
