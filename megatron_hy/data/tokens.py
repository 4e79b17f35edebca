"""Hy3's control tokens, for the release (`:opensource`) and preview token sets.

The release and preview models share the chat rules and differ only in these strings
(ms-swift 4.6 registers them as templates `hy_v3` and `hy_v3_preview`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import Hy3Error

EFFORTS = ("no_think", "low", "high")
DEFAULT_EFFORT = "no_think"  # what the real chat template uses when reasoning_effort is not given


@dataclass(frozen=True)
class TokenSet:
    name: str
    bos: str
    eos: str
    pad: str
    user: str
    assistant: str
    reasoning_mode: str
    think: str
    think_end: str
    tool_calls: str
    tool_calls_end: str
    tool_call: str
    tool_call_end: str
    tool_sep: str
    arg_key: str
    arg_key_end: str
    arg_value: str
    arg_value_end: str
    tool_responses: str
    tool_responses_end: str
    tool_response: str
    tool_response_end: str

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self) if f.name != "name"]


def _token_set(name: str, tk: str, bos: str) -> TokenSet:
    tag = {t: f"<{t}{tk}>" for t in ("think", "tool_calls", "tool_call", "tool_sep", "arg_key", "arg_value",
                                        "tool_responses", "tool_response")}
    end = {t: f"</{t}{tk}>" for t in ("think", "tool_calls", "tool_call", "arg_key", "arg_value",
                                        "tool_responses", "tool_response")}
    return TokenSet(
        name=name, bos=bos, eos=f"<｜hy_eos{tk}｜>", pad=f"<｜hy_pad{tk}｜>",
        user=f"<｜hy_User{tk}｜>", assistant=f"<｜hy_Assistant{tk}｜>", reasoning_mode=f"<｜reasoning_mode{tk}｜>",
        think=tag["think"], think_end=end["think"],
        tool_calls=tag["tool_calls"], tool_calls_end=end["tool_calls"],
        tool_call=tag["tool_call"], tool_call_end=end["tool_call"], tool_sep=tag["tool_sep"],
        arg_key=tag["arg_key"], arg_key_end=end["arg_key"], arg_value=tag["arg_value"], arg_value_end=end["arg_value"],
        tool_responses=tag["tool_responses"], tool_responses_end=end["tool_responses"],
        tool_response=tag["tool_response"], tool_response_end=end["tool_response"],
    )


RELEASE = _token_set("release", ":opensource", "<｜hy_begin_of_sentence:opensource｜>")
PREVIEW = _token_set("preview", "", "<｜hy_begin▁of▁sentence｜>")  # preview BOS spells "▁" (U+2581), not "_"
VARIANTS = {"release": RELEASE, "preview": PREVIEW}


def get_variant(name: str) -> TokenSet:
    if name not in VARIANTS:
        raise Hy3Error(f"unknown token set {name!r}; expected one of: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def detect_variant(tokenizer, where: str) -> TokenSet:
    """The token set whose BOS is the tokenizer's bos_token (or, failing that, the one it knows all of)."""
    bos = getattr(tokenizer, "bos_token", None)
    for ts in VARIANTS.values():
        if bos == ts.bos:
            return ts
    vocab = tokenizer.get_vocab()
    known = [ts for ts in VARIANTS.values() if all(t in vocab for t in (ts.bos, ts.eos, ts.user, ts.assistant))]
    if len(known) == 1:
        return known[0]
    raise Hy3Error(f"{where}: cannot tell whether this is a Hy3 release or preview tokenizer (bos_token "
                   f"{bos!r}); pass --variant release or --variant preview")
