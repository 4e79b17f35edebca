"""Tokenize many text pieces fast, with exactly the ids `tokenizer(text, add_special_tokens=False)` gives.

Byte-level BPE tokenizers (GPT-2's pattern, or a Split regex followed by ByteLevel, as most
current models use) split text into words with a regex and encode each word on its own. Words
repeat a great deal, so we split with the same regex (Python's `regex` module, which reads the
same pattern syntax) and encode each distinct word once, with the tokenizer itself. Pieces that
could hold one of the tokenizer's added tokens, long pieces without spaces between words (CJK
text, whose long words seldom repeat), and every piece of a tokenizer of any other shape go
through the tokenizer's own batch encode.
"""

from __future__ import annotations

import json
from itertools import chain

import regex

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
MAX_CACHE = 1 << 20  # distinct words kept; the cache starts over when it is full


def split_pattern(spec: dict) -> str | None:
    """The word-splitting regex of a tokenizer.json, when its pipeline is one we reproduce exactly."""
    if spec.get("normalizer") is not None or (spec.get("model") or {}).get("type") != "BPE":
        return None
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return GPT2_PATTERN
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 2:
        split, byte = pre["pretokenizers"]
        if (split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert")
                and "Regex" in (split.get("pattern") or {}) and byte.get("type") == "ByteLevel"
                and not byte.get("use_regex", True) and not byte.get("add_prefix_space")):
            return split["pattern"]["Regex"]
    return None


class PieceTokenizer:
    def __init__(self, tokenizer):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.tokenizer, self.backend = tokenizer, backend
        self.regex = None
        if backend is not None:
            pattern = split_pattern(json.loads(backend.to_str()))
            if pattern is not None:
                self.regex = regex.compile(pattern)
        added = [t.content for t in (backend.get_added_tokens_decoder().values() if backend else []) if t.content]
        self.added_first = "".join(sorted({t[0] for t in added}))
        self.added = None
        if added and self.regex is not None:
            self.added = regex.compile("|".join(regex.escape(t) for t in sorted(added, key=len, reverse=True)))
        self.cache: dict[str, list[int]] = {}

    def _slow(self, texts: list[str]) -> list[list[int]]:
        if self.backend is None:
            return self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def _words(self, words: list[str]) -> list[list[int]]:
        """Each word's ids, from one pre-tokenized encode (one Encoding per word costs far more)."""
        enc = self.backend.encode(words, is_pretokenized=True, add_special_tokens=False)
        out: list[list[int]] = [[] for _ in words]
        for t, w in zip(enc.ids, enc.word_ids):
            out[w].append(t)
        return out

    def _has_added(self, text: str) -> bool:
        return any(c in text for c in self.added_first) and self.added.search(text) is not None

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self.regex is None:
            return self._slow(texts) if texts else []
        if len(self.cache) > MAX_CACHE:
            self.cache.clear()
        cache = self.cache
        out: list[list[int] | None] = [None] * len(texts)
        words_of: dict[int, list[str]] = {}
        seen: set[str] = set()
        slow = []
        for i, t in enumerate(texts):
            if self.added is not None and self._has_added(t):
                slow.append(i)
                continue
            if len(t) > 32 and t.count(" ") * 10 < len(t):
                slow.append(i)  # no spaces between words (CJK, say): long words that seldom repeat
                continue
            words = self.regex.findall(t)
            if sum(map(len, words)) != len(t):  # the pattern left gaps: not a split we reproduce
                slow.append(i)
                continue
            seen.update(words)
            words_of[i] = words
        missing = [w for w in seen if w not in cache]
        if missing:
            cache.update(zip(missing, self._words(missing)))
        for i, words in words_of.items():
            out[i] = list(chain.from_iterable(map(cache.__getitem__, words)))
        if slow:
            for i, ids in zip(slow, self._slow([texts[i] for i in slow])):
                out[i] = ids
        return out
