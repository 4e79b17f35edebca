"""The Hy3 training row: parse it into a Conversation and say what is wrong with it.

A row (seed 000's format, plus what the chat template accepts):
    {"reasoning_effort": "high" | "low" | "no_think",        optional, default no_think
     "tools": [{"type": "function", "function": {...}}, ...], optional
     "messages": [{"role": "system" | "user" | "assistant" | "tool", "content": "..."},
                  ...]}
Assistant messages may carry "reasoning_content" (the think block), "tool_calls" (OpenAI form)
and "loss" (true/false: train this turn or not, whatever the loss mode); any message may carry
"meta" (kept, not encoded), as the row may. ms-swift's own spellings
are accepted too: `chat_template_kwargs.reasoning_effort`, `tool_call` messages (content
{"name", "arguments"}) and `tool_response` for `tool`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .tokens import DEFAULT_EFFORT, EFFORTS, PREVIEW, RELEASE

ROW_KEYS = {"messages", "reasoning_effort", "tools", "chat_template_kwargs", "meta"}  # meta: kept, not encoded
MESSAGE_KEYS = {"role", "content", "reasoning_content", "tool_calls", "loss", "name", "tool_call_id", "meta"}
ROLES = {"system", "user", "assistant", "tool", "tool_call", "tool_response"}
CONTROL_TOKENS = sorted(set(RELEASE.all()) | set(PREVIEW.all()), key=len, reverse=True)
_CONTROL = re.compile("|".join(re.escape(t) for t in CONTROL_TOKENS))  # longest first: the whole token matches
LEGACY_MARKUP = ("<answer>", "</answer>")


@dataclass
class Turn:
    role: str  # user | assistant | tool
    content: str = ""
    reasoning: str | None = None
    tool_calls: list[dict] = field(default_factory=list)  # [{"name": str, "arguments": dict}]
    loss: bool | None = None
    index: int = 0  # position in the row's messages, for messages


@dataclass
class Conversation:
    effort: str
    system: str
    tools: list | None
    turns: list[Turn]

    def assistant_turns(self) -> list[int]:
        return [i for i, t in enumerate(self.turns) if t.role == "assistant"]

    def last_user(self) -> int:
        return max((i for i, t in enumerate(self.turns) if t.role == "user"), default=-1)


@dataclass
class Problem:
    level: str  # error | warning
    code: str
    message: str


class _Checker:
    def __init__(self):
        self.problems: list[Problem] = []

    def error(self, code: str, msg: str) -> None:
        self.problems.append(Problem("error", code, msg))

    def warn(self, code: str, msg: str) -> None:
        self.problems.append(Problem("warning", code, msg))

    @property
    def ok(self) -> bool:
        return not any(p.level == "error" for p in self.problems)

    def text(self, where: str, value, role: str = "") -> None:
        m = _CONTROL.search(value)
        if m:
            token = m.group()
            self.error("control-token", f"{where} contains the control token {token!r}: it would be encoded as that "
                                        "token, not as text")
        elif role == "assistant" and any(m in value for m in LEGACY_MARKUP):
            self.error("legacy-markup", f"{where} has Hunyuan <answer> markup; move the thinking to reasoning_content "
                                        "(hy3 data convert --from hunyuan-legacy)")


def parse_row(row) -> tuple[Conversation | None, list[Problem]]:
    """The row as a Conversation (None when it has errors), and every problem found."""
    ck = _Checker()
    if not isinstance(row, dict):
        ck.error("row", f"a row must be a JSON object, found {type(row).__name__}")
        return None, ck.problems
    for k in sorted(set(row) - ROW_KEYS):
        ck.warn("unknown-key", f"key {k!r} is not part of a Hy3 row and is ignored")
    effort = _effort(row, ck)
    tools = _tools(row.get("tools"), ck)
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        ck.error("messages", "'messages' must be a non-empty list" if "messages" in row else "no 'messages' list")
        return None, ck.problems
    system, turns = _turns(msgs, ck)
    if not ck.ok:
        return None, ck.problems
    _order(turns, ck)
    conv = Conversation(effort or DEFAULT_EFFORT, system, tools, turns)
    if ck.ok:
        _reasoning(conv, effort, ck)
    if any(t.tool_calls for t in turns) and not tools:
        ck.warn("no-tools", "the row makes tool calls but gives no 'tools': the header will carry no tool instructions")
    return (conv if ck.ok else None), ck.problems


def _effort(row: dict, ck: _Checker) -> str | None:
    effort = row.get("reasoning_effort")
    kwargs = row.get("chat_template_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, dict):
            ck.error("effort", "'chat_template_kwargs' must be an object")
        else:
            for k in sorted(set(kwargs) - {"reasoning_effort"}):
                ck.warn("unknown-key", f"chat_template_kwargs.{k} is not used by Hy3's template and is ignored")
            other = kwargs.get("reasoning_effort")
            if other is not None and effort is not None and other != effort:
                ck.error("effort", f"reasoning_effort {effort!r} and chat_template_kwargs.reasoning_effort {other!r} "
                                   "disagree")
            effort = effort if effort is not None else other
    if effort is not None and effort not in EFFORTS:
        ck.error("effort", f"reasoning_effort must be one of {', '.join(EFFORTS)}, found {effort!r}")
        return None
    return effort


def _tools(tools, ck: _Checker) -> list | None:
    if tools is None:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            ck.error("tools", "'tools' is a string but not JSON")
            return None
    if not isinstance(tools, list):
        ck.error("tools", f"'tools' must be a list of function specs, found {type(tools).__name__}")
        return None
    for i, t in enumerate(tools):
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            ck.error("tools", f"tools[{i}] must be an object with a function name")
    return tools or None


def _tool_call(raw, where: str, ck: _Checker) -> dict | None:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            ck.error("tool-call", f"{where} is a string but not JSON")
            return None
    fn = raw.get("function", raw) if isinstance(raw, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        ck.error("tool-call", f"{where} must be an object with a function name")
        return None
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            ck.error("tool-call", f"{where}.arguments is a string but not JSON")
            return None
    if not isinstance(args, dict):
        ck.error("tool-call", f"{where}.arguments must be a JSON object, found {type(args).__name__}")
        return None
    ck.text(f"{where}.name", fn["name"])
    for k, v in args.items():
        ck.text(f"{where}.arguments.{k}", k + (v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)))
    return {"name": fn["name"], "arguments": args}


def _turns(msgs: list, ck: _Checker) -> tuple[str, list[Turn]]:
    system, turns = "", []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            ck.error("message", f"{where} must be an object")
            continue
        role = m.get("role")
        if role not in ROLES:
            ck.error("role", f"{where}.role must be one of system, user, assistant, tool, found {role!r}")
            continue
        for k in sorted(set(m) - MESSAGE_KEYS):
            ck.warn("unknown-key", f"{where}: key {k!r} is ignored")
        for k in ("reasoning_content", "tool_calls", "loss"):
            if k in m and role != "assistant" and not (k == "loss" and role == "tool_call"):
                ck.error("misplaced", f"{where}: {k} is only allowed on assistant messages")
        content = m.get("content")
        if role == "tool_call":
            call = _tool_call(content, f"{where}.content", ck)
            if call is None:
                continue
            prev = turns[-1] if turns else None
            if prev is not None and prev.role == "assistant" and (prev.tool_calls or prev.index == i - 1):
                prev.tool_calls.append(call)
            else:
                turns.append(Turn("assistant", "", tool_calls=[call], index=i, loss=_loss(m, where, ck)))
            continue
        if role == "assistant" and content is None and m.get("tool_calls"):
            content = ""
        if not isinstance(content, str):
            ck.error("content", f"{where}.content must be a string, found {type(content).__name__}")
            continue
        ck.text(f"{where}.content", content, role)
        if role == "system":
            if turns:
                ck.error("order", f"{where}: a system message after the conversation started (Hy3's template moves "
                                  "every system text into the header); put it first")
            system += content
            continue
        turn = Turn("tool" if role == "tool_response" else role, content, index=i)
        if role == "assistant":
            turn.reasoning = _reasoning_text(m, where, ck)
            turn.loss = _loss(m, where, ck)
            calls = m.get("tool_calls")
            if calls is not None:
                if not isinstance(calls, list):
                    ck.error("tool-call", f"{where}.tool_calls must be a list")
                else:
                    parsed = [_tool_call(c, f"{where}.tool_calls[{j}]", ck) for j, c in enumerate(calls)]
                    turn.tool_calls = [c for c in parsed if c is not None]
        turns.append(turn)
    return system, turns


def _reasoning_text(m: dict, where: str, ck: _Checker) -> str | None:
    r = m.get("reasoning_content")
    if r is not None and not isinstance(r, str):
        ck.error("reasoning", f"{where}.reasoning_content must be a string, found {type(r).__name__}")
        return None
    if r:
        ck.text(f"{where}.reasoning_content", r)
    return r


def _loss(m: dict, where: str, ck: _Checker) -> bool | None:
    loss = m.get("loss")
    if loss is not None and not isinstance(loss, bool):
        ck.error("loss", f"{where}.loss must be true or false, found {loss!r}")
        return None
    return loss


def _order(turns: list[Turn], ck: _Checker) -> None:
    if not turns:
        ck.error("order", "the row has no user or assistant turn")
        return
    if turns[0].role != "user":
        ck.error("order", f"messages[{turns[0].index}]: the conversation must start with a user turn, "
                          f"found {turns[0].role}")
    for prev, t in zip(turns, turns[1:]):
        where = f"messages[{t.index}]"
        if t.role == prev.role and t.role != "tool":
            ck.error("order", f"{where}: two {t.role} turns in a row (messages[{prev.index}] and this one); "
                              "merge them or put a turn of the other role between")
        elif t.role == "tool" and prev.role == "user":
            ck.error("order", f"{where}: a tool result must follow an assistant turn that made tool calls")
        elif t.role == "tool" and prev.role == "assistant" and not prev.tool_calls:
            ck.error("order", f"{where}: a tool result follows messages[{prev.index}], which made no tool calls")
    for i, t in enumerate(turns):
        if t.role == "assistant" and t.tool_calls:
            n = 0
            while i + 1 + n < len(turns) and turns[i + 1 + n].role == "tool":
                n += 1
            if n and n != len(t.tool_calls):
                ck.error("tool-call", f"messages[{t.index}] makes {len(t.tool_calls)} tool call(s) but {n} tool "
                                      "result(s) follow")
        if t.role == "user" and not t.content.strip():
            ck.error("empty", f"messages[{t.index}]: empty user turn")
        if t.role == "assistant" and not t.content.strip() and not t.tool_calls and not t.reasoning:
            ck.error("empty", f"messages[{t.index}]: empty assistant turn (no content, reasoning or tool calls)")
        if t.role == "tool" and not t.content.strip():
            ck.warn("empty", f"messages[{t.index}]: empty tool result")
        if t.role == "user" and t.content.lstrip().startswith(("/no_think", "/think")):
            ck.warn("legacy-switch", f"messages[{t.index}]: the user turn starts with a Hunyuan /no_think or /think "
                                     "switch, which Hy3 does not use; set reasoning_effort instead "
                                     "(hy3 data convert --from hunyuan-legacy)")
    if turns[-1].role != "assistant":
        ck.error("order", f"messages[{turns[-1].index}]: the row ends with a {turns[-1].role} turn; a training row "
                          "must end with an assistant turn")


def _reasoning(conv: Conversation, given: str | None, ck: _Checker) -> None:
    last_user = conv.last_user()
    kept = bool(conv.tools)  # the template keeps all reasoning when tools are given (preserved_thinking)
    final = [t for t in conv.turns[last_user + 1:] if t.role == "assistant"]
    effort = given or DEFAULT_EFFORT
    if effort == "no_think":
        for t in final:
            if t.reasoning:
                how = "is no_think" if given else "is not given (no_think)"
                ck.error("reasoning", f"messages[{t.index}] has reasoning_content but reasoning_effort {how}: set "
                                      "reasoning_effort to low or high, or drop the reasoning")
    elif final and not any(t.reasoning for t in final):
        ck.warn("no-reasoning", f"reasoning_effort is {effort} but the reply (messages[{final[-1].index}]) has no "
                                "reasoning_content: it trains an empty think block")
    if not kept:
        for t in conv.turns[:last_user]:
            if t.role == "assistant" and t.reasoning:
                ck.warn("history-reasoning", f"messages[{t.index}].reasoning_content is not rendered: Hy3's template "
                                             "drops reasoning before the last user turn (--loss-mode per-turn "
                                             "trains it)")
