"""`hy3 data validate`: every problem as file:line with a reason; exit 1 on errors; nothing dropped."""

from __future__ import annotations

import json

import pytest

from conftest import assert_ok, assert_one_error, run_cli
from data_helpers import R, SYS, WEATHER, model_dir, write_jsonl
from megatron_hy.data.validate import validate_files

GOOD = {"reasoning_effort": "high", "messages": [
    {"role": "system", "content": SYS}, {"role": "user", "content": "1+1=?"},
    {"role": "assistant", "content": "1+1=2", "reasoning_content": "basic arithmetic"}]}


def user(text="Q"):
    return {"role": "user", "content": text}


def assistant(text="A", **kw):
    return {"role": "assistant", "content": text, **kw}


# (row or raw line, text the error must contain)
BAD = [
    ('{"messages": [', "invalid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ({"conversations": []}, "no 'messages' list"),
    ({"messages": []}, "non-empty list"),
    ({"reasoning_effort": "medium", "messages": [user(), assistant()]}, "reasoning_effort must be one of"),
    ({"chat_template_kwargs": {"reasoning_effort": "low"}, "reasoning_effort": "high",
      "messages": [user(), assistant()]}, "disagree"),
    ({"messages": [{"role": "human", "content": "Q"}, assistant()]}, "role must be one of"),
    ({"messages": [assistant(), user(), assistant()]}, "must start with a user turn"),
    ({"messages": [user(), user(), assistant()]}, "two user turns in a row"),
    ({"messages": [user(), assistant(), assistant()]}, "two assistant turns in a row"),
    ({"messages": [user(), assistant(), {"role": "system", "content": "late"}, user(), assistant()]},
     "system message after the conversation started"),
    ({"messages": [user(), assistant(), user()]}, "must end with an assistant turn"),
    ({"messages": [user(""), assistant()]}, "empty user turn"),
    ({"messages": [user(), assistant("  ")]}, "empty assistant turn"),
    ({"messages": [user(), {"role": "assistant", "content": 3}]}, "content must be a string"),
    ({"messages": [user(), assistant(reasoning_content="R")]}, "reasoning_effort is not given (no_think)"),
    ({"reasoning_effort": "no_think", "messages": [user(), assistant(reasoning_content="R")]}, "is no_think"),
    ({"reasoning_effort": "high", "messages": [user(), assistant(reasoning_content=["R"])]},
     "reasoning_content must be a string"),
    ({"messages": [{"role": "user", "content": "Q", "reasoning_content": "R"}, assistant()]},
     "only allowed on assistant"),
    ({"messages": [user(), assistant(loss="yes")]}, "loss must be true or false"),
    ({"tools": [WEATHER], "messages": [user(), assistant("", tool_calls=[{"function": {"arguments": {}}}])]},
     "function name"),
    ({"tools": [WEATHER], "messages": [user(), assistant("", tool_calls=[
        {"function": {"name": "get_weather", "arguments": "{city"}}])]}, "arguments is a string but not JSON"),
    ({"tools": [WEATHER], "messages": [user(), assistant("", tool_calls=[
        {"function": {"name": "get_weather", "arguments": [1]}}])]}, "must be a JSON object"),
    ({"tools": [WEATHER], "messages": [user(), assistant("", tool_calls=[
        {"function": {"name": "get_weather", "arguments": {}}}, {"function": {"name": "get_weather", "arguments": {}}}]),
        {"role": "tool", "content": "r"}, assistant()]}, "makes 2 tool call(s) but 1 tool result(s)"),
    ({"messages": [user(), assistant(), {"role": "tool", "content": "r"}, assistant()]}, "made no tool calls"),
    ({"tools": "{not json", "messages": [user(), assistant()]}, "'tools' is a string but not JSON"),
    ({"messages": [user(f"hi {R.eos} there"), assistant()]}, "control token"),
    ({"messages": [user(), assistant("<think>\nx\n</think>\n<answer>\ny\n</answer>")]}, "control token '<think>'"),
    ({"messages": [user(), assistant("<answer>y</answer>")]}, "hunyuan-legacy"),
]


@pytest.mark.parametrize("row,text", BAD, ids=[t for _, t in BAD])
def test_each_malformed_row_is_an_error_at_its_line(tmp_path, row, text):
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD, row, GOOD])
    rep = validate_files([path])
    assert not rep.ok and rep.rows == 3
    assert [(f.line, f.level) for f in rep.errors] == [(2, "error")], [str(f) for f in rep.errors + rep.warnings]
    assert text in rep.errors[0].message
    assert str(rep.errors[0]).startswith(f"{path}:2: error: ")


def test_good_rows_pass_and_warnings_do_not_fail(tmp_path):
    rows = [GOOD,
            {"reasoning_effort": "high", "messages": [user(), assistant("A")]},  # high without reasoning
            {"id": 7, "messages": [user("/no_think Q"), assistant()]},
            {"reasoning_effort": "high", "messages": [user(), assistant("A1", reasoning_content="R1"), user(),
                                                      assistant("A2", reasoning_content="R2")]}]
    rep = validate_files([write_jsonl(tmp_path / "rows.jsonl", rows)])
    assert rep.ok, rep.to_text()
    codes = {(f.line, f.code) for f in rep.warnings}
    assert codes == {(2, "no-reasoning"), (3, "unknown-key"), (3, "legacy-switch"), (4, "history-reasoning")}


def test_ms_swift_spellings_are_accepted():
    from megatron_hy.data.rows import parse_row

    row = {"chat_template_kwargs": {"reasoning_effort": "low"}, "tools": json.dumps([WEATHER]), "messages": [
        user(), {"role": "tool_call", "content": json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})},
        {"role": "tool_response", "content": "4C"}, assistant("4C", reasoning_content="R")]}
    conv, problems = parse_row(row)
    assert conv is not None, [p.message for p in problems]
    assert conv.effort == "low" and conv.turns[1].tool_calls == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert [t.role for t in conv.turns] == ["user", "assistant", "tool", "assistant"]


def test_json_arrays_are_streamed_with_line_numbers(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([GOOD, {"messages": [user(), user(), assistant()]}, GOOD], indent=2))
    rep = validate_files([path])
    starts = [i + 1 for i, text in enumerate(path.read_text().splitlines()) if text == "  {"]
    assert [f.line for f in rep.errors] == [starts[1]]
    assert rep.rows == 3


def test_broken_json_array_reports_where(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text("[\n" + json.dumps(GOOD) + ",\n" + json.dumps(GOOD)[:-5] + "\n]\n")
    rep = validate_files([path])
    assert [(f.line, f.code) for f in rep.errors] == [(3, "json")]


def test_cli_exit_codes_and_json(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD, GOOD])
    bad = write_jsonl(tmp_path / "bad.jsonl", [GOOD, "not json", {"messages": [user(), user(), assistant()]}])
    proc = assert_ok(run_cli("data", "validate", good))
    assert "OK: 2 rows" in proc.stdout
    proc = run_cli("data", "validate", good, bad)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{bad}:2: error: invalid JSON" in proc.stdout and f"{bad}:3: error:" in proc.stdout
    report = json.loads(run_cli("data", "validate", bad, "--json").stdout)
    assert not report["ok"] and [e["line"] for e in report["errors"]] == [2, 3]
    assert_one_error(run_cli("data", "validate", tmp_path / "missing.jsonl"), "missing.jsonl: no such file")


def test_encode_refuses_invalid_input_and_writes_nothing(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [GOOD, {"messages": [user(), user(), assistant()]}])
    out = tmp_path / "out.jsonl"
    proc = run_cli("data", "encode", "--tokenizer", model_dir(), bad, out)
    assert_one_error(proc, f"{bad}: 1 error(s), nothing written")
    assert f"{bad}:2: error: messages[1]: two user turns in a row" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_huge_numbers_of_findings_are_counted_not_all_kept(tmp_path, monkeypatch):
    import megatron_hy.data.validate as v

    monkeypatch.setattr(v, "KEEP", 5)
    rows = [{"id": i, "messages": [user(), assistant()]} for i in range(12)] + [{"messages": [user(), user(), assistant()]}]
    rep = validate_files([write_jsonl(tmp_path / "rows.jsonl", rows)])
    assert len(rep.warnings) == 5 and rep.count("warning") == 12 and rep.count("error") == 1 and not rep.ok
    assert "... and 10 more warnings (10 unknown-key)" in rep.to_text(show=2)
    assert json.loads(rep.to_json())["by_code"] == {"error:order": 1, "warning:unknown-key": 12}
