"""The model ms-swift (through mcore-bridge) must build for a Hy3 checkpoint, as mcore-bridge
`ModelConfig` fields, derived from our config reader; and the check that a recipe does not ask for
something else. Pure Python: the planner uses it on machines without mcore-bridge, the ms-swift
plugin (plugins/ms_swift.py -> megatron/swift_bridge.py) uses it inside `megatron sft/export`.
"""

from __future__ import annotations

import json

from ..config import Hy3Config
from .config import check_supported

# Fields that fix the shape of the model: they must equal the checkpoint's config.
ARCH_FIELDS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
    "normalization", "layernorm_epsilon", "qk_layernorm", "add_bias_linear", "add_qkv_bias", "swiglu",
    "position_embedding_type", "rotary_base", "rotary_interleaved", "rotary_percent",
    "untie_embeddings_and_output_weights", "padded_vocab_size", "max_position_embeddings",
    "num_moe_experts", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size", "moe_shared_expert_gate",
    "moe_router_topk", "moe_router_score_function", "moe_router_enable_expert_bias", "moe_router_pre_softmax",
    "moe_router_topk_scaling_factor", "moe_router_num_groups", "moe_router_group_topk", "moe_layer_freq",
    "multi_latent_attention",
)
# Hy3's SFT behaviour: applied where the run leaves mcore-bridge's defaults (aux loss, bias updates).
TRAINING_DEFAULTS = {
    "moe_router_bias_update_rate": 0.0,     # the expert bias stays frozen during SFT
    "moe_router_load_balancing_type": "none",
    "moe_aux_loss_coeff": 0.0,
    "moe_router_dtype": "fp32",
}


def model_fields(cfg: Hy3Config) -> dict:
    """mcore-bridge ModelConfig fields describing this checkpoint (ARCH_FIELDS, plus mtp_num_layers)."""
    check_supported(cfg)
    return {
        "num_layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "ffn_hidden_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_heads,
        "num_query_groups": cfg.num_kv_heads,
        "kv_channels": cfg.head_dim,
        "normalization": "RMSNorm",
        "layernorm_epsilon": cfg.rms_norm_eps,
        "qk_layernorm": True,
        "add_bias_linear": False,
        "add_qkv_bias": False,
        "swiglu": True,
        "position_embedding_type": "rope",
        "rotary_base": int(cfg.rope_theta),
        "rotary_interleaved": False,
        "rotary_percent": 1.0,
        "untie_embeddings_and_output_weights": not cfg.tie_word_embeddings,
        "padded_vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "num_moe_experts": cfg.num_experts,
        "moe_ffn_hidden_size": cfg.moe_ffn,
        "moe_shared_expert_intermediate_size": cfg.shared_ffn,
        "moe_shared_expert_gate": False,
        "moe_router_topk": cfg.top_k,
        "moe_router_score_function": "sigmoid",
        "moe_router_enable_expert_bias": True,
        "moe_router_pre_softmax": False,
        "moe_router_topk_scaling_factor": cfg.router_scaling_factor,
        "moe_router_num_groups": None,
        "moe_router_group_topk": None,
        "moe_layer_freq": [1 if t == "sparse" else 0 for t in cfg.layer_types],
        "multi_latent_attention": False,
        "mtp_num_layers": cfg.num_mtp_layers or None,
    }


def layer_freq(value, num_layers: int):
    """A moe_layer_freq in any of Megatron's spellings (int N, "N", a list, a list expression such as
    "[0]*1+[1]*79") as a list of 0/1, or None when it cannot be read."""
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            value = int(text)
        elif text and all(ch in "0123456789[]()+*, " for ch in text):
            try:
                value = eval(text, {"__builtins__": {}})  # digits, brackets, + and * only
            except Exception:
                return None
        else:
            return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return [1 if i % value == 0 else 0 for i in range(num_layers)] if value > 0 else None
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return None


def same_value(field: str, a, b, num_layers: int) -> bool:
    if field == "moe_layer_freq":
        return layer_freq(a, num_layers) == layer_freq(b, num_layers)
    if isinstance(a, float) or isinstance(b, float):
        try:
            return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


def requested(args: dict) -> dict:
    """The model fields a `megatron sft/export` argument set asks for: flags named like ModelConfig
    fields and the keys of megatron_extra_kwargs (which ms-swift applies last)."""
    out = {k: v for k, v in args.items() if k in ARCH_FIELDS or k == "mtp_num_layers"}
    extra = args.get("megatron_extra_kwargs") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            extra = {}
    if isinstance(extra, dict):
        out.update({k: v for k, v in extra.items() if k in ARCH_FIELDS or k == "mtp_num_layers"})
    return out


def conflicts(cfg: Hy3Config, asked: dict) -> list[str]:
    """One line per asked model field that would build something other than this checkpoint."""
    want = model_fields(cfg)
    out = []
    for k, v in asked.items():
        if k == "mtp_num_layers":
            if v is not None and not (isinstance(v, int) and 0 <= v <= cfg.num_mtp_layers):
                out.append(f"mtp_num_layers {v!r}: the checkpoint has {cfg.num_mtp_layers} MTP layer(s) "
                           f"(use 0 to train without MTP, or up to {cfg.num_mtp_layers})")
            continue
        if not same_value(k, v, want[k], cfg.num_layers):
            out.append(f"{k} {v!r}: the checkpoint's config.json says {want[k]!r}")
    return out


def plugin_paths(args: dict) -> list[str]:
    """The plugin files a `megatron` argument set imports (custom_register_path and external_plugins)."""
    out = []
    for key in ("custom_register_path", "external_plugins"):
        v = args.get(key)
        out += [str(x) for x in (v if isinstance(v, (list, tuple)) else [v] if v else [])]
    return out
