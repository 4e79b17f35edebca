"""The word-cache tokenizer gives exactly the ids of the tokenizer's own encode."""

from __future__ import annotations

import random

from data_helpers import R, tokenizer
from megatron_hy.data.fasttok import GPT2_PATTERN, PieceTokenizer

TRICKY = ["", " ", "  \n\n  ", "Hello world", " leading space", "trailing  ", "tabs\tand\r\nCRLF\n",
          "numbers 12345 and 3.14159", "it's they're we've I'm you'll he'd", "emoji 🚀🏳️‍🌈 mixed",
          "中文没有空格的长句子,还有标点。", "日本語とEnglish", "code: def f(x):\n    return x**2  # comment",
          "a\u2028b\u00a0c\u200bd\ufeffe", "x" * 300, "abc " * 100, "<not a token> <think:", "'''quotes'''",
          f"text with a control token {R.eos} inside", f"{R.think}reasoning{R.think_end}"]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcdefghij ABC 0123 \n\t.,!?'’\"中文字符🙂é<>-_"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(n)]


def reference(tok, texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_stand_in_tokenizer_fast_path_is_exact():
    tok = tokenizer()
    pt = PieceTokenizer(tok)
    assert pt.regex is not None and pt.regex.pattern == GPT2_PATTERN
    texts = TRICKY + random_texts(500)
    assert pt.encode(texts) == reference(tok, texts)
    assert pt.encode(texts) == reference(tok, texts)  # again, from the cache


def test_split_then_byte_level_tokenizers_use_their_own_pattern():
    """The shape of most current tokenizers (a Split regex, then ByteLevel without its regex)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(TRICKY * 5 + random_texts(200, 1), trainers.BpeTrainer(
        vocab_size=400, special_tokens=[R.eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    pt = PieceTokenizer(tok)
    assert pt.regex is not None and pt.regex.pattern == pattern
    texts = TRICKY + random_texts(500, 2)
    assert pt.encode(texts) == reference(tok, texts)


def test_other_pipelines_fall_back_to_the_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.normalizer = normalizers.NFKC()
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(TRICKY, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    pt = PieceTokenizer(tok)
    assert pt.regex is None
    assert pt.encode(TRICKY) == reference(tok, TRICKY)
