"""`hy3 data convert`: ShareGPT, OpenAI/ms-swift messages, older Hunyuan (<think>/<answer>, /no_think)
and Alpaca rows to Hy3 rows.

Lossless where the source allows: legacy think text becomes `reasoning_content` exactly as the
old template wrapped it (`<think>\\n{think}\\n</think>\\n<answer>\\n{answer}\\n</answer>`); the keys a
Hy3 row has (`reasoning_effort`, `tools`, `chat_template_kwargs`; per message `reasoning_content`,
`tool_calls`, `loss`, `name`, `tool_call_id`) are taken as given; OpenAI's `weight` becomes `loss`
and its `function_call` a tool call; every other key is kept under the row's or the message's
`meta`. Each written row records where it came from in `meta.converted_from`. A row that cannot
be converted faithfully is not converted, and the reason is reported with its file:line.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Hy3Error
from ..outputs import check_file, temp_file
from ..progress import Progress
from .reader import read_records
from .rows import MESSAGE_KEYS, parse_row
from .validate import EMPTY

FORMATS = ("sharegpt", "hunyuan-legacy", "alpaca")
USER_ROLES = {"human": "user", "user": "user"}
ASSISTANT_ROLES = {"gpt": "assistant", "assistant": "assistant", "bot": "assistant", "model": "assistant",
                   "chatgpt": "assistant"}
TOOL_ROLES = {"observation": "tool", "tool": "tool", "tool_response": "tool", "function": "tool"}
ROLES = {"system": "system", **USER_ROLES, **ASSISTANT_ROLES, **TOOL_ROLES}
CALL_ROLES = ("function_call", "tool_call")  # a turn whose text is the call(s) as JSON
SWITCHES = {"/no_think": "no_think", "/think": "high"}
ROW_TAKEN = ("reasoning_effort", "tools", "chat_template_kwargs")  # Hy3 row keys, taken as given
MESSAGE_TAKEN = tuple(sorted(MESSAGE_KEYS - {"role", "content", "meta"}))
PROVENANCE = "converted_from"  # meta key: ["IN:LINE", ...], one entry per conversion


class Skip(Exception):
    """The row cannot be converted faithfully; the message says why."""


@dataclass
class ConvertSummary:
    rows: int = 0
    kept: int = 0  # already Hy3 rows: written as given (plus their source in meta)
    converted: int = 0
    refused: list[str] = field(default_factory=list)  # "file:line: why"
    moved: Counter = field(default_factory=Counter)  # key -> rows where it was kept under meta

    @property
    def written(self) -> int:
        return self.kept + self.converted

    def to_json(self, out: Path | None) -> dict:
        return {"output": str(out) if out else None, "rows": self.rows, "kept": self.kept,
                "converted": self.converted, "written": self.written if out else 0, "refused": self.refused,
                "kept_under_meta": dict(sorted(self.moved.items()))}

    def text(self, written: bool = True) -> str:
        could = "" if written else "could be "
        counts = (f"{self.rows} rows read: {self.kept} {could}kept as given (already Hy3 rows), {self.converted} "
                  f"{could}converted, {len(self.refused)} refused")
        lines = [counts]
        if self.moved:
            lines.append("keys with no place in a Hy3 row, kept under 'meta': "
                         + ", ".join(f"{k} ({n} rows)" for k, n in sorted(self.moved.items())))
        if self.refused:
            reasons = Counter(s.split(": ", 1)[1] for s in self.refused)
            lines.append(f"{len(self.refused)} rows refused:")
            lines += [f"  {s}" for s in self.refused[:20]]
            if len(self.refused) > 20:
                lines.append(f"  ... and {len(self.refused) - 20} more; by reason:")
                lines += [f"  {n} x {r}" for r, n in reasons.most_common()]
        return "\n".join(lines)


def convert_file(src: str | Path, out: str | Path, fmt: str, skip_bad: bool = False,
                 overwrite: bool = False, quiet: bool = True) -> ConvertSummary:
    """Write the rows of `src` that convert to `out`; with any row refused, write nothing unless `skip_bad`.
    A file without rows, or without one row that converts, is an error: nothing is written."""
    if fmt not in FORMATS:
        raise Hy3Error(f"--from must be one of {', '.join(FORMATS)}, not {fmt!r}")
    src, out = Path(src), Path(out)
    check_file(out, [src], overwrite)  # outputs.py: the output policy
    convert = {"sharegpt": from_sharegpt, "hunyuan-legacy": from_hunyuan_legacy, "alpaca": from_alpaca}[fmt]
    summary = ConvertSummary()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not src.is_file():
        raise Hy3Error(f"{src}: no such file")
    prog = Progress("convert", src.stat().st_size, quiet=quiet)
    tmp = temp_file(out)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in read_records(src, prog.update_to):
                summary.rows += 1
                where, moved = f"{src}:{rec.line}", set()
                try:
                    if rec.error:
                        raise Skip(rec.error)
                    row = convert(rec.value, moved)
                    _check(row)
                    kept = _same(row, rec.value)
                    _provenance(row, where)
                except Skip as e:
                    summary.refused.append(f"{where}: {e}")
                    continue
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                summary.kept += kept
                summary.converted += not kept
                summary.moved.update(moved)
        prog.update_to(src.stat().st_size)
        prog.finish()
        if not summary.rows:
            raise Hy3Error(f"{src}: {EMPTY}; nothing written")
        if summary.refused and not skip_bad:
            raise Hy3Error(summary.text(written=False) + "\nnothing written; fix the rows, or pass --skip-bad to "
                                                         "write the others (exit 1) or --allow-bad (exit 0)")
        if not summary.written:
            raise Hy3Error(summary.text(written=False) + f"\nnothing written: no row of {src} converts")
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


def _same(row: dict, src) -> bool:
    """Whether the source already was this Hy3 row (its meta aside)."""
    def bare(r):
        return {k: v for k, v in r.items() if k != "meta"}
    return isinstance(src, dict) and bare(row) == bare(src)


def _provenance(row: dict, where: str) -> None:
    if "meta" not in row:
        row["meta"] = {PROVENANCE: [where]}
    elif not isinstance(row["meta"], dict):
        row["meta"] = {"meta": row["meta"], PROVENANCE: [where]}
    else:
        before = row["meta"].get(PROVENANCE, [])
        if not isinstance(before, list) or not all(isinstance(w, str) for w in before):
            raise Skip(f"meta.{PROVENANCE} is not a list of file:line texts (convert appends each row's source "
                       "there)")
        row["meta"] = {**row["meta"], PROVENANCE: before + [where]}


def _obj(row) -> dict:
    if not isinstance(row, dict):
        raise Skip(f"a row must be a JSON object, found {type(row).__name__}")
    return row


def _meta(src: dict, used: set, where: str, moved: set | None, label: str = "") -> dict:
    """{"meta": ...} for a converted row or message: its own `meta` plus every key not in `used`."""
    extra = {k: v for k, v in src.items() if k not in used and k != "meta"}
    if moved is not None:
        moved.update(label + k for k in extra)
    if "meta" not in src:
        return {"meta": extra} if extra else {}
    meta = src["meta"]
    if not extra:
        return {"meta": meta}
    if not isinstance(meta, dict):
        return {"meta": {"meta": meta, **extra}}
    clash = sorted(set(meta) & set(extra))
    if clash:
        raise Skip(f"{where} has the key {clash[0]!r} both itself and in its 'meta'")
    return {"meta": {**meta, **extra}}


def _finish(row: dict, messages: list[dict], effort: str, used: set, moved: set | None) -> dict:
    out = {"reasoning_effort": effort, "messages": messages}
    tools = _tools(row.get("tools"))
    if tools:
        out["tools"] = tools
    if "chat_template_kwargs" in row:
        out["chat_template_kwargs"] = row["chat_template_kwargs"]
    out.update(_meta(row, used | {"system", *ROW_TAKEN}, "the row", moved))
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


def _system(row: dict) -> list[dict]:
    s = row.get("system")
    if s is None or s == "":
        return []
    if not isinstance(s, str):
        raise Skip(f"'system' must be text, found {type(s).__name__}")
    return [{"role": "system", "content": s}]


def _effort(row: dict, messages: list[dict], switch: str | None = None) -> str:
    """The row's own reasoning_effort; else the legacy switch; else high when the reply has reasoning."""
    given = row.get("reasoning_effort")
    kwargs = row.get("chat_template_kwargs")
    if given is None and isinstance(kwargs, dict):
        given = kwargs.get("reasoning_effort")
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    thinks = any(m.get("reasoning_content") for m in messages[last_user + 1:])
    if given is not None:
        if switch is not None and (switch == "no_think") != (given == "no_think"):
            raise Skip(f"reasoning_effort is {given!r} but the last user turn says "
                       f"{'/no_think' if switch == 'no_think' else '/think'}")
        return given
    if switch == "no_think" and thinks:
        raise Skip("the last user turn says /no_think but the reply has reasoning")
    return switch or ("high" if thinks else "no_think")


def _messages(row: dict, moved: set | None) -> tuple[list[dict], str]:
    """The row's system text and turns as Hy3 messages, from `conversations` or `messages`, from/value
    or role/content; a call turn that follows an assistant turn joins it (as in ms-swift)."""
    key = "conversations" if "conversations" in row else "messages"
    turns = row.get(key)
    if not isinstance(turns, list) or not turns:
        raise Skip("no 'conversations' or 'messages' list")
    out = _system(row)
    for i, t in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(t, dict):
            raise Skip(f"{where} is not an object")
        m, call = _message(t, where, moved, f"{key}[].")
        if call and out and out[-1]["role"] == "assistant":
            _join_call(out[-1], m, where)
        else:
            out.append(m)
    return out, key


def _message(t: dict, where: str, moved: set | None, label: str) -> tuple[dict, bool]:
    rk = "from" if "from" in t else "role"
    ck = "value" if "value" in t else "content"
    role, content = t.get(rk), t.get(ck)
    if not isinstance(role, str):
        raise Skip(f"{where} has no role ('from' or 'role')")
    if role in CALL_ROLES:
        m = {"role": "assistant", "content": "", "tool_calls": _calls(content, where)}
    elif role in ROLES:
        m = {"role": ROLES[role], "content": content}
    else:
        raise Skip(f"{where} has role {role!r}, which has no Hy3 equivalent")
    for k in MESSAGE_TAKEN:
        if k in t:
            if k in m:
                raise Skip(f"{where} is a {role} turn and has '{k}' too")
            m[k] = t[k]
    used = {rk, ck, *MESSAGE_TAKEN}
    if m["role"] == "assistant":
        used |= _openai_keys(t, m, where)
    if m["content"] is None and m.get("tool_calls"):
        m["content"] = ""
    if not isinstance(m["content"], str):
        raise Skip(f"{where} has no text ('value' or 'content')")
    m.update(_meta(t, used, where, moved, label))
    return m, role in CALL_ROLES


def _openai_keys(t: dict, m: dict, where: str) -> set:
    """OpenAI's fine-tuning `weight` (0/1) as `loss`, its older `function_call` as a tool call."""
    used = set()
    if "weight" in t:
        w = t["weight"]
        if isinstance(w, bool) or w not in (0, 1):
            raise Skip(f"{where}.weight must be 0 or 1, found {w!r}")
        if "loss" in m and m["loss"] is not bool(w):
            raise Skip(f"{where} has loss {m['loss']!r} and weight {w!r}, which disagree")
        m["loss"] = bool(w)
        used.add("weight")
    if "function_call" in t:
        if "tool_calls" in m:
            raise Skip(f"{where} has both function_call and tool_calls")
        m["tool_calls"] = [{"type": "function", "function": t["function_call"]}]
        used.add("function_call")
    return used


def _calls(content, where: str) -> list[dict]:
    """A function_call / tool_call turn's call(s), OpenAI form; every key of each call is kept."""
    try:
        calls = json.loads(content) if isinstance(content, str) else content
    except json.JSONDecodeError:
        raise Skip(f"{where} is a tool call whose value is not JSON") from None
    calls = calls if isinstance(calls, list) else [calls]
    if not calls or not all(isinstance(c, dict) and ("name" in c or "function" in c) for c in calls):
        raise Skip(f"{where} is a tool call without a function name")
    return [c if "function" in c else {"type": "function", "function": c} for c in calls]


def _join_call(prev: dict, m: dict, where: str) -> None:
    extra = sorted(set(m) - {"role", "content", "tool_calls", "loss"})
    if extra:
        raise Skip(f"{where} continues the assistant turn before it, but has its own {extra[0]!r}")
    if "loss" in m and prev.get("loss", m["loss"]) is not m["loss"]:
        raise Skip(f"{where} continues the assistant turn before it, but with another loss")
    if not isinstance(prev.get("tool_calls", []), list):
        raise Skip(f"{where} continues an assistant turn whose tool_calls is not a list")
    prev["tool_calls"] = prev.get("tool_calls", []) + m["tool_calls"]
    if "loss" in m:
        prev["loss"] = m["loss"]


def _legacy_markup(text: str) -> bool:
    return any(t in text for t in ("<think>", "</think>", "<answer>", "</answer>"))


def _no_legacy(messages: list[dict]) -> None:
    for m in messages:
        if m["role"] == "assistant" and _legacy_markup(m["content"]):
            raise Skip("assistant text has <think>/<answer> markup: convert with --from hunyuan-legacy")
        if m["role"] == "user" and m["content"].lstrip().startswith(tuple(SWITCHES)):
            raise Skip("user text starts with a /no_think or /think switch: convert with --from hunyuan-legacy")


def from_sharegpt(row, moved: set | None = None) -> dict:
    row = _obj(row)
    messages, key = _messages(row, moved)
    _no_legacy(messages)
    return _finish(row, messages, _effort(row, messages), {key}, moved)


def split_legacy(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) from `<think>\\n..\\n</think>\\n<answer>\\n..\\n</answer>`; the wrapper
    newlines of the old template are removed, nothing else."""
    if not _legacy_markup(text):
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


def from_hunyuan_legacy(row, moved: set | None = None) -> dict:
    row = _obj(row)
    messages, key = _messages(row, moved)
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
        elif m["role"] == "assistant" and _legacy_markup(m["content"]):
            if "reasoning_content" in m:
                raise Skip("an assistant turn has reasoning_content and <think>/<answer> markup too")
            reasoning, m["content"] = split_legacy(m["content"])
            if reasoning is not None:
                m["reasoning_content"] = reasoning
    return _finish(row, messages, _effort(row, messages, switch), {key}, moved)


def from_alpaca(row, moved: set | None = None) -> dict:
    row = _obj(row)
    instruction, inp, output = row.get("instruction", ""), row.get("input", ""), row.get("output")
    for name, v in (("instruction", instruction), ("input", inp)):
        if not isinstance(v, str):
            raise Skip(f"'{name}' must be text, found {type(v).__name__}")
    if not isinstance(output, str):
        raise Skip("no 'output' text")
    query = f"{instruction}\n{inp}" if instruction and inp else instruction or inp
    messages = _system(row)
    history = row.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, list) and len(h) == 2
                                                 and all(isinstance(x, str) for x in h) for h in history):
        raise Skip("'history' must be a list of [query, response] text pairs")
    for q, a in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages += [{"role": "user", "content": query}, {"role": "assistant", "content": output}]
    _no_legacy(messages)
    return _finish(row, messages, _effort(row, messages), {"instruction", "input", "output", "history"}, moved)
