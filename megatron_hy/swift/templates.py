"""ms-swift plugin: Hy3 templates that train on what each row says.

    megatron sft --custom_register_path /path/to/megatron_hy/swift/templates.py --template hy3 ...

Registers `hy3` (release tokens) and `hy3_preview`. They are ms-swift's own `hy_v3` /
`hy_v3_preview` template classes (inference is theirs, unchanged) with training encode replaced
by this package's Hy3 encoder, so that
- a row's `reasoning_effort` (or `chat_template_kwargs.reasoning_effort`) sets its header;
  rows without one use the template-wide effort (ms-swift's `reasoning_effort` setting, no_think
  by default);
- `reasoning_content` fills the think block of the turns after the last user turn (ms-swift 4.6
  renders an empty think block and drops it);
- `--loss_scale default` trains every assistant turn, `last_round` the final one, and a
  message's `loss` field still overrides either;
- rows already encoded by `hy3 data encode` (`input_ids`, `labels`, optional `position_ids`) pass
  through as they are: that is how `--cached_dataset` output of `hy3 data encode` is trained.

ms-swift's dataset loader (`--dataset FILE`) drops message keys other than role/content/loss and
row keys it does not know, `reasoning_content` and `reasoning_effort` among them; encode the
rows with `hy3 data encode --swift-dataset DIR` and train with `--cached_dataset DIR` instead.
"""

from __future__ import annotations

from swift.loss_scale import LossScale
from swift.template import MaxLengthError, TemplateMeta, register_template
from swift.template.templates.llm import HyV3PreviewTemplate, HyV3Template
from swift.utils import get_logger

from megatron_hy.data.encode import Encoder
from megatron_hy.data.rows import parse_row
from megatron_hy.data.tokens import PREVIEW, RELEASE, TokenSet

logger = get_logger()
_ROW = "_hy3_row"  # the raw row, carried past ms-swift's message normalization (which drops reasoning)
LOSS_MODES = {"default": "all", "last_round": "last"}


class Hy3RowsMixin:
    TOKENS: TokenSet = RELEASE
    _warned = False

    def encode(self, inputs, return_template_inputs: bool = False, return_length: bool = False):
        if not (self.is_training and isinstance(inputs, dict)):
            return super().encode(inputs, return_template_inputs, return_length)
        if "input_ids" in inputs and "messages" not in inputs:
            return self._pass_through(inputs, return_length)
        if "dataset" in inputs and not Hy3RowsMixin._warned:  # the routing tag ms-swift's loader adds
            Hy3RowsMixin._warned = True
            logger.warning("hy3 template: these rows came through ms-swift's dataset loader, which drops "
                           "reasoning_effort and reasoning_content; encode them with `hy3 data encode "
                           "--swift-dataset DIR` and train with --cached_dataset DIR")
        inputs = dict(inputs)
        inputs[_ROW] = {k: v for k, v in inputs.items() if k in ("messages", "tools", "reasoning_effort",
                                                                 "chat_template_kwargs")}
        return super().encode(inputs, return_template_inputs, return_length)

    def _encode(self, inputs):
        row = inputs.extra_kwargs.get(_ROW)
        if row is None or not self.is_training:
            return super()._encode(inputs)
        row = dict(row)
        system = inputs.system if inputs.system is not None else self.template_meta.default_system  # --system
        if system and not any(isinstance(m, dict) and m.get("role") == "system" for m in row["messages"]):
            row["messages"] = [{"role": "system", "content": system}] + list(row["messages"])
        if row.get("reasoning_effort") is None and not (row.get("chat_template_kwargs") or {}).get("reasoning_effort"):
            row["reasoning_effort"] = self.reasoning_effort  # the template-wide effort, no_think by default
        conv, problems = parse_row(row)
        if conv is None:
            raise ValueError("Hy3 row rejected: " + "; ".join(p.message for p in problems if p.level == "error"))
        example, = self._hy3_encoder().encode(conv)
        return {"input_ids": example.input_ids, "labels": example.labels, "loss_scale": None}

    def _hy3_encoder(self) -> Encoder:
        ls = self.loss_scale
        if type(ls) is not LossScale or ls.base_strategy not in LOSS_MODES:
            raise ValueError(f"the {self.template_meta.template_type} template supports --loss_scale default or "
                             f"last_round, not {self._loss_scale!r}")
        mode = LOSS_MODES[ls.base_strategy]
        enc = getattr(self, "_hy3_enc", None)
        if enc is None or enc.loss_mode != mode:
            enc = self._hy3_enc = Encoder(self.tokenizer, variant=self.TOKENS.name, loss_mode=mode)
        return enc

    def _pass_through(self, row: dict, return_length: bool) -> dict:
        ids, labels = list(row["input_ids"]), list(row["labels"])
        if len(ids) != len(labels):
            raise ValueError(f"pre-encoded row has {len(ids)} input_ids but {len(labels)} labels")
        if self.max_length is not None and len(ids) > self.max_length:
            raise MaxLengthError(f"pre-encoded row has {len(ids)} tokens, more than max_length {self.max_length}")
        out = {"input_ids": ids, "labels": labels}
        if row.get("position_ids") is not None:
            out["position_ids"] = list(row["position_ids"])
        if return_length:  # as ms-swift's encode returns them (its packing reads `length`)
            out["length"], out["lengths"] = len(ids), [len(ids)]
        return out

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_hy3_enc", None)  # rebuilt where it is needed
        return state

    def _preprocess_tools(self, inputs) -> None:
        # tools are rendered as given, as Hy3's own template does (ms-swift would wrap bare functions)
        if self.is_training and inputs.extra_kwargs.get(_ROW) is not None:
            return
        super()._preprocess_tools(inputs)


class Hy3Template(Hy3RowsMixin, HyV3Template):
    TOKENS = RELEASE


class Hy3PreviewTemplate(Hy3RowsMixin, HyV3PreviewTemplate):
    TOKENS = PREVIEW


def _meta(name: str, cls, ts: TokenSet, agent: str) -> TemplateMeta:
    return TemplateMeta(
        name, prefix=[ts.bos], system_prefix=[ts.bos + "{{SYSTEM}}"],
        prompt=[ts.user + "{{QUERY}}" + ts.assistant], chat_sep=[ts.eos], suffix=[ts.eos],
        template_cls=cls, is_thinking=True, thinking_prefix=ts.think,
        non_thinking_prefix=ts.think + ts.think_end, history_thinking_prefix=ts.think + ts.think_end,
        agent_template=agent)


register_template(_meta("hy3", Hy3Template, RELEASE, "hy_v3"), exist_ok=True)
register_template(_meta("hy3_preview", Hy3PreviewTemplate, PREVIEW, "hy_v3_preview"), exist_ok=True)
