"""`hy3 data convert`: the seeds' examples convert as their text says; what cannot convert is reported."""

from __future__ import annotations

import json

import pytest

from conftest import assert_ok, assert_one_error, run_cli
from data_helpers import write_jsonl
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
    assert not out.exists() and not (tmp_path / "hy3.jsonl.partial").exists()
    proc = assert_ok(run_cli("data", "convert", "--from", "hunyuan-legacy", src, out, "--allow-bad"))
    assert f"{out}: 5 rows read: 0 kept as given (already Hy3 rows), 3 converted, 2 refused" in proc.stdout
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
