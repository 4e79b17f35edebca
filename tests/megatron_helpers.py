"""Test-side inverses of the package's Megatron mapping, used to check it both ways."""

from __future__ import annotations

from megatron_hy.config import Hy3Config, config_from_dict
from megatron_hy.errors import Hy3Error
from megatron_hy.mapping import logical_tensors, mcore_tensors
from megatron_hy.transforms import from_mcore


def config_from_transformer(kw: dict, vocab_size: int, **extra) -> Hy3Config:
    """The inverse of transformer_config_kwargs (+ the GPTModel vocab): a Hy3Config."""
    freq = kw["moe_layer_freq"]
    if isinstance(freq, int):
        freq = [1 if i % freq == 0 else 0 for i in range(kw["num_layers"])]
    d = {
        "model_type": "hy_v3",
        "vocab_size": vocab_size,
        "hidden_size": kw["hidden_size"],
        "intermediate_size": kw["ffn_hidden_size"],
        "num_hidden_layers": kw["num_layers"],
        "num_attention_heads": kw["num_attention_heads"],
        "num_key_value_heads": kw.get("num_query_groups") or kw["num_attention_heads"],
        "head_dim": kw.get("kv_channels") or kw["hidden_size"] // kw["num_attention_heads"],
        "num_experts": kw["num_moe_experts"],
        "num_experts_per_tok": kw["moe_router_topk"],
        "moe_intermediate_size": kw["moe_ffn_hidden_size"],
        "num_shared_experts": kw["moe_shared_expert_intermediate_size"] // kw["moe_ffn_hidden_size"],
        "router_scaling_factor": kw["moe_router_topk_scaling_factor"],
        "mlp_layer_types": ["sparse" if f else "dense" for f in freq],
        "rms_norm_eps": kw["layernorm_epsilon"],
        "num_nextn_predict_layers": kw.get("mtp_num_layers") or 0,
    }
    d.update(extra)
    return config_from_dict(d, "megatron config")


def assemble_hf(pieces: list, cfg: Hy3Config, padded_vocab: int | None, dtypes: dict) -> dict:
    """Global tensors from all ranks' pieces (megatron.weights.export_pieces), split back into logical HF tensors (in their dtypes)."""
    import torch

    shapes = {t.name: t.shape for t in logical_tensors(cfg)}
    table = {t.key: t for t in mcore_tensors(cfg, padded_vocab)}
    globals_: dict[str, torch.Tensor] = {}
    covered: dict[str, torch.Tensor] = {}
    for p in pieces:
        if p.key not in table:
            raise Hy3Error(f"Megatron tensor {p.key} is not covered by the Hy3 mapping table")
        if p.key not in globals_:
            globals_[p.key] = torch.zeros(p.global_shape, dtype=p.data.dtype)
            covered[p.key] = torch.zeros(p.global_shape, dtype=torch.bool)
        region = tuple(p.prepend) + tuple(slice(a, b) for a, b in p.slices)
        globals_[p.key][region] = p.data
        covered[p.key][region] = True
    out = {}
    for key, t in table.items():
        g = globals_.get(key)
        if g is None:
            raise Hy3Error(f"no rank exported {key}")
        if not bool(covered[key].all()):
            raise Hy3Error(f"{key}: parts of the global tensor were not exported by any rank")
        units = [(e, g[e]) for e in range(t.experts)] if t.experts is not None else [(None, g)]
        for e, tensor in units:
            names = t.sources(e)
            for name, part in zip(names, from_mcore(t.row.op, tensor, [shapes[n] for n in names], cfg)):
                out[name] = part.to(dtypes[name]).contiguous()
    return out
