"""Render a Conversation as Hy3's chat template does, as pieces of text and control tokens.

Each piece says which assistant turn it belongs to (-1: prompt), so the encoder can label any
subset of turns. Labels cover everything after `<｜hy_Assistant｜>` up to and including the eos
that closes the turn: the think block, the content and the tool calls (ms-swift labels the same
span, and so the model learns to open and close its think block itself).

The rules (documented in chat_template.py) in short: BOS, system texts, tool instructions and
`<｜reasoning_mode｜>reasoning_effort:{effort}`; `<｜hy_User｜>{content}`;
`<｜hy_Assistant｜><think>{reasoning}</think>{content}<eos>` with the reasoning only in turns after
the last user turn (in every turn when thinking is preserved, which is the default with tools);
tool results grouped in `<tool_responses>`; every assistant turn closed with eos (is_training).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .chat_template import TOOLS_INTRO, tools_outro
from .rows import Conversation, Turn
from .tokens import TokenSet

PROMPT = -1


@dataclass(slots=True)
class Piece:
    text: str
    special: bool
    turn: int  # index into Conversation.turns of the assistant turn it belongs to, or PROMPT


def render(conv: Conversation, ts: TokenSet, preserved_thinking: bool | None = None) -> list[Piece]:
    out: list[Piece] = []

    def tok(t: str, turn: int = PROMPT) -> None:
        out.append(Piece(t, True, turn))

    def text(s: str, turn: int = PROMPT) -> None:
        if not s:
            return
        if out and not out[-1].special and out[-1].turn == turn:
            out[-1].text += s
        else:
            out.append(Piece(s, False, turn))

    keep_all = bool(conv.tools) if preserved_thinking is None else preserved_thinking
    last_user = conv.last_user()
    tok(ts.bos)
    text(conv.system)
    if conv.tools:
        text(("\n\n" if conv.system else "") + TOOLS_INTRO
             + "\n".join(json.dumps(t, ensure_ascii=False) for t in conv.tools) + tools_outro(ts))
    tok(ts.reasoning_mode)
    text(f"reasoning_effort:{conv.effort}")
    prev = ""
    for i, t in enumerate(conv.turns):
        if prev == "tool" and t.role != "tool":
            tok(ts.tool_responses_end)
        if t.role == "user":
            tok(ts.user)
            text(t.content)
        elif t.role == "tool":
            if prev != "tool":
                tok(ts.tool_responses)
                text("\n")
            tok(ts.tool_response)
            text("\n" + t.content + "\n")
            tok(ts.tool_response_end)
            text("\n")
        else:
            tok(ts.assistant)
            _assistant(t, i, ts, keep_all or i > last_user, tok, text)
        prev = t.role
    if prev == "tool":
        tok(ts.tool_responses_end)
    return out


def _assistant(t: Turn, i: int, ts: TokenSet, with_reasoning: bool, tok, text) -> None:
    tok(ts.think, i)
    if with_reasoning and t.reasoning:
        text(t.reasoning, i)
    tok(ts.think_end, i)
    text(t.content, i)
    if t.tool_calls:
        tok(ts.tool_calls, i)
        text("\n", i)
        for call in t.tool_calls:
            tok(ts.tool_call, i)
            text(call["name"], i)
            tok(ts.tool_sep, i)
            text("\n", i)
            for k, v in call["arguments"].items():
                tok(ts.arg_key, i)
                text(k, i)
                tok(ts.arg_key_end, i)
                text("\n", i)
                tok(ts.arg_value, i)
                text(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False), i)
                tok(ts.arg_value_end, i)
                text("\n", i)
            tok(ts.tool_call_end, i)
            text("\n", i)
        tok(ts.tool_calls_end, i)
    tok(ts.eos, i)


def to_messages(conv: Conversation) -> list[dict]:
    """The conversation in the OpenAI form chat templates take (for the jinja backend)."""
    msgs = [{"role": "system", "content": conv.system}] if conv.system else []
    for t in conv.turns:
        m = {"role": t.role, "content": t.content}
        if t.role == "assistant":
            if t.reasoning is not None:
                m["reasoning_content"] = t.reasoning
            if t.tool_calls:
                m["tool_calls"] = [{"type": "function", "function": dict(c)} for c in t.tool_calls]
        msgs.append(m)
    return msgs
