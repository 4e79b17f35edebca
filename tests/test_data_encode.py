"""The encoder against ms-swift's hy_v3 template (run here), the documented rules and our chat template."""

from __future__ import annotations

import json

import pytest

from data_helpers import (PREVIEW, R, SYS, WEATHER, conv, encoder, header, ids, labeled_runs, reply, swift_template,
                          tokenizer, turn)

# rows without reasoning: ms-swift's hy_v3 and Hy3's template must agree token for token
PLAIN_ROWS = {
    "system": {"messages": [{"role": "system", "content": SYS}, {"role": "user", "content": "1+1=?"},
                            {"role": "assistant", "content": "1+1=2"}]},
    "no-system": {"messages": [{"role": "user", "content": "Name the largest planet."},
                               {"role": "assistant", "content": "Jupiter."}]},
    "multi-turn": {"messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Translate 'good morning' into French."},
                                {"role": "assistant", "content": "Bonjour."},
                                {"role": "user", "content": "  And Spanish?\n"},
                                {"role": "assistant", "content": "Buenos días.\n"}]},
    "chinese": {"messages": [{"role": "system", "content": "你是一个知识丰富的助手"},
                             {"role": "user", "content": "太阳系有多少颗行星?"},
                             {"role": "assistant", "content": "太阳系有8颗行星。"}]},
    "high-without-reasoning": {"reasoning_effort": "high",
                               "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    "tools": {"tools": [WEATHER], "messages": [
        {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
        {"role": "tool", "content": "{\"temperature\": 21}"},
        {"role": "assistant", "content": "21 °C in Paris."}]},
}


def swift_row(row: dict) -> dict:
    """The same row for ms-swift's hy_v3, which reads the effort only from chat_template_kwargs."""
    out = {k: v for k, v in row.items() if k != "reasoning_effort"}
    if "reasoning_effort" in row:
        out["chat_template_kwargs"] = {"reasoning_effort": row["reasoning_effort"]}
    return out


@pytest.mark.parametrize("name", list(PLAIN_ROWS))
@pytest.mark.parametrize("mode,loss_scale", [("all", "default"), ("last", "last_round")])
def test_rows_without_reasoning_equal_ms_swift_hy_v3(name, mode, loss_scale):
    row = PLAIN_ROWS[name]
    theirs = swift_template("hy_v3", loss_scale=loss_scale).encode(swift_row(row))
    ours, = encoder(loss_mode=mode).encode(conv(row))
    assert ours.input_ids == theirs["input_ids"]
    assert ours.labels == theirs["labels"]


@pytest.mark.parametrize("name", ["system", "multi-turn"])
def test_preview_rows_equal_ms_swift_hy_v3_preview(name):
    row = PLAIN_ROWS[name]
    theirs = swift_template("hy_v3_preview", variant="preview").encode(swift_row(row))
    ours, = encoder("preview").encode(conv(row))
    assert ours.input_ids == theirs["input_ids"] and ours.labels == theirs["labels"]
    assert tokenizer("preview").decode(ours.input_ids).startswith(PREVIEW.bos)


HIGH = {"reasoning_effort": "high", "messages": [
    {"role": "system", "content": SYS}, {"role": "user", "content": "1+1=?"},
    {"role": "assistant", "content": "1+1=2", "reasoning_content": "The user asks for 1 + 1, which is 2."}]}


def test_reasoning_row_fills_the_think_block_and_the_loss():
    ex, = encoder().encode(conv(HIGH))
    want = header("high", SYS) + R.user + "1+1=?" + R.assistant + reply("1+1=2", "The user asks for 1 + 1, which is 2.")
    assert ex.input_ids == ids(want)
    assert labeled_runs(ex.input_ids, ex.labels) == [reply("1+1=2", "The user asks for 1 + 1, which is 2.")]


def test_ms_swift_hy_v3_diverges_on_reasoning_rows_and_we_follow_the_template():
    """ms-swift 4.6 ignores the row's reasoning_effort and renders an empty think block, dropping
    reasoning_content; Hy3's documented template (and we) render the effort and the reasoning."""
    theirs = swift_template("hy_v3").encode(HIGH)
    text = tokenizer().decode(theirs["input_ids"])
    assert "reasoning_effort:no_think" in text and "The user asks" not in text
    assert text.endswith(R.assistant + R.think + R.think_end + "1+1=2" + R.eos)
    with_kwargs = swift_template("hy_v3").encode(swift_row(HIGH))  # effort via chat_template_kwargs
    assert "reasoning_effort:high" in tokenizer().decode(with_kwargs["input_ids"])
    assert "The user asks" not in tokenizer().decode(with_kwargs["input_ids"])
    ours, = encoder().encode(conv(HIGH))
    assert ours.input_ids != with_kwargs["input_ids"]
    assert "reasoning_effort:high" in tokenizer().decode(ours.input_ids)


MULTI = {"reasoning_effort": "high", "messages": [
    {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
    {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2", "reasoning_content": "R2"},
    {"role": "user", "content": "Q3"}, {"role": "assistant", "content": "A3", "reasoning_content": "R3"}]}


def test_history_turns_are_closed_and_the_last_turn_keeps_its_reasoning():
    ex, = encoder().encode(conv(MULTI))
    want = header("high") + turn("Q1", "A1") + turn("Q2", "A2") + turn("Q3", "A3", "R3")
    assert ex.input_ids == ids(want)


def test_loss_mode_all_labels_every_assistant_turn():
    ex, = encoder(loss_mode="all").encode(conv(MULTI))
    assert labeled_runs(ex.input_ids, ex.labels) == [reply("A1"), reply("A2"), reply("A3", "R3")]


def test_loss_mode_last_labels_the_final_reply_only():
    ex, = encoder(loss_mode="last").encode(conv(MULTI))
    assert ex.input_ids == encoder(loss_mode="all").encode(conv(MULTI))[0].input_ids
    assert labeled_runs(ex.input_ids, ex.labels) == [reply("A3", "R3")]


def test_loss_mode_per_turn_gives_one_example_per_turn_with_its_reasoning():
    exs = encoder(loss_mode="per-turn").encode(conv(MULTI))
    assert len(exs) == 3
    want = [header("high") + turn("Q1", "A1", "R1"),
            header("high") + turn("Q1", "A1") + turn("Q2", "A2", "R2"),
            header("high") + turn("Q1", "A1") + turn("Q2", "A2") + turn("Q3", "A3", "R3")]
    for ex, text, (a, r) in zip(exs, want, [("A1", "R1"), ("A2", "R2"), ("A3", "R3")]):
        assert ex.input_ids == ids(text)
        assert labeled_runs(ex.input_ids, ex.labels) == [reply(a, r)]


def test_loss_false_on_a_message_keeps_it_out_of_every_mode():
    row = {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "loss": False},
                        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]}
    for mode in ("all", "last", "per-turn"):
        exs = encoder(loss_mode=mode).encode(conv(row))
        assert [labeled_runs(e.input_ids, e.labels) for e in exs] == [[reply("A2")]], mode
    row["messages"][1]["loss"] = True  # forced in, even in `last` mode
    ex, = encoder(loss_mode="last").encode(conv(row))
    assert labeled_runs(ex.input_ids, ex.labels) == [reply("A1"), reply("A2")]


TOOL_ROW = {"reasoning_effort": "low", "tools": [WEATHER], "messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "reasoning_content": "Need the weather.", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "content": "21C"},
    {"role": "assistant", "content": "It is 21C.", "reasoning_content": "Tool says 21C."}]}


def test_tool_calls_and_results_render_as_documented():
    ex, = encoder(loss_mode="all").encode(conv(TOOL_ROW))
    call = (f"{R.think}Need the weather.{R.think_end}{R.tool_calls}\n{R.tool_call}get_weather{R.tool_sep}\n"
            f"{R.arg_key}city{R.arg_key_end}\n{R.arg_value}Paris{R.arg_value_end}\n{R.tool_call_end}\n"
            f"{R.tool_calls_end}{R.eos}")
    text = tokenizer().decode(ex.input_ids)
    assert f"{R.tool_calls_end}{R.reasoning_mode}reasoning_effort:low{R.user}" in text
    assert text.endswith(R.user + "Weather in Paris?" + R.assistant + call + f"{R.tool_responses}\n{R.tool_response}"
                         f"\n21C\n{R.tool_response_end}\n{R.tool_responses_end}{R.assistant}"
                         + reply("It is 21C.", "Tool says 21C."))
    assert labeled_runs(ex.input_ids, ex.labels) == [call, reply("It is 21C.", "Tool says 21C.")]


ALL_ROWS = list(PLAIN_ROWS.values()) + [HIGH, MULTI, TOOL_ROW]


@pytest.mark.parametrize("mode", ["all", "last", "per-turn"])
@pytest.mark.parametrize("variant", ["release", "preview"])
def test_native_backend_equals_the_chat_template_backend(mode, variant):
    native, jinja = encoder(variant, loss_mode=mode), encoder(variant, loss_mode=mode, backend="jinja")
    for row in ALL_ROWS:
        a, b = native.encode(conv(row)), jinja.encode(conv(row))
        assert [(x.input_ids, x.labels) for x in a] == [(y.input_ids, y.labels) for y in b]


def test_preserved_thinking_keeps_history_reasoning():
    ex, = encoder(preserved_thinking=True).encode(conv(MULTI))
    assert ex.input_ids == ids(header("high") + turn("Q1", "A1", "R1") + turn("Q2", "A2", "R2")
                               + turn("Q3", "A3", "R3"))
    jinja, = encoder(preserved_thinking=True, backend="jinja").encode(conv(MULTI))
    assert jinja.input_ids == ex.input_ids


def test_batch_encoding_equals_one_at_a_time():
    enc = encoder(loss_mode="per-turn")
    convs = [conv(r) for r in ALL_ROWS]
    assert enc.encode_many(convs) == [enc.encode(c) for c in convs]


def test_ms_swift_differs_on_think_markup_in_content_and_zero_argument_calls():
    """Two more ms-swift 4.6 divergences, kept visible: it prefixes a second think block to content
    that starts with `<think:opensource>` (it tests for `<think>`), and renders a call with no
    arguments as `<tool_sep>\\n\\n</tool_call>`; Hy3's rules give `<tool_sep>\\n</tool_call>`."""
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": f"{R.think}r{R.think_end}a"}]}
    text = tokenizer().decode(swift_template("hy_v3").encode(row)["input_ids"])
    assert text.endswith(R.think + R.think_end + R.think + "r" + R.think_end + "a" + R.eos)
    call = {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                             "function": {"name": "now", "arguments": {}}}]},
        {"role": "tool", "content": "12:00"}, {"role": "assistant", "content": "noon"}]}
    theirs = tokenizer().decode(swift_template("hy_v3").encode(call)["input_ids"])
    ours = tokenizer().decode(encoder().encode(conv(call))[0].input_ids)
    assert f"now{R.tool_sep}\n\n{R.tool_call_end}" in theirs
    assert f"now{R.tool_sep}\n{R.tool_call_end}\n{R.tool_calls_end}" in ours
    assert ours == tokenizer().decode(encoder(backend="jinja").encode(conv(call))[0].input_ids)


def test_a_tokenizer_without_hy3_tokens_is_refused():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from megatron_hy.data.encode import Encoder
    from megatron_hy.data.tokenizer import build_standin
    from megatron_hy.errors import Hy3Error

    spec = build_standin().to_str()
    no_bos = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spec.replace("hy_begin", "xx_begin")))
    with pytest.raises(Hy3Error, match="cannot tell whether this is a Hy3 release or preview tokenizer"):
        Encoder(no_bos)
    no_tools = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spec.replace("tool_sep", "tool_xxx")),
                                       bos_token=R.bos)
    with pytest.raises(Hy3Error, match="lacks Hy3 release control tokens: <tool_sep:opensource>"):
        Encoder(no_tools)


def test_truncate_drops_and_counts_examples_left_with_no_token_in_the_loss(tmp_path):
    """--overflow truncate must not keep an example whose loss is empty after the cut (issue 11)."""
    from data_helpers import write_jsonl
    from megatron_hy.data.encode import IGNORE
    from megatron_hy.data.output import encode_file

    def first_loss_and_length(row):
        ex, = encoder().encode(conv(row))
        return next(i for i, x in enumerate(ex.labels) if x != IGNORE), len(ex)

    long_prompt = {"messages": [{"role": "user", "content": "Tell me about the sea. " * 20},
                                {"role": "assistant", "content": "Salty."}]}
    long_reply = {"messages": [{"role": "user", "content": "The sea?"},
                               {"role": "assistant", "content": "It is salty and deep. " * 40}]}
    limit, prompt_len = first_loss_and_length(long_prompt)  # its first `limit` tokens: none in the loss
    reply_start, reply_len = first_loss_and_length(long_reply)
    assert reply_start < limit < reply_len
    src = write_jsonl(tmp_path / "rows.jsonl", [long_prompt, long_reply, long_prompt])
    out = tmp_path / "enc.jsonl"
    s = encode_file(src, out, encoder(), max_length=limit, overflow="truncate", quiet=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in rows] == [[f"{src}:2"]] and len(rows[0]["input_ids"]) == limit
    assert sum(x != IGNORE for x in rows[0]["labels"]) == limit - reply_start
    assert s.truncated == [f"{src}:2: {reply_len} tokens, longer than --max-length {limit}"]
    assert s.dropped == [f"{src}:{n}: {prompt_len} tokens, longer than --max-length {limit}; its first {limit} "
                         "tokens have none in the loss" for n in (1, 3)]
    assert s.examples == s.written == 1
    assert "2 examples dropped (truncated, no token left in the loss):" in s.text()
