"""Hy3 model configuration, read from either spelling of `config.json`.

Two spellings reach users: Tencent's (`first_k_dense_replace`, `num_nextn_predict_layers`,
`expert_hidden_dim`, `moe_router_use_sigmoid`, ...) and transformers' `HYV3Config`
(`mlp_layer_types`, `rope_parameters`, ...). `Hy3Config` is the one normalized view the rest
of the package reads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import fields
from .errors import Hy3Error

HY3_MODEL_TYPES = ("hy_v3",)
HY3_ARCHITECTURES = ("HYV3ForCausalLM", "HyV3ForCausalLM", "HYV3Model")
DEFAULT_ROPE_THETA = 11_158_840.0


@dataclass(frozen=True)
class Hy3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    top_k: int
    moe_ffn: int
    num_shared_experts: int
    router_scaling_factor: float
    layer_types: tuple[str, ...]
    num_mtp_layers: int = 0
    rope_theta: float = DEFAULT_ROPE_THETA
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 262144
    enable_moe_fp32_combine: bool = True
    dtype: str | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    # --- derived facts -------------------------------------------------------------------
    @property
    def dense_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "dense"]

    @property
    def moe_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "sparse"]

    @property
    def mtp_layers(self) -> list[int]:
        """HF layer indices of the MTP layers: they follow the main decoder layers."""
        return list(range(self.num_layers, self.num_layers + self.num_mtp_layers))

    @property
    def first_k_dense(self) -> int:
        k = 0
        while k < self.num_layers and self.layer_types[k] == "dense":
            k += 1
        return k

    @property
    def shared_ffn(self) -> int:
        return self.moe_ffn * self.num_shared_experts

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    def is_moe(self, hf_layer: int) -> bool:
        """True for MoE layers; MTP layers (index >= num_layers) are full MoE decoder layers."""
        if hf_layer >= self.num_layers:
            return True
        return self.layer_types[hf_layer] == "sparse"

    def all_hf_layers(self) -> list[int]:
        return list(range(self.num_layers + self.num_mtp_layers))

    # --- output ----------------------------------------------------------------------------
    def to_transformers(self) -> dict:
        """Keyword arguments for transformers' `HYV3Config` (MTP count kept as an extra attribute)."""
        d = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "num_experts": self.num_experts,
            "num_experts_per_tok": self.top_k,
            "moe_intermediate_size": self.moe_ffn,
            "num_shared_experts": self.num_shared_experts,
            "router_scaling_factor": self.router_scaling_factor,
            "mlp_layer_types": list(self.layer_types),
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "enable_moe_fp32_combine": self.enable_moe_fp32_combine,
            "num_nextn_predict_layers": self.num_mtp_layers,
        }
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if k in self.raw:
                d[k] = self.raw[k]
        return d

    def to_tencent(self) -> dict:
        """Tencent's spelling of the same config (what the published checkpoint ships)."""
        return {
            "architectures": ["HYV3ForCausalLM"],
            "model_type": "hy_v3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "first_k_dense_replace": self.first_k_dense,
            "num_experts": self.num_experts,
            "num_experts_per_tok": self.top_k,
            "expert_hidden_dim": self.moe_ffn,
            "num_shared_experts": self.num_shared_experts,
            "moe_router_use_sigmoid": True,
            "moe_router_enable_expert_bias": True,
            "route_norm": True,
            "router_scaling_factor": self.router_scaling_factor,
            "qk_norm": True,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "num_nextn_predict_layers": self.num_mtp_layers,
            "torch_dtype": self.dtype or "bfloat16",
        }

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("raw")
        d["layer_types"] = "".join("D" if t == "dense" else "M" for t in self.layer_types)
        return d


# --- reading ----------------------------------------------------------------------------------

DTYPES = ("bfloat16", "float16", "float32")
_ROUTER_FLAGS = (("moe_router_use_sigmoid", "a sigmoid router"), ("route_norm", "normalized top-k weights"),
                 ("moe_router_enable_expert_bias", "an expert-bias router"), ("qk_norm", "q/k RMSNorm"))


def is_hy3(d: dict) -> bool:
    archs = d.get("architectures") or []
    return d.get("model_type") in HY3_MODEL_TYPES or (isinstance(archs, list) and
                                                      any(a in HY3_ARCHITECTURES for a in archs if isinstance(a, str)))


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


def config_from_dict(d: dict, where: str = "config") -> Hy3Config:
    """The normalized config, every field we read checked for its type and range (see fields.py)."""
    _check_hy3(d, where)
    get, count, num, flag = fields.get, fields.integer, fields.number, fields.boolean
    num_layers = get(d, where, ("num_hidden_layers", "num_layers"), count, lo=1)
    hidden = get(d, where, "hidden_size", count, lo=1)
    heads = get(d, where, "num_attention_heads", count, lo=1)
    kv_heads = get(d, where, "num_key_value_heads", count, default=heads, lo=1)
    head_dim = get(d, where, ("head_dim", "attention_head_dim"), count, default=hidden // heads, lo=1)
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        get(d, where, k, _token_id, default=None)
    cfg = Hy3Config(
        vocab_size=get(d, where, "vocab_size", count, lo=1),
        hidden_size=hidden,
        intermediate_size=get(d, where, "intermediate_size", count, lo=1),
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        num_experts=get(d, where, ("num_experts", "num_local_experts", "n_routed_experts"), count, lo=1),
        top_k=get(d, where, ("num_experts_per_tok", "moe_topk"), _per_layer, lo=1),
        moe_ffn=get(d, where, ("moe_intermediate_size", "expert_hidden_dim"), count, lo=1),
        num_shared_experts=get(d, where, ("num_shared_experts", "num_shared_expert", "n_shared_experts"), _per_layer,
                               default=1, lo=1),
        router_scaling_factor=get(d, where, ("router_scaling_factor", "routed_scaling_factor"), num, default=2.826,
                                  positive=True),
        layer_types=tuple(_layer_types(d, where, num_layers)),
        num_mtp_layers=get(d, where, ("num_nextn_predict_layers", "num_mtp_layers"), count, default=0, lo=0),
        rope_theta=_rope_theta(d, where),
        rms_norm_eps=get(d, where, "rms_norm_eps", num, default=1e-5, positive=True),
        tie_word_embeddings=get(d, where, "tie_word_embeddings", flag, default=False),
        max_position_embeddings=get(d, where, "max_position_embeddings", count, default=262144, lo=1),
        enable_moe_fp32_combine=get(d, where, "enable_moe_fp32_combine", flag, default=True),
        dtype=get(d, where, ("dtype", "torch_dtype"), fields.choice, default=None, choices=DTYPES),
        raw=dict(d),
    )
    _validate(cfg, where)
    return cfg


def _check_hy3(d: dict, where: str) -> None:
    """A Hy3 config, and none of the switches that would make it a model Hy3's mapping does not describe."""
    if not isinstance(d, dict):
        raise Hy3Error(f"{where}: expected a JSON object")
    fields.get(d, where, "model_type", fields.string, default=None)
    fields.get(d, where, "architectures", fields.string_list, default=None)
    if not is_hy3(d):
        raise Hy3Error(
            f"{where}: not a Hy3 config (model_type {d.get('model_type')!r}, architectures {d.get('architectures')!r}); "
            f"expected model_type 'hy_v3' or architectures {list(HY3_ARCHITECTURES[:1])}")
    for flag, meaning in _ROUTER_FLAGS:
        if fields.get(d, where, flag, fields.boolean, default=None) is False:
            raise Hy3Error(f"{where}: {flag} is false, but Hy3 uses {meaning}; this config is not supported")


def _layer_types(d: dict, where: str, num_layers: int) -> list[str]:
    """Per decoder layer, "dense" or "sparse": mlp_layer_types (transformers) or first_k_dense_replace (Tencent)."""
    types = fields.get(d, where, "mlp_layer_types", fields.string_list, default=None)
    k_dense = fields.get(d, where, "first_k_dense_replace", fields.integer, default=None, lo=0)
    if types is None:
        k = 1 if k_dense is None else k_dense
        return ["dense"] * min(k, num_layers) + ["sparse"] * max(num_layers - k, 0)
    bad = [t for t in types if t not in ("dense", "sparse")]
    if bad:
        raise Hy3Error(f"{where}: mlp_layer_types has {bad[0]!r}; expected 'dense' or 'sparse'")
    if len(types) != num_layers:
        raise Hy3Error(f"{where}: mlp_layer_types has {len(types)} entries, num_hidden_layers is {num_layers}")
    if k_dense is not None:
        expect = ["dense"] * k_dense + ["sparse"] * (num_layers - k_dense)
        if types != expect:
            raise Hy3Error(f"{where}: first_k_dense_replace={k_dense} disagrees with mlp_layer_types {types}")
    return list(types)


def _rope_theta(d: dict, where: str) -> float:
    name = "rope_parameters" if d.get("rope_parameters") is not None else "rope_scaling"
    rope = fields.get(d, where, name, fields.mapping, default={})
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", None):
        raise Hy3Error(f"{where}: rope type {kind!r} is not supported (Hy3 uses default RoPE)")
    theta = fields.get(d, where, "rope_theta", fields.number, default=DEFAULT_ROPE_THETA, positive=True)
    return fields.get(rope, f"{where}: {name}", "rope_theta", fields.number, default=theta, positive=True)


def _validate(c: Hy3Config, where: str) -> None:
    """Relations between fields (each field's own type and range are checked as it is read)."""
    problems = []
    if c.num_heads % c.num_kv_heads:
        problems.append(f"num_attention_heads {c.num_heads} is not a multiple of num_key_value_heads {c.num_kv_heads}")
    if not 1 <= c.top_k <= c.num_experts:
        problems.append(f"num_experts_per_tok {c.top_k} must be between 1 and num_experts {c.num_experts}")
    if problems:
        raise Hy3Error(f"{where}: " + "; ".join(problems))


def load_config(path: str | Path) -> Hy3Config:
    """Read `config.json` from a checkpoint directory (or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.exists():
        raise Hy3Error(f"{p}: not found (a Hy3 checkpoint directory needs config.json)")
    try:
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Hy3Error(f"{p}: not valid JSON ({e})") from None
    return config_from_dict(d, str(p))
