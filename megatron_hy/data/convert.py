"""`hy3 data convert`: ShareGPT, older Hunyuan (<think>/<answer>, /no_think) and Alpaca rows to Hy3 rows.

Lossless where the source allows: legacy think text becomes `reasoning_content` exactly as the
old template wrapped it (`<think>\\n{think}\\n</think>\\n<answer>\\n{answer}\\n</answer>`), source keys
that a Hy3 row has no place for are kept under `meta`. A row that cannot be converted faithfully
is not converted, and the reason is reported with its file:line.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Hy3Error
from ..outputs import check_file
from .reader import read_records
from .rows import parse_row

FORMATS = ("sharegpt", "hunyuan-legacy", "alpaca")
USER_ROLES = {"human": "user", "user": "user"}
ASSISTANT_ROLES = {"gpt": "assistant", "assistant": "assistant", "bot": "assistant", "model": "assistant",
                   "chatgpt": "assistant"}
TOOL_ROLES = {"observation": "tool", "tool": "tool", "tool_response": "tool", "function": "tool"}
SWITCHES = {"/no_think": "no_think", "/think": "high"}


class Skip(Exception):
    """The row cannot be converted faithfully; the message says why."""


@dataclass
class ConvertSummary:
    rows: int = 0
    converted: int = 0
    skipped: list[str] = field(default_factory=list)

    def text(self, out: Path | None) -> str:
        head = f"{out}: {self.converted} of {self.rows} rows converted" if out else \
            f"{self.converted} of {self.rows} rows can be converted"
        lines = [head]
        if self.skipped:
            reasons = Counter(s.split(": ", 1)[1] for s in self.skipped)
            lines.append(f"{len(self.skipped)} rows not converted:")
            lines += [f"  {s}" for s in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more; by reason:")
                lines += [f"  {n} x {r}" for r, n in reasons.most_common()]
        return "\n".join(lines)


def convert_file(src: str | Path, out: str | Path, fmt: str, skip_bad: bool = False,
                 overwrite: bool = False) -> ConvertSummary:
    if fmt not in FORMATS:
        raise Hy3Error(f"--from must be one of {', '.join(FORMATS)}, not {fmt!r}")
    src, out = Path(src), Path(out)
    check_file(out, [src], overwrite)  # outputs.py: the output policy
    convert = {"sharegpt": from_sharegpt, "hunyuan-legacy": from_hunyuan_legacy, "alpaca": from_alpaca}[fmt]
    summary = ConvertSummary()
    tmp = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in read_records(src):
                summary.rows += 1
                try:
                    if rec.error:
                        raise Skip(rec.error)
                    row = convert(rec.value)
                    _check(row)
                except Skip as e:
                    summary.skipped.append(f"{src}:{rec.line}: {e}")
                    continue
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                summary.converted += 1
        if summary.skipped and not skip_bad:
            raise Hy3Error(summary.text(None) + "\nnothing written; fix the rows or pass --skip-bad to write the rest")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return summary


def _check(row: dict) -> None:
    _, problems = parse_row(row)
    errors = [p.message for p in problems if p.level == "error"]
    if errors:
        raise Skip("converted row is not a valid Hy3 row: " + "; ".join(errors))


def _obj(row) -> dict:
    if not isinstance(row, dict):
        raise Skip(f"a row must be a JSON object, found {type(row).__name__}")
    return row


def _meta(row: dict, used: set[str]) -> dict:
    return {k: v for k, v in row.items() if k not in used}


def _finish(messages: list[dict], effort: str, tools, meta: dict) -> dict:
    out = {"reasoning_effort": effort, "messages": messages}
    if tools:
        out["tools"] = tools
    if meta:
        out["meta"] = meta
    return out


def _tools(tools):
    if isinstance(tools, str):
        if not tools.strip():
            return None
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise Skip("'tools' is a string but not JSON") from None
    if isinstance(tools, dict):
        tools = [tools]
    return tools or None


def _messages(row: dict) -> tuple[list[dict], str]:
    """The row's turns as role/content dicts, from `conversations` or `messages`, from/value or role/content."""
    key = "conversations" if "conversations" in row else "messages"
    turns = row.get(key)
    if not isinstance(turns, list) or not turns:
        raise Skip("no 'conversations' or 'messages' list")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise Skip(f"{key}[{i}] is not an object")
        role = t.get("from", t.get("role"))
        content = t.get("value", t.get("content"))
        if not isinstance(role, str):
            raise Skip(f"{key}[{i}] has no role ('from' or 'role')")
        if not isinstance(content, str):
            raise Skip(f"{key}[{i}] has no text ('value' or 'content')")
        out.append({"role": role, "content": content})
    return out, key


def _standard(turns: list[dict], key: str) -> list[dict]:
    """Map ShareGPT roles onto Hy3's; function_call turns become assistant tool calls."""
    out = []
    for i, t in enumerate(turns):
        role, content = t["role"], t["content"]
        if role == "system":
            out.append({"role": "system", "content": content})
        elif role in USER_ROLES:
            out.append({"role": "user", "content": content})
        elif role in ASSISTANT_ROLES:
            out.append({"role": "assistant", "content": content})
        elif role in TOOL_ROLES:
            out.append({"role": "tool", "content": content})
        elif role == "function_call":
            try:
                calls = json.loads(content)
            except json.JSONDecodeError:
                raise Skip(f"{key}[{i}] is a function_call whose value is not JSON") from None
            calls = calls if isinstance(calls, list) else [calls]
            if not all(isinstance(c, dict) and "name" in c for c in calls):
                raise Skip(f"{key}[{i}] is a function_call without a function name")
            out.append({"role": "assistant", "content": "",
                        "tool_calls": [{"type": "function", "function": {"name": c["name"],
                                                                         "arguments": c.get("arguments", {})}}
                                       for c in calls]})
        else:
            raise Skip(f"{key}[{i}] has role {role!r}, which has no Hy3 equivalent")
    return out


def _no_legacy(messages: list[dict]) -> None:
    for m in messages:
        if m["role"] == "assistant" and any(t in m["content"] for t in ("<think>", "</think>", "<answer>")):
            raise Skip("assistant text has <think>/<answer> markup: convert with --from hunyuan-legacy")
        if m["role"] == "user" and m["content"].lstrip().startswith(tuple(SWITCHES)):
            raise Skip("user text starts with a /no_think or /think switch: convert with --from hunyuan-legacy")


def from_sharegpt(row) -> dict:
    row = _obj(row)
    turns, key = _messages(row)
    messages = _standard(turns, key)
    if isinstance(row.get("system"), str) and row["system"]:
        messages.insert(0, {"role": "system", "content": row["system"]})
    _no_legacy(messages)
    return _finish(messages, "no_think", _tools(row.get("tools")), _meta(row, {key, "system", "tools"}))


def split_legacy(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) from `<think>\\n..\\n</think>\\n<answer>\\n..\\n</answer>`; the wrapper
    newlines of the old template are removed, nothing else."""
    if not any(t in text for t in ("<think>", "</think>", "<answer>", "</answer>")):
        return None, text
    body = text.lstrip()
    if not body.startswith("<think>") or body.count("<think>") != 1 or body.count("</think>") != 1:
        raise Skip("assistant text does not have exactly one <think>..</think> block at its start")
    think, rest = body[len("<think>"):].split("</think>", 1)
    think = _unwrap(think)
    rest = rest[1:] if rest.startswith("\n") else rest
    if rest.lstrip().startswith("<answer>"):
        rest = rest.lstrip()
        end = rest.rstrip()
        if not end.endswith("</answer>") or rest.count("<answer>") != 1 or rest.count("</answer>") != 1:
            raise Skip("assistant text has an <answer> block that is not closed at its end")
        rest = _unwrap(end[len("<answer>"):-len("</answer>")])
    elif "<answer>" in rest or "</answer>" in rest:
        raise Skip("assistant text has text between </think> and <answer>")
    return (think or None), rest


def _unwrap(s: str) -> str:
    s = s[1:] if s.startswith("\n") else s
    return s[:-1] if s.endswith("\n") else s


def from_hunyuan_legacy(row) -> dict:
    row = _obj(row)
    turns, key = _messages(row)
    messages = _standard(turns, key)
    if isinstance(row.get("system"), str) and row["system"]:
        messages.insert(0, {"role": "system", "content": row["system"]})
    switch = None
    for m in messages:
        if m["role"] == "user":
            switch = None
            head = m["content"].lstrip()
            for s, effort in SWITCHES.items():
                if head.startswith(s):
                    switch = effort
                    m["content"] = head[len(s):].lstrip()
                    break
        elif m["role"] == "assistant" and m["content"]:
            reasoning, m["content"] = split_legacy(m["content"])
            if reasoning is not None:
                m["reasoning_content"] = reasoning
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user") if \
        any(m["role"] == "user" for m in messages) else -1
    thinks = any(m.get("reasoning_content") for m in messages[last_user + 1:])
    if switch == "no_think" and thinks:
        raise Skip("the last user turn says /no_think but the reply has reasoning")
    effort = switch or ("high" if thinks else "no_think")
    return _finish(messages, effort, _tools(row.get("tools")), _meta(row, {key, "system", "tools"}))


def from_alpaca(row) -> dict:
    row = _obj(row)
    instruction, inp, output = row.get("instruction", ""), row.get("input", ""), row.get("output")
    for name, v in (("instruction", instruction), ("input", inp)):
        if not isinstance(v, str):
            raise Skip(f"'{name}' must be text, found {type(v).__name__}")
    if not isinstance(output, str):
        raise Skip("no 'output' text")
    query = f"{instruction}\n{inp}" if instruction and inp else instruction or inp
    messages = []
    if isinstance(row.get("system"), str) and row["system"]:
        messages.append({"role": "system", "content": row["system"]})
    history = row.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, list) and len(h) == 2 for h in history):
        raise Skip("'history' must be a list of [query, response] pairs")
    for q, a in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages += [{"role": "user", "content": query}, {"role": "assistant", "content": output}]
    _no_legacy(messages)
    return _finish(messages, "no_think", None, _meta(row, {"instruction", "input", "output", "system", "history"}))
