"""A Jinja chat template for the stand-in tokenizer, written from the documented rules of Hy3's
chat_template.jinja (the real one ships with the model and cannot be downloaded here):

- header: BOS, every system text concatenated, then (with tools) the tool instructions, then
  `<｜reasoning_mode｜>reasoning_effort:{effort}`; effort defaults to no_think, anything outside
  {no_think, low, high} raises;
- user: `<｜hy_User｜>{content}`, not trimmed;
- assistant: `<｜hy_Assistant｜><think>{reasoning}</think>{content}` then eos; the reasoning is
  rendered only for turns after the last user turn, or for every turn when `preserved_thinking`
  (default: true when tools are given); the last turn is closed with eos only when `is_training`;
- tool calls: `<tool_calls>\\n`, per call `<tool_call>name<tool_sep>\\n`, per argument
  `<arg_key>k</arg_key>\\n<arg_value>v</arg_value>\\n`, `</tool_call>\\n`, then `</tool_calls>` and eos;
- tool results: `<tool_responses>\\n`, per result `<tool_response>\\n{content}\\n</tool_response>\\n`,
  closed by `</tool_responses>` before the next turn;
- generation prompt: `<｜hy_Assistant｜><think>`, plus `</think>` at no_think.

`template_for(token_set)` fills in the token strings of the release or preview set.
"""

from __future__ import annotations

import json

from .tokens import TokenSet

TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n")


def tools_outro(ts: TokenSet) -> str:
    return (f"\n</tools>\n\nFor function call returns, you should first print {ts.tool_calls}\n"
            "For each function call, you should return object like:\n"
            f"{ts.tool_call}{{function-name}}{ts.tool_sep}\n"
            f"{ts.arg_key}{{arg-key-1}}{ts.arg_key_end}\n{ts.arg_value}{{arg-value-1}}{ts.arg_value_end}\n"
            f"{ts.arg_key}{{arg-key-2}}{ts.arg_key_end}\n{ts.arg_value}{{arg-value-2}}{ts.arg_value_end}\n"
            f"...\n{ts.tool_call_end}\nAt the end of function call returns, you should print {ts.tool_calls_end}")


BODY = r"""
{%- set effort = reasoning_effort if reasoning_effort is defined and reasoning_effort is not none else 'no_think' -%}
{%- if effort not in ['no_think', 'low', 'high'] -%}
{{- raise_exception('reasoning_effort must be no_think, low or high, not ' ~ effort) -}}
{%- endif -%}
{%- set has_tools = tools is defined and tools -%}
{%- if preserved_thinking is defined and preserved_thinking is not none -%}
{%- set keep_all = preserved_thinking -%}
{%- else -%}
{%- set keep_all = has_tools -%}
{%- endif -%}
{%- set training = is_training is defined and is_training -%}
{%- set ns = namespace(system='', last_user=-1) -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}{%- set ns.system = ns.system ~ m.content -%}{%- endif -%}
{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{{- tk.bos ~ ns.system -}}
{%- if has_tools -%}
{%- if ns.system -%}{{- '\n\n' -}}{%- endif -%}
{{- tk.tools_intro -}}
{%- for t in tools -%}{%- if not loop.first -%}{{- '\n' -}}{%- endif -%}{{- t | tojson -}}{%- endfor -%}
{{- tk.tools_outro -}}
{%- endif -%}
{{- tk.reasoning_mode ~ 'reasoning_effort:' ~ effort -}}
{%- for m in messages -%}
{%- set prev = messages[loop.index0 - 1].role if loop.index0 > 0 else '' -%}
{%- if m.role == 'user' -%}
{%- if prev == 'tool' -%}{{- tk.tool_responses_end -}}{%- endif -%}
{{- tk.user ~ m.content -}}
{%- elif m.role == 'assistant' -%}
{%- if prev == 'tool' -%}{{- tk.tool_responses_end -}}{%- endif -%}
{{- tk.assistant ~ tk.think -}}
{%- if (loop.index0 > ns.last_user or keep_all) and m.reasoning_content -%}{{- m.reasoning_content -}}{%- endif -%}
{{- tk.think_end -}}
{%- if m.content -%}{{- m.content -}}{%- endif -%}
{%- if m.tool_calls -%}
{{- tk.tool_calls ~ '\n' -}}
{%- for c in m.tool_calls -%}
{%- set f = c.function if c.function is defined else c -%}
{{- tk.tool_call ~ f.name ~ tk.tool_sep ~ '\n' -}}
{%- for k, v in f.arguments.items() -%}
{{- tk.arg_key ~ k ~ tk.arg_key_end ~ '\n' ~ tk.arg_value -}}
{{- v if v is string else v | tojson -}}
{{- tk.arg_value_end ~ '\n' -}}
{%- endfor -%}
{{- tk.tool_call_end ~ '\n' -}}
{%- endfor -%}
{{- tk.tool_calls_end ~ tk.eos -}}
{%- elif not loop.last or training -%}
{{- tk.eos -}}
{%- endif -%}
{%- elif m.role == 'tool' -%}
{%- if prev != 'tool' -%}{{- tk.tool_responses ~ '\n' -}}{%- endif -%}
{{- tk.tool_response ~ '\n' ~ m.content ~ '\n' ~ tk.tool_response_end ~ '\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if messages and messages[-1].role == 'tool' -%}{{- tk.tool_responses_end -}}{%- endif -%}
{%- if add_generation_prompt and (not messages or messages[-1].role != 'assistant') -%}
{{- tk.assistant ~ tk.think -}}
{%- if effort == 'no_think' -%}{{- tk.think_end -}}{%- endif -%}
{%- endif -%}
"""


def template_for(ts: TokenSet) -> str:
    """The template text with the token set's strings bound to `tk`."""
    tk = {name: getattr(ts, name) for name in ts.__dataclass_fields__ if name != "name"}
    tk["tools_intro"] = TOOLS_INTRO
    tk["tools_outro"] = tools_outro(ts)
    return "{%- set tk = " + json.dumps(tk, ensure_ascii=False) + " -%}" + BODY
