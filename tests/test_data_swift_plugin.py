"""The ms-swift plugin, imported as `--custom_register_path` does and run through ms-swift's own code."""

from __future__ import annotations

import json
import logging
import types

import pytest

from data_helpers import PREVIEW, R, conv, encoder, load_plugin, swift_template, tokenizer, write_jsonl
from test_data_encode import ALL_ROWS, HIGH, MULTI


@pytest.mark.parametrize("loss_scale,mode", [("default", "all"), ("last_round", "last")])
def test_plugin_template_encode_yields_our_ids_and_labels(loss_scale, mode):
    tpl = swift_template("hy3", loss_scale=loss_scale)
    enc = encoder(loss_mode=mode)
    for row in ALL_ROWS:
        theirs = tpl.encode(row, return_length=True)
        ours, = enc.encode(conv(row))
        assert theirs["input_ids"] == ours.input_ids and theirs["labels"] == ours.labels
        assert theirs["lengths"] == [len(ours)]


def test_plugin_honors_per_row_effort_and_reasoning_where_hy_v3_does_not():
    text = tokenizer().decode(swift_template("hy3").encode(HIGH)["input_ids"])
    assert "reasoning_effort:high" in text
    assert text.endswith(R.assistant + R.think + "The user asks for 1 + 1, which is 2." + R.think_end + "1+1=2" + R.eos)


def test_preview_plugin_template():
    tpl = swift_template("hy3_preview", variant="preview")
    ours, = encoder("preview").encode(conv(MULTI))
    assert tpl.encode(MULTI)["input_ids"] == ours.input_ids
    assert tokenizer("preview").decode(ours.input_ids).endswith(PREVIEW.think + "R3" + PREVIEW.think_end + "A3"
                                                                + PREVIEW.eos)


def test_rows_without_effort_take_the_template_wide_effort(monkeypatch):
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    assert "reasoning_effort:no_think" in tokenizer().decode(swift_template("hy3").encode(row)["input_ids"])
    monkeypatch.setenv("REASONING_EFFORT", "low")  # ms-swift's own template-wide setting
    assert "reasoning_effort:low" in tokenizer().decode(swift_template("hy3").encode(row)["input_ids"])


def test_invalid_rows_and_unsupported_loss_scales_are_refused():
    bad = {"reasoning_effort": "medium", "messages": HIGH["messages"]}
    with pytest.raises(ValueError, match="reasoning_effort must be one of"):
        swift_template("hy3").encode(bad)
    with pytest.raises(ValueError, match="supports --loss_scale default or last_round"):
        swift_template("hy3", loss_scale="ignore_empty_think").encode(HIGH)


def test_inference_prompts_are_ms_swift_hy_v3s():
    row = {"messages": HIGH["messages"][:2]}
    for t in ("hy3", "hy_v3"):
        swift_template(t)  # registers the plugin for hy3
    a, b = swift_template("hy3"), swift_template("hy_v3")
    a.set_mode("transformers")
    b.set_mode("transformers")
    assert a.encode(row)["input_ids"] == b.encode(row)["input_ids"]


def test_ms_swift_dataset_loader_drops_reasoning_so_encode_first(tmp_path):
    """Why `hy3 data encode --swift-dataset` exists: ms-swift's loader strips the fields."""
    from swift.dataset import load_dataset

    load_plugin()
    path = write_jsonl(tmp_path / "rows.jsonl", [HIGH])
    ds, _ = load_dataset(str(path), load_from_cache_file=False)
    row = ds[0]
    assert "reasoning_effort" not in row
    assert all("reasoning_content" not in m for m in row["messages"])
    plugin = load_plugin()
    plugin.Hy3RowsMixin._warned = False
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    plugin.logger.addHandler(handler)
    try:
        swift_template("hy3").encode(row)
    finally:
        plugin.logger.removeHandler(handler)
    assert any("drops reasoning_effort and reasoning_content" in m for m in messages)


@pytest.mark.parametrize("pack", [False, True])
def test_encoded_rows_train_through_ms_swift_cached_dataset(tmp_path, pack):
    """`hy3 data encode --swift-dataset` -> ms-swift's get_cached_dataset -> LazyLLMDataset(template.encode)
    -> data_collator: the examples arrive as encoded, packed ones with their boundaries."""
    from swift.dataset import LazyLLMDataset
    from swift.pipelines.utils import get_cached_dataset

    from megatron_hy.data.output import encode_file

    src = write_jsonl(tmp_path / "rows.jsonl", ALL_ROWS)
    out, cached = tmp_path / "enc.jsonl", tmp_path / "cached"
    enc = encoder(loss_mode="per-turn")
    encode_file(src, out, enc, max_length=2048 if pack else None, pack=pack, swift_dataset=cached, quiet=True)
    args = types.SimpleNamespace(cached_dataset=[str(cached)], cached_val_dataset=[], data_seed=42,
                                 max_length=4096, truncation_strategy="delete")
    (ds,), _ = get_cached_dataset(args)
    tpl = swift_template("hy3", padding_free=True)
    items = [LazyLLMDataset(ds, tpl.encode, strict=True)[i] for i in range(len(ds))]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(i["input_ids"], i["labels"]) for i in items] == [(w["input_ids"], w["labels"]) for w in written]
    expected = [(e.input_ids, e.labels) for r in ALL_ROWS for e in enc.encode(conv(r))]
    assert sum(len(w["source"]) for w in written) == len(expected)
    if not pack:
        assert [(w["input_ids"], w["labels"]) for w in written] == expected
    batch = tpl.data_collator(items[:2])
    starts = int((batch["position_ids"][0] == 0).sum())
    assert starts == sum(len(w["source"]) for w in written[:2])


def test_default_system_of_the_template_is_used_for_rows_without_one():
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    theirs = swift_template("hy3", default_system="Be kind.").encode(row)
    ours, = encoder().encode(conv({"messages": [{"role": "system", "content": "Be kind."}] + row["messages"]}))
    assert theirs["input_ids"] == ours.input_ids
    assert theirs["input_ids"] == swift_template("hy_v3", default_system="Be kind.").encode(row)["input_ids"]


def test_plugin_template_pickles_for_dataloader_workers():
    import pickle

    tpl = swift_template("hy3")
    first = tpl.encode(MULTI)
    copy = pickle.loads(pickle.dumps(tpl))
    assert copy.encode(MULTI) == first
