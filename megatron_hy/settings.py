"""The one field table of Hy3's settings, and the forms it is rendered in.

Each row is one setting: its Hy3Config field (or, for what every Hy3 has, its value), its names in
Tencent's and in transformers' config.json, its megatron-core TransformerConfig or GPTModel argument,
its Megatron-LM flag, its mcore-bridge ModelConfig field, its `megatron sft` argument, and how the value
changes on the way where it does. config.py reads and writes config.json through it; megatron/config.py
and swift/model.py render the Megatron side from it. A new setting is a new row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Callable

from . import fields
from .dtypes import CAST, torch_name
from .errors import Hy3Error

FIELD = object()   # the row's value is the Hy3Config field of its name
PASS = object()    # a config.json field read and written as it is (kept in Hy3Config.raw)
OMIT = object()    # a transform's answer when the form leaves the setting out
FORMS = ("tencent", "transformers", "mcore", "gpt", "flag", "bridge", "swift")
DTYPES = tuple(torch_name(d) for d in CAST)   # config.json's dtype names: bfloat16, float16, float32
DEFAULT_ROPE_THETA = 11_158_840.0


@dataclass(frozen=True)
class Setting:
    """A column is a name, or (name, transform): a function of the value, or the Hy3Config property to use."""
    name: str                      # the Hy3Config field; for a setting every Hy3 has, a plain name
    value: object = FIELD          # FIELD, PASS, or the value every Hy3 has
    tencent: str | tuple | None = None         # Tencent's config.json
    transformers: str | tuple | None = None    # transformers' config.json (HYV3Config)
    mcore: str | tuple | None = None           # megatron-core TransformerConfig argument
    gpt: str | tuple | None = None             # megatron-core GPTModel argument
    flag: str | tuple | None = None            # Megatron-LM flag; the value True makes it a switch, False leaves it out
    bridge: str | tuple | None = None          # mcore-bridge ModelConfig field
    swift: str | tuple | None = None           # `megatron sft` argument (`megatron_extra_kwargs.X`: one without a flag)
    aliases: tuple = ()            # more names config.json readers accept
    check: Callable | None = None  # the fields.* check of the value read from config.json
    default: object = fields.REQUIRED   # when config.json has none; a function of the fields read before it
    read: Callable | None = None   # its own config.json reader: (row, dict, where, fields read so far) -> value
    training: bool = False         # Hy3's SFT behaviour (not the model's shape), which mcore-bridge defaults otherwise
    what: str = ""                 # what a setting every Hy3 has means, for the error refusing a config without it

    def key(self, form: str) -> str | None:
        col = getattr(self, form)
        return col[0] if isinstance(col, tuple) else col

    def names(self) -> tuple[str, ...]:
        """The config.json names it is read from, first found wins (transformers', Tencent's, then aliases)."""
        out = [n for n in (self.key("transformers"), self.key("tencent"), *self.aliases) if n]
        return tuple(dict.fromkeys(out))

    def rendered(self, form: str, cfg=None, given: dict | None = None):
        """Its value in one form (OMIT when the form leaves it out); cfg is needed for FIELD and PASS rows."""
        col = getattr(self, form)
        how = col[1] if isinstance(col, tuple) else None
        if self.value is PASS:
            v = cfg.raw[self.name] if self.name in cfg.raw else OMIT
        elif self.value is FIELD:
            v = given[self.name] if given and self.name in given else getattr(cfg, self.name)
        else:
            v = self.value
        if v is OMIT or how is None:
            return v
        return getattr(cfg, how) if isinstance(how, str) else how(v)


# --- checks and transforms named in the table --------------------------------------------------------------

def _per_layer(v, where: str, name: str, lo: int):
    """A count that Tencent's configs may give per layer as a list: Hy3 uses one value for every layer."""
    if isinstance(v, list):
        if not v:
            raise fields.bad(where, name, f"{fields.int_range(lo)} or a list of them", v)
        first = fields.integer(v[0], where, name, lo=lo)
        if any(fields.integer(x, where, name, lo=lo) != first for x in v):
            raise fields.bad(where, name, "the same value for every layer", v)
        return first
    return fields.integer(v, where, name, lo=lo)


def _token_id(v, where: str, name: str):
    if isinstance(v, list):
        return [fields.integer(x, where, name, lo=0) for x in v]
    return fields.integer(v, where, name, lo=0)


_size = partial(fields.integer, lo=1)
_count = partial(fields.integer, lo=0)
_per_layer_size = partial(_per_layer, lo=1)
_positive = partial(fields.number, positive=True)
_dtype = partial(fields.choice, choices=DTYPES)


def _read_layer_types(s: Setting, d: dict, where: str, got: dict) -> tuple:
    """Per decoder layer, "dense" or "sparse": mlp_layer_types (transformers) or first_k_dense_replace (Tencent)."""
    types_key, k_key = s.key("transformers"), s.key("tencent")
    num_layers = got["num_layers"]
    types = fields.get(d, where, types_key, fields.string_list, default=None)
    k_dense = fields.get(d, where, k_key, fields.integer, default=None, lo=0)
    if types is None:
        k = 1 if k_dense is None else k_dense     # Tencent's configs without it: one dense layer first
        return tuple(["dense"] * min(k, num_layers) + ["sparse"] * max(num_layers - k, 0))
    bad = [t for t in types if t not in ("dense", "sparse")]
    if bad:
        raise Hy3Error(f"{where}: {types_key} has {bad[0]!r}; expected 'dense' or 'sparse'")
    if len(types) != num_layers:
        raise Hy3Error(f"{where}: {types_key} has {len(types)} entries, {row('num_layers').key('transformers')} "
                       f"is {num_layers}")
    if k_dense is not None:
        expect = ["dense"] * k_dense + ["sparse"] * (num_layers - k_dense)
        if types != expect:
            raise Hy3Error(f"{where}: {k_key}={k_dense} disagrees with {types_key} {types}")
    return tuple(types)


def _read_rope(s: Setting, d: dict, where: str, got: dict) -> float:
    """transformers nests the base in rope_parameters (older: rope_scaling); Tencent has a top-level rope_theta."""
    name = s.key("transformers") if d.get(s.key("transformers")) is not None else s.aliases[0]
    rope = fields.get(d, where, name, fields.mapping, default={})
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", None):
        raise Hy3Error(f"{where}: rope type {kind!r} is not supported (Hy3 uses default RoPE)")
    theta = fields.get(d, where, s.key("tencent"), s.check, default=s.default)
    return fields.get(rope, f"{where}: {name}", "rope_theta", s.check, default=theta)


def _rope_parameters(theta: float) -> dict:
    return {"rope_type": "default", "rope_theta": theta}


def _moe_layers(types) -> list[int]:
    return [1 if t == "sparse" else 0 for t in types]


def _moe_layers_flag(types) -> str:
    """Megatron-LM's --moe-layer-freq: a list expression for dense-first models, the list otherwise."""
    k = next((i for i, t in enumerate(types) if t != "dense"), len(types))
    if tuple(types) != tuple(["dense"] * k + ["sparse"] * (len(types) - k)):
        return "'[" + ",".join(map(str, _moe_layers(types))) + "]'"
    return f"'([0]*{k}+[1]*{len(types) - k})'"


def _torch_function(name: str):
    import torch.nn.functional as F   # torch only where a TransformerConfig is built

    return getattr(F, name)


def _not(v):
    return not v


def _plain(v: float) -> str:
    return f"{v:g}"        # Megatron-LM's flags and our messages say 0, not 0.0


def _unless_zero(v):
    return v or OMIT


def _or_none(v):
    return v or None


def _left_out(v):
    return OMIT            # HYV3Config takes it as its own argument: the caller passes it


def _is_sigmoid(v) -> bool:
    return v == "sigmoid"


def _or_bfloat16(v):
    return v or torch_name("bf16")


# --- the table ------------------------------------------------------------------------------------------------

SETTINGS: tuple[Setting, ...] = (
    Setting("num_layers", transformers="num_hidden_layers", tencent="num_hidden_layers", aliases=("num_layers",),
            check=_size, mcore="num_layers", flag="--num-layers", bridge="num_layers"),
    Setting("hidden_size", transformers="hidden_size", tencent="hidden_size", check=_size,
            mcore="hidden_size", flag="--hidden-size", bridge="hidden_size"),
    Setting("intermediate_size", transformers="intermediate_size", tencent="intermediate_size", check=_size,
            mcore="ffn_hidden_size", flag="--ffn-hidden-size", bridge="ffn_hidden_size"),
    Setting("num_heads", transformers="num_attention_heads", tencent="num_attention_heads", check=_size,
            mcore="num_attention_heads", flag="--num-attention-heads", bridge="num_attention_heads"),
    Setting("group_query_attention", True, flag="--group-query-attention"),
    Setting("num_kv_heads", transformers="num_key_value_heads", tencent="num_key_value_heads", check=_size,
            default=lambda got: got["num_heads"],
            mcore="num_query_groups", flag="--num-query-groups", bridge="num_query_groups"),
    Setting("head_dim", transformers="head_dim", tencent="head_dim", aliases=("attention_head_dim",), check=_size,
            default=lambda got: got["hidden_size"] // got["num_heads"],
            mcore="kv_channels", flag="--kv-channels", bridge="kv_channels"),
    Setting("normalization", "RMSNorm", mcore="normalization", flag="--normalization", bridge="normalization"),
    Setting("rms_norm_eps", transformers="rms_norm_eps", tencent="rms_norm_eps", check=_positive, default=1e-5,
            mcore="layernorm_epsilon", flag="--norm-epsilon", bridge="layernorm_epsilon"),
    Setting("qk_norm", True, tencent="qk_norm", check=fields.boolean, what="q/k RMSNorm",
            mcore="qk_layernorm", flag="--qk-layernorm", bridge="qk_layernorm"),
    Setting("linear_bias", False, mcore="add_bias_linear", flag=("--disable-bias-linear", _not),
            bridge="add_bias_linear"),
    Setting("qkv_bias", False, mcore="add_qkv_bias", bridge="add_qkv_bias"),
    Setting("swiglu", True, mcore="gated_linear_unit", flag="--swiglu", bridge="swiglu"),
    Setting("activation", "silu", mcore=("activation_func", _torch_function)),
    Setting("hidden_dropout", 0.0, mcore="hidden_dropout"),
    Setting("attention_dropout", 0.0, mcore="attention_dropout"),
    Setting("position_embedding", "rope", gpt="position_embedding_type", flag="--position-embedding-type",
            bridge="position_embedding_type"),
    Setting("rope_theta", transformers=("rope_parameters", _rope_parameters), tencent="rope_theta",
            aliases=("rope_scaling",), check=_positive, default=DEFAULT_ROPE_THETA, read=_read_rope,
            gpt="rotary_base", flag=("--rotary-base", int), bridge=("rotary_base", int)),
    Setting("rotary_interleaved", False, bridge="rotary_interleaved"),
    Setting("rotary_percent", 1.0, gpt="rotary_percent", bridge="rotary_percent"),
    Setting("tie_word_embeddings", transformers="tie_word_embeddings", tencent="tie_word_embeddings",
            check=fields.boolean, default=False, gpt="share_embeddings_and_output_weights",
            flag=("--untie-embeddings-and-output-weights", _not), bridge=("untie_embeddings_and_output_weights", _not)),
    Setting("vocab_size", transformers="vocab_size", tencent="vocab_size", check=_size,
            gpt="vocab_size", flag="--vocab-size", bridge="padded_vocab_size"),
    Setting("max_position_embeddings", transformers="max_position_embeddings", tencent="max_position_embeddings",
            check=_size, default=262144,
            gpt="max_sequence_length", flag="--max-position-embeddings", bridge="max_position_embeddings"),
    Setting("num_experts", transformers="num_experts", tencent="num_experts",
            aliases=("num_local_experts", "n_routed_experts"), check=_size,
            mcore="num_moe_experts", flag="--num-experts", bridge="num_moe_experts"),
    Setting("moe_ffn", transformers="moe_intermediate_size", tencent="expert_hidden_dim", check=_size,
            mcore="moe_ffn_hidden_size", flag="--moe-ffn-hidden-size", bridge="moe_ffn_hidden_size"),
    Setting("num_shared_experts", transformers="num_shared_experts", tencent="num_shared_experts",
            aliases=("num_shared_expert", "n_shared_experts"), check=_per_layer_size, default=1,
            mcore=("moe_shared_expert_intermediate_size", "shared_ffn"),
            flag=("--moe-shared-expert-intermediate-size", "shared_ffn"),
            bridge=("moe_shared_expert_intermediate_size", "shared_ffn")),
    Setting("shared_expert_gate", False, bridge="moe_shared_expert_gate"),
    Setting("top_k", transformers="num_experts_per_tok", tencent="num_experts_per_tok", aliases=("moe_topk",),
            check=_per_layer_size, mcore="moe_router_topk", flag="--moe-router-topk", bridge="moe_router_topk"),
    Setting("score_function", "sigmoid", tencent=("moe_router_use_sigmoid", _is_sigmoid), check=fields.boolean,
            what="a sigmoid router", mcore="moe_router_score_function", flag="--moe-router-score-function",
            bridge="moe_router_score_function", swift="megatron_extra_kwargs.moe_router_score_function"),
    Setting("route_norm", True, tencent="route_norm", check=fields.boolean, what="normalized top-k weights"),
    Setting("expert_bias", True, tencent="moe_router_enable_expert_bias", check=fields.boolean,
            what="an expert-bias router", mcore="moe_router_enable_expert_bias",
            flag="--moe-router-enable-expert-bias", bridge="moe_router_enable_expert_bias",
            swift="megatron_extra_kwargs.moe_router_enable_expert_bias"),
    Setting("bias_update_rate", 0.0, training=True,    # the expert bias stays frozen during SFT
            mcore="moe_router_bias_update_rate", flag=("--moe-router-bias-update-rate", _plain),
            bridge="moe_router_bias_update_rate", swift="megatron_extra_kwargs.moe_router_bias_update_rate"),
    Setting("pre_softmax", False, bridge="moe_router_pre_softmax"),
    Setting("router_scaling_factor", transformers="router_scaling_factor", tencent="router_scaling_factor",
            aliases=("routed_scaling_factor",), check=_positive, default=2.826,
            mcore="moe_router_topk_scaling_factor", flag="--moe-router-topk-scaling-factor",
            bridge="moe_router_topk_scaling_factor"),
    Setting("router_dtype", "fp32", training=True, mcore="moe_router_dtype", flag="--moe-router-dtype",
            bridge="moe_router_dtype", swift="moe_router_dtype"),
    Setting("load_balancing", "none", training=True, mcore="moe_router_load_balancing_type",
            flag="--moe-router-load-balancing-type", bridge="moe_router_load_balancing_type",
            swift="moe_router_load_balancing_type"),
    Setting("aux_loss", 0.0, training=True, mcore="moe_aux_loss_coeff", flag=("--moe-aux-loss-coeff", _plain),
            bridge="moe_aux_loss_coeff", swift="moe_aux_loss_coeff"),
    Setting("router_groups", None, bridge="moe_router_num_groups"),
    Setting("router_group_topk", None, bridge="moe_router_group_topk"),
    Setting("layer_types", transformers=("mlp_layer_types", list), tencent=("first_k_dense_replace", "first_k_dense"),
            read=_read_layer_types, mcore=("moe_layer_freq", _moe_layers), flag=("--moe-layer-freq", _moe_layers_flag),
            bridge=("moe_layer_freq", _moe_layers)),
    Setting("latent_attention", False, bridge="multi_latent_attention"),
    Setting("num_mtp_layers", transformers="num_nextn_predict_layers", tencent="num_nextn_predict_layers",
            aliases=("num_mtp_layers",), check=_count, default=0, mcore=("mtp_num_layers", _unless_zero),
            flag=("--mtp-num-layers", _unless_zero), bridge=("mtp_num_layers", _or_none),
            swift=("mtp_num_layers", _unless_zero)),
    Setting("grouped_gemm", True, swift="moe_grouped_gemm"),
    Setting("token_dispatcher", "alltoall", swift="moe_token_dispatcher_type"),
    Setting("enable_moe_fp32_combine", transformers="enable_moe_fp32_combine", check=fields.boolean, default=True),
    Setting("dtype", transformers=("dtype", _left_out), tencent=("torch_dtype", _or_bfloat16), check=_dtype,
            default=None),
    Setting("bos_token_id", PASS, transformers="bos_token_id", check=_token_id, default=None),
    Setting("eos_token_id", PASS, transformers="eos_token_id", check=_token_id, default=None),
    Setting("pad_token_id", PASS, transformers="pad_token_id", check=_token_id, default=None),
)

# The order of the forms whose order is not the table's, as they have always been written (config.json as the
# published checkpoint and HYV3Config have them; "read" is the order config.json is checked in, which decides
# the error reported first). A row an order does not name follows the named ones, in table order.
ORDER = {
    "read": "score_function route_norm expert_bias qk_norm num_layers hidden_size num_heads num_kv_heads head_dim "
            "bos_token_id eos_token_id pad_token_id vocab_size intermediate_size num_experts top_k moe_ffn "
            "num_shared_experts router_scaling_factor layer_types num_mtp_layers rope_theta rms_norm_eps "
            "tie_word_embeddings max_position_embeddings enable_moe_fp32_combine dtype",
    "transformers": "vocab_size hidden_size intermediate_size num_layers num_heads num_kv_heads head_dim num_experts "
                    "top_k moe_ffn num_shared_experts router_scaling_factor layer_types rope_theta rms_norm_eps "
                    "tie_word_embeddings max_position_embeddings enable_moe_fp32_combine num_mtp_layers "
                    "bos_token_id eos_token_id pad_token_id",
    "tencent": "vocab_size hidden_size intermediate_size num_layers num_heads num_kv_heads head_dim layer_types "
               "num_experts top_k moe_ffn num_shared_experts score_function expert_bias route_norm "
               "router_scaling_factor qk_norm rope_theta rms_norm_eps tie_word_embeddings max_position_embeddings "
               "num_mtp_layers dtype",
    "flag": "num_layers hidden_size intermediate_size num_heads group_query_attention num_kv_heads head_dim "
            "normalization rms_norm_eps qk_norm linear_bias swiglu position_embedding rope_theta "
            "max_position_embeddings vocab_size num_experts moe_ffn num_shared_experts top_k score_function "
            "expert_bias bias_update_rate router_scaling_factor router_dtype load_balancing aux_loss layer_types "
            "tie_word_embeddings num_mtp_layers",
    "gpt": "vocab_size max_position_embeddings position_embedding rope_theta rotary_percent tie_word_embeddings",
    "swift": "load_balancing aux_loss score_function expert_bias bias_update_rate router_dtype grouped_gemm "
             "token_dispatcher num_mtp_layers",
}


def row(name: str) -> Setting:
    for s in SETTINGS:
        if s.name == name:
            return s
    raise KeyError(f"no setting {name!r} in the table")


def default(name: str):
    """The value config.json readers take when the file does not give this Hy3Config field."""
    return row(name).default


def rows(form: str) -> list[Setting]:
    """The rows a form has ("read": those config.json gives), in the form's order."""
    mine = {s.name: s for s in SETTINGS if (s.names() if form == "read" else getattr(s, form) is not None)}
    first = ORDER.get(form, "").split()
    for name in first:
        row(name)      # an order names rows of the table only
    return [mine[n] for n in first if n in mine] + [s for n, s in mine.items() if n not in first]


def render(cfg, form: str, **given) -> dict:
    """This model's settings in one form, {name there: value} in the form's order; `given` replaces Hy3Config
    fields (GPTModel's padded vocabulary). A name `A.B` puts B in a dict under A."""
    out: dict = {}
    for s in rows(form):
        v = s.rendered(form, cfg, given)
        if v is OMIT:
            continue
        head, _, tail = s.key(form).partition(".")
        if tail:
            out.setdefault(head, {})[tail] = v
        else:
            out[head] = v
    return out


def read(d: dict, where: str) -> dict:
    """Hy3Config's fields from a config.json dict in either spelling, every field checked (see fields.py), and
    refused when it says a setting every Hy3 has is something else."""
    got: dict = {}
    for s in rows("read"):
        if s.value is FIELD:
            if s.read is not None:
                got[s.name] = s.read(s, d, where, got)
            else:
                dflt = s.default(got) if callable(s.default) else s.default
                got[s.name] = fields.get(d, where, s.names(), s.check, default=dflt)
        elif s.value is PASS:
            fields.get(d, where, s.names(), s.check, default=None)
        else:
            _refuse_other(s, d, where)
    return got


def _refuse_other(s: Setting, d: dict, where: str) -> None:
    for form in ("transformers", "tencent"):
        name = s.key(form)
        found = fields.get(d, where, name, s.check, default=None) if name else None
        if found is not None and found != s.rendered(form):
            raise Hy3Error(f"{where}: {name} is {json.dumps(found)}, but Hy3 uses {s.what}; "
                           f"this config is not supported")
