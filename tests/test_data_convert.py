"""`hy3 data convert`: the seeds' examples convert as their text says; what cannot convert is reported."""

from __future__ import annotations

import json

import pytest

from conftest import assert_ok, assert_one_error, run_cli
from data_helpers import R, WEATHER, conv, encoder, labeled_runs, reply, write_jsonl
from megatron_hy.data.convert import Skip, from_alpaca, from_hunyuan_legacy, from_sharegpt, split_legacy
from megatron_hy.data.rows import parse_row
from megatron_hy.data.validate import validate_files

# seed 001 (older Hunyuan README), verbatim
SEAWATER = ("Seawater is primarily saline due to dissolved salts and minerals. These substances come from the chemical "
            "materials in rocks and soil on the Earth's surface, which are carried into the ocean over time. When "
            "seawater evaporates, the water vapor leaves, but the salts and minerals remain, making the seawater "
            "saltier. Therefore, the salinity of seawater is determined by the amount of salts and minerals it "
            "contains.")
THINK_1P1 = ("The user is asking for the result of 1 + 1. First, I must confirm this is a basic arithmetic question. "
             "In the decimal numeral system, 1 + 1 typically equals 2. While alternative interpretations might exist "
             "in different numeral systems (e.g., binary) or contextual riddles, no special context is specified "
             "here, so the default assumption is the decimal system. Additionally, there are occasional riddle-like "
             "scenarios where 1 + 1 could equal 1 (e.g., one drop of water plus another drop still forms one drop), "
             "but in standard mathematical contexts, the answer is 2. Therefore, the most accurate response is 2.")
ANSWER_1P1 = ("In basic decimal arithmetic, 1 plus 1 equals 2. This operation adheres to the basic rules of natural "
              "number addition, so: 1 + 1 = 2.")
FAST_001 = {"messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "/no_think Why is seawater salty?"},
    {"role": "assistant", "content": f"<think>\n\n</think>\n<answer>\n{SEAWATER}\n</answer>"}]}
SLOW_001 = {"messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "1+1="},
    {"role": "assistant", "content": f"<think>\n{THINK_1P1}</think>\n<answer>\n{ANSWER_1P1}\n</answer>"}]}
# seed 003 (LLaMA-Factory guide for Hunyuan), verbatim
SLOW_003 = {"messages": [
    {"role": "system", "content": "你是一个专业的数学助手"},
    {"role": "user", "content": "求解二次方程 x² - 5x + 6 = 0"},
    {"role": "assistant", "content": "<think>\n用户要求解二次方程 x² - 5x + 6 = 0。这是一个标准的一元二次方程,我可以使用求根公式来解答。"
                                     "首先回忆求根公式:x = [-b ± √(b² - 4ac)] / (2a)。在这个方程中,a=1, b=-5, c=6。计算判别式:"
                                     "Δ = b² - 4ac = 25 - 24 = 1。因为Δ > 0,所以有两个实数根。\n</think>\n<answer>\n方程 x² - 5x "
                                     "+ 6 = 0 的解为:\nx₁ = (5 + √1)/2 = 3\nx₂ = (5 - √1)/2 = 2\n所以解为 x=2 或 x=3。\n</answer>"}]}
FAST_003 = {"messages": [
    {"role": "system", "content": "你是一个知识丰富的助手"},
    {"role": "user", "content": "/no_think太阳系有多少颗行星"},
    {"role": "assistant", "content": "<think>\n\n</think>\n<answer>\n太阳系目前公认有8颗行星,按照距离太阳从近到远的顺序分别是:水星、"
                                     "金星、地球、火星、木星、土星、天王星和海王星。\n</answer>"}]}


def test_seed_001_fast_thinking_becomes_no_think():
    row = from_hunyuan_legacy(FAST_001)
    assert row == {"reasoning_effort": "no_think", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Why is seawater salty?"},
        {"role": "assistant", "content": SEAWATER}]}


def test_seed_001_slow_thinking_becomes_high_with_reasoning_content():
    row = from_hunyuan_legacy(SLOW_001)
    assert row["reasoning_effort"] == "high"
    assert row["messages"][2] == {"role": "assistant", "content": ANSWER_1P1, "reasoning_content": THINK_1P1}
    assert row["messages"][1] == {"role": "user", "content": "1+1="}


def test_seed_003_examples():
    slow, fast = from_hunyuan_legacy(SLOW_003), from_hunyuan_legacy(FAST_003)
    assert slow["reasoning_effort"] == "high"
    assert slow["messages"][2]["reasoning_content"].startswith("用户要求解二次方程")
    assert slow["messages"][2]["reasoning_content"].endswith("所以有两个实数根。")
    assert slow["messages"][2]["content"] == "方程 x² - 5x + 6 = 0 的解为:\nx₁ = (5 + √1)/2 = 3\nx₂ = (5 - √1)/2 = 2\n所以解为 x=2 或 x=3。"
    assert fast["reasoning_effort"] == "no_think" and fast["messages"][1]["content"] == "太阳系有多少颗行星"
    assert "reasoning_content" not in fast["messages"][2]


def test_legacy_wrapper_is_inverted_exactly():
    # the old template: f"<think>\n{think}\n</think>\n<answer>\n{answer}\n</answer>"
    for think, answer in [("a\n\nb", " x \n"), ("", "y"), ("\nlead", "trail\n\n")]:
        assert split_legacy(f"<think>\n{think}\n</think>\n<answer>\n{answer}\n</answer>") == (think or None, answer)
    assert split_legacy("plain answer") == (None, "plain answer")
    assert split_legacy("<think>\nr\n</think>\nanswer without tags") == ("r", "answer without tags")


@pytest.mark.parametrize("text,why", [
    ("intro <think>r</think><answer>a</answer>", "exactly one <think>"),
    ("<think>r</think><think>s</think>a", "exactly one <think>"),
    ("<think>r</think>\n<answer>a", "not closed"),
    ("<think>r</think>\n<answer>a</answer> and more", "not closed"),
    ("<think>r</think>\nsee <answer>a</answer>", "between </think> and <answer>"),
])
def test_malformed_legacy_markup_is_not_converted(text, why):
    with pytest.raises(Skip, match=why):
        split_legacy(text)


def test_no_think_switch_with_reasoning_is_a_contradiction():
    row = {"messages": [{"role": "user", "content": "/no_think hi"},
                        {"role": "assistant", "content": "<think>\nr\n</think>\n<answer>\na\n</answer>"}]}
    with pytest.raises(Skip, match="says /no_think but the reply has reasoning"):
        from_hunyuan_legacy(row)


def test_multi_turn_legacy_keeps_history_reasoning_and_takes_effort_from_the_last_turn():
    row = from_hunyuan_legacy({"messages": [
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "<think>\nR1\n</think>\n<answer>\nA1\n</answer>"},
        {"role": "user", "content": "/no_think Q2"}, {"role": "assistant", "content": "<think>\n\n</think>\n<answer>\nA2\n</answer>"}]})
    assert row["reasoning_effort"] == "no_think"
    assert row["messages"][1] == {"role": "assistant", "content": "A1", "reasoning_content": "R1"}
    assert parse_row(row)[0] is not None


def test_sharegpt_with_tools_system_and_extra_keys():
    src = {"id": "r1", "system": "Be brief.", "tools": json.dumps([{"name": "get_weather", "parameters": {}}]),
           "conversations": [
               {"from": "human", "value": "Weather in Oslo?"},
               {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})},
               {"from": "observation", "value": "4C"},
               {"from": "gpt", "value": "4 °C."}]}
    row = from_sharegpt(src)
    assert row == {"reasoning_effort": "no_think", "tools": [{"name": "get_weather", "parameters": {}}],
                   "meta": {"id": "r1"}, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "4C"}, {"role": "assistant", "content": "4 °C."}]}
    conv, problems = parse_row(row)
    assert conv is not None and not [p for p in problems if p.level == "error"]


def test_sharegpt_refuses_legacy_markup_and_unknown_roles():
    with pytest.raises(Skip, match="--from hunyuan-legacy"):
        from_sharegpt(FAST_001)
    with pytest.raises(Skip, match="role 'narrator'"):
        from_sharegpt({"conversations": [{"from": "narrator", "value": "x"}]})


def test_alpaca():
    row = from_alpaca({"instruction": "Translate to French", "input": "good morning", "output": "bonjour",
                       "history": [["hi", "hello"]], "source": "x"})
    assert row == {"reasoning_effort": "no_think", "meta": {"source": "x"}, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "Translate to French\ngood morning"}, {"role": "assistant", "content": "bonjour"}]}
    with pytest.raises(Skip, match="no 'output'"):
        from_alpaca({"instruction": "x"})


def test_cli_reports_every_row_not_converted_and_writes_nothing_without_skip_bad(tmp_path):
    src = write_jsonl(tmp_path / "legacy.jsonl", [FAST_001, SLOW_001, "{broken", SLOW_003,
                                                  {"messages": [{"role": "user", "content": "/no_think x"},
                                                                {"role": "assistant", "content": "<think>\nr\n</think>\ny"}]}])
    out = tmp_path / "hy3.jsonl"
    proc = run_cli("data", "convert", "--from", "hunyuan-legacy", src, out)
    assert_one_error(proc, "5 rows read: 0 could be kept as given (already Hy3 rows), 3 could be converted, 2 refused")
    assert f"{src}:3: invalid JSON" in proc.stderr and f"{src}:5: the last user turn says /no_think" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
    proc = assert_ok(run_cli("data", "convert", "--from", "hunyuan-legacy", src, out, "--allow-bad"))
    # the result on stdout, the `wrote` line on stderr (the README's one convention)
    assert proc.stdout.startswith("5 rows read: 0 kept as given (already Hy3 rows), 3 converted, 2 refused\n")
    assert f"wrote {out}: 3 Hy3 rows" in proc.stderr
    assert "2 rows refused" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["reasoning_effort"] for r in rows] == ["no_think", "high", "high"]
    assert validate_files([out]).ok


def test_json_array_input(tmp_path):
    src = tmp_path / "alpaca.json"
    src.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}] * 3, indent=2))
    out = tmp_path / "out.jsonl"
    proc = assert_ok(run_cli("data", "convert", "--from", "alpaca", src, out))
    assert "3 rows read: 0 kept as given (already Hy3 rows), 3 converted, 0 refused" in proc.stdout
    assert [json.loads(line)["meta"]["converted_from"] for line in out.read_text().splitlines()] == \
        [[f"{src}:2"], [f"{src}:7"], [f"{src}:12"]]


# --- every key kept, Hy3 and OpenAI keys mapped faithfully (issue 11) ------------------------------------------

def convert_cli(tmp_path, fmt: str, rows: list, *flags: str):
    src = write_jsonl(tmp_path / f"{fmt}.jsonl", rows)
    out = tmp_path / f"{fmt}-hy3.jsonl"
    proc = run_cli("data", "convert", "--from", fmt, src, out, *flags)
    return proc, src, out


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_meta(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "meta"}


@pytest.mark.parametrize("fmt", ["sharegpt", "hunyuan-legacy"])
def test_loss_false_on_a_message_survives_and_keeps_the_turn_out_of_the_loss(fmt):
    """A turn meant to be excluded must not be trained: `loss` (and OpenAI's `weight`) reach the Hy3 row."""
    row = {"conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1", "loss": False},
                             {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2", "loss": True}]}
    convert = from_sharegpt if fmt == "sharegpt" else from_hunyuan_legacy
    got = convert(row)
    assert [m.get("loss") for m in got["messages"]] == [None, False, None, True]
    ex, = encoder(loss_mode="all").encode(conv(got))
    assert labeled_runs(ex.input_ids, ex.labels) == [reply("A2")]
    openai = {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "weight": 0},
                           {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2", "weight": 1}]}
    assert [m.get("loss") for m in convert(openai)["messages"]] == [None, False, None, True]
    with pytest.raises(Skip, match=r"messages\[1\] has loss True and weight 0, which disagree"):
        convert({"messages": [openai["messages"][0], {**openai["messages"][1], "loss": True}]})


HY3_ROWS = [
    {"reasoning_effort": "high", "messages": [
        {"role": "system", "content": "Be exact."}, {"role": "user", "content": "1+1=?"},
        {"role": "assistant", "content": "2", "reasoning_content": "One plus one is two."}]},
    {"reasoning_effort": "low", "tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "Need the weather.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "content": "21C"},
        {"role": "assistant", "content": "It is 21C.", "reasoning_content": "Tool says 21C.", "loss": False}]},
]


def test_hy3_rows_through_sharegpt_keep_reasoning_and_effort(tmp_path):
    """Hy3 rows given to --from sharegpt come out as they went in (kept, not converted), with their
    reasoning_content and reasoning_effort, and encode to the same tokens."""
    for row in HY3_ROWS:
        assert from_sharegpt(row) == row
    proc, src, out = convert_cli(tmp_path, "sharegpt", HY3_ROWS)
    assert "2 rows read: 2 kept as given (already Hy3 rows), 0 converted, 0 refused" in assert_ok(proc).stdout
    assert f"wrote {out}: 2 Hy3 rows" in proc.stderr
    rows = read_rows(out)
    assert [without_meta(r) for r in rows] == HY3_ROWS
    assert [r["meta"] for r in rows] == [{"converted_from": [f"{src}:1"]}, {"converted_from": [f"{src}:2"]}]
    for got, want in zip(rows, HY3_ROWS):
        assert encoder().encode(conv(got)) == encoder().encode(conv(want))
    with_kwargs = {"chat_template_kwargs": {"reasoning_effort": "low"}, "messages": HY3_ROWS[0]["messages"]}
    assert from_sharegpt(with_kwargs)["reasoning_effort"] == "low"
    no_effort = {"messages": HY3_ROWS[0]["messages"]}  # a reply with reasoning and no effort: high, as for legacy
    assert from_sharegpt(no_effort)["reasoning_effort"] == "high"


def test_openai_tool_calls_and_tool_messages_are_converted_not_blamed_on_the_input(tmp_path):
    openai = {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "21C"},
        {"role": "assistant", "content": "It is 21C."}]}
    row = from_sharegpt(openai)
    assert row["messages"][1] == {"role": "assistant", "content": "", "tool_calls": openai["messages"][1]["tool_calls"]}
    assert row["messages"][2] == openai["messages"][2]
    ex, = encoder().encode(conv(row))
    call = (f"{R.think}{R.think_end}{R.tool_calls}\n{R.tool_call}get_weather{R.tool_sep}\n{R.arg_key}city"
            f"{R.arg_key_end}\n{R.arg_value}Paris{R.arg_value_end}\n{R.tool_call_end}\n{R.tool_calls_end}{R.eos}")
    assert labeled_runs(ex.input_ids, ex.labels) == [call, reply("It is 21C.")]
    assert ex.input_ids == encoder(backend="jinja").encode(conv(row))[0].input_ids
    # OpenAI's older function_call / function role, and ms-swift's tool_call turns (two in a row: parallel calls)
    legacy_api = {"tools": [WEATHER], "messages": [openai["messages"][0],
                                                   {"role": "assistant", "content": None,
                                                    "function_call": {"name": "get_weather",
                                                                      "arguments": "{\"city\": \"Paris\"}"}},
                                                   {"role": "function", "name": "get_weather", "content": "21C"},
                                                   openai["messages"][3]]}
    assert encoder().encode(conv(from_sharegpt(legacy_api))) == [ex]
    swift = {"messages": [{"role": "user", "content": "Paris and Oslo?"},
                          {"role": "tool_call", "content": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
                          {"role": "tool_call", "content": json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})},
                          {"role": "tool_response", "content": "21C"}, {"role": "tool_response", "content": "4C"},
                          {"role": "assistant", "content": "21C and 4C."}]}
    calls = from_sharegpt(swift)["messages"][1]["tool_calls"]
    assert [c["function"]["arguments"]["city"] for c in calls] == ["Paris", "Oslo"]
    proc, src, out = convert_cli(tmp_path, "sharegpt", [openai, legacy_api, swift])
    assert "3 rows read: 0 kept as given (already Hy3 rows), 3 converted, 0 refused" in assert_ok(proc).stdout


def test_every_key_convert_does_not_understand_is_kept_under_meta_and_counted(tmp_path):
    src_rows = [
        {"id": 7, "source": "forum", "meta": {"split": "train"}, "conversations": [
            {"from": "human", "value": "Q", "lang": "en"},
            {"from": "gpt", "value": "A", "score": 0.9, "meta": {"rater": "b"}}]},
        {"id": 8, "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A", "score": 0.1}]},
    ]
    first = from_sharegpt(src_rows[0])
    assert first["meta"] == {"split": "train", "id": 7, "source": "forum"}
    assert first["messages"] == [{"role": "user", "content": "Q", "meta": {"lang": "en"}},
                                 {"role": "assistant", "content": "A", "meta": {"rater": "b", "score": 0.9}}]
    proc, src, out = convert_cli(tmp_path, "sharegpt", src_rows)
    stdout = assert_ok(proc).stdout
    assert ("keys with no place in a Hy3 row, kept under 'meta': conversations[].lang (1 rows), "
            "conversations[].score (2 rows), id (2 rows), source (1 rows)") in stdout
    rows = read_rows(out)
    assert rows[0]["meta"] == {**first["meta"], "converted_from": [f"{src}:1"]}
    assert validate_files([out]).count("warning") == 0  # meta is part of a Hy3 row and of a message
    again = tmp_path / "again.jsonl"  # converting a converted file appends to converted_from
    assert_ok(run_cli("data", "convert", "--from", "sharegpt", out, again))
    assert read_rows(again)[0]["meta"]["converted_from"] == [f"{src}:1", f"{out}:1"]
    assert [without_meta(r) for r in read_rows(again)] == [without_meta(r) for r in rows]


@pytest.mark.parametrize("fmt,row,why", [
    ("sharegpt", {"id": 1, "meta": {"id": 2}, "messages": [{"role": "user", "content": "Q"},
                                                           {"role": "assistant", "content": "A"}]},
     "the row has the key 'id' both itself and in its 'meta'"),
    ("sharegpt", {"system": 5, "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
     "'system' must be text, found int"),
    ("sharegpt", {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "weight": 2}]},
     r"messages\[1\].weight must be 0 or 1, found 2"),
    ("hunyuan-legacy", {"messages": [{"role": "user", "content": "Q"},
                                     {"role": "assistant", "content": "<think>\nr\n</think>\na",
                                      "reasoning_content": "r"}]},
     "has reasoning_content and <think>/<answer> markup too"),
    ("hunyuan-legacy", {"reasoning_effort": "high", "messages": [{"role": "user", "content": "/no_think Q"},
                                                                 {"role": "assistant", "content": "A"}]},
     "reasoning_effort is 'high' but the last user turn says /no_think"),
])
def test_rows_that_cannot_keep_every_key_faithfully_are_refused_with_the_key(fmt, row, why):
    convert = {"sharegpt": from_sharegpt, "hunyuan-legacy": from_hunyuan_legacy}[fmt]
    with pytest.raises(Skip, match=why):
        convert(row)


def test_skip_bad_keeps_source_lines_and_exits_1_unless_allow_bad(tmp_path):
    good = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    bad = {"messages": [{"role": "narrator", "content": "x"}]}
    rows = [good, bad, "{broken", good]
    proc, src, out = convert_cli(tmp_path, "sharegpt", rows, "--skip-bad")
    assert_one_error(proc, "2 of 4 rows refused", f"{out} holds the other 2", "--allow-bad")
    assert proc.stdout.startswith("4 rows read: 0 kept as given (already Hy3 rows), 2 converted, 2 refused\n")
    assert f"wrote {out}: 2 Hy3 rows" in proc.stderr
    assert f"{src}:2: messages[0] has role 'narrator'" in proc.stdout and f"{src}:3: invalid JSON" in proc.stdout
    assert [r["meta"]["converted_from"] for r in read_rows(out)] == [[f"{src}:1"], [f"{src}:4"]]
    out.unlink()
    proc, _, _ = convert_cli(tmp_path, "sharegpt", rows, "--allow-bad")
    assert "2 refused" in assert_ok(proc).stdout and len(read_rows(out)) == 2
    help_text = assert_ok(run_cli("data", "convert", "--help")).stdout
    assert "--allow-bad" in help_text and "exit 1 if any row" in " ".join(help_text.split())
