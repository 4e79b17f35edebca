"""The stand-in tokenizer: small, deterministic, knows every Hy3 control token as one id."""

from __future__ import annotations

import json

import pytest

from data_helpers import PREVIEW, RELEASE, tokenizer
from megatron_hy.data.tokenizer import SIZE, build_standin, write_standin_tokenizer
from megatron_hy.errors import Hy3Error


def test_vocabulary_fits_the_tiny_model_and_is_deterministic():
    a, b = build_standin(), build_standin()
    assert a.get_vocab_size() == SIZE <= 512
    assert a.to_str() == b.to_str()


@pytest.mark.parametrize("ts", [RELEASE, PREVIEW], ids=["release", "preview"])
def test_every_control_token_is_one_id(ts):
    tok = tokenizer()
    for t in ts.all():
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
        assert len(tok(f"a{t}b", add_special_tokens=False)["input_ids"]) == 3, t


def test_text_has_merges_and_round_trips():
    tok = tokenizer()
    text = "The user is asking for the result. 你好,世界! def add(a, b):\n    return a + b"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(text.encode()), "byte-pair merges should make text shorter than its bytes"
    assert tok.decode(ids) == text


def test_pad_bos_eos_match_the_tiny_checkpoint_generation_config(tmp_path):
    for variant, ts in (("release", RELEASE), ("preview", PREVIEW)):
        root = write_standin_tokenizer(tmp_path / variant, 512, variant)
        vocab = json.loads((root / "tokenizer.json").read_text())["model"]["vocab"]
        assert [vocab[ts.pad], vocab[ts.bos], vocab[ts.eos]] == [0, 1, 2]
        cfg = json.loads((root / "tokenizer_config.json").read_text())
        assert (cfg["bos_token"], cfg["eos_token"]) == (ts.bos, ts.eos)
        assert ts.reasoning_mode in cfg["chat_template"]


def test_larger_model_vocabulary_is_fine_smaller_is_an_error(tmp_path):
    write_standin_tokenizer(tmp_path / "big", 120832)
    with pytest.raises(Hy3Error, match="at least 512"):
        write_standin_tokenizer(tmp_path / "small", 256)


def test_tiny_checkpoint_ships_the_stand_in_tokenizer(tiny_inner):
    from megatron_hy.data.encode import load_tokenizer

    tok = load_tokenizer(tiny_inner)
    assert tok.bos_token == RELEASE.bos and tok.bos_token_id == 1 and tok.eos_token_id == 2
