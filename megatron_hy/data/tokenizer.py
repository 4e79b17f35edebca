"""A small stand-in for Hy3's tokenizer (the real one ships with the model and cannot be downloaded).

512 entries: Hy3's release and preview control tokens (ids 0..41; pad, BOS and eos of the chosen
set are 0, 1 and 2, as the tiny checkpoints' generation_config says), the 256 byte-level tokens,
and byte-pair merges learned from a fixed text, so that multi-byte tokens and merge boundaries are
exercised. Saved as tokenizer.json + tokenizer_config.json with a chat template written from the
documented rules of Hy3's chat_template.jinja (see chat_template.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import Hy3Error
from .chat_template import template_for
from .tokens import get_variant, PREVIEW, RELEASE

SIZE = 512

# Fixed text the merges are learned from; changing it changes every token id.
CORPUS = """\
The user is asking for the result of 1 + 1. In basic decimal arithmetic, 1 plus 1 equals 2.
You are a helpful assistant. The current time is 2026-01-01 13:26:12 Thursday.
Seawater is salty because rivers carry dissolved salts and minerals from rocks into the ocean;
when the water evaporates, the salt stays behind, so the sea gets saltier over time.
To solve the quadratic equation x^2 - 5x + 6 = 0, factor it as (x - 2)(x - 3) = 0, so x = 2 or x = 3.
Let me think about this step by step. First, I need to understand the question and then answer it.
def add(a, b):
    return a + b
print(add(1, 2))
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
The weather in Paris is 21 degrees and sunny, with a light wind from the west.
量子计算是一种利用量子力学原理进行计算的新型计算范式。太阳系有八颗行星。你好,世界!
Training data should be formatted as a list of messages with roles system, user and assistant.
"""


def special_tokens(first: str = "release") -> list[str]:
    """Both token sets, the chosen one first so its pad, BOS and eos get ids 0, 1, 2."""
    sets = [RELEASE, PREVIEW] if first == "release" else [PREVIEW, RELEASE]
    out = []
    for ts in sets:
        head = [ts.pad, ts.bos, ts.eos]
        out += head + [t for t in ts.all() if t not in head]
    return out


def build_standin(variant: str = "release"):
    """The `tokenizers.Tokenizer` (byte-level BPE plus Hy3's control tokens), built deterministically."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=SIZE, special_tokens=special_tokens(variant),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([line for line in CORPUS.splitlines()] * 8, trainer)
    if tok.get_vocab_size() != SIZE:
        raise RuntimeError(f"stand-in tokenizer has {tok.get_vocab_size()} entries, expected {SIZE}")
    return tok


def write_standin_tokenizer(root: Path, vocab_size: int = SIZE, variant: str = "release") -> Path:
    """Write tokenizer.json and tokenizer_config.json (with the chat template) into `root`.

    `vocab_size` is the model's embedding size; it must be at least the tokenizer's 512 entries.
    """
    ts = get_variant(variant)
    if vocab_size < SIZE:
        raise Hy3Error(f"the stand-in tokenizer needs a vocabulary of at least {SIZE}, the model has {vocab_size} "
                       "(hy3 make-tiny: --vocab 512 or more, or --no-tokenizer)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    build_standin(variant).save(str(root / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": ts.bos, "eos_token": ts.eos, "pad_token": ts.pad,
        "add_bos_token": False, "add_eos_token": False,
        "model_max_length": 262144,
        "clean_up_tokenization_spaces": False,
        "chat_template": template_for(ts),
    }
    (root / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    return root


def write_standin_model_dir(root: Path, variant: str = "release") -> Path:
    """Tokenizer plus the minimal config.json that ms-swift needs to build a processor (no weights)."""
    root = write_standin_tokenizer(root, SIZE, variant)
    ts = get_variant(variant)
    vocab = build_standin(variant).get_vocab()
    config = {"architectures": ["HYV3ForCausalLM"], "model_type": "hy_v3", "vocab_size": SIZE,
              "bos_token_id": vocab[ts.bos], "eos_token_id": vocab[ts.eos], "pad_token_id": vocab[ts.pad],
              "max_position_embeddings": 262144, "torch_dtype": "bfloat16"}
    (root / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return root
