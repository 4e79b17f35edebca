"""Hy3 model configuration, read from either spelling of `config.json`.

Two spellings reach users: Tencent's (`first_k_dense_replace`, `num_nextn_predict_layers`,
`expert_hidden_dim`, `moe_router_use_sigmoid`, ...) and transformers' `HYV3Config`
(`mlp_layer_types`, `rope_parameters`, ...). `Hy3Config` is the one normalized view the rest
of the package reads; both spellings are read and written through the field table (settings.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import fields, settings
from .errors import Hy3Error

HY3_MODEL_TYPES = ("hy_v3",)
HY3_ARCHITECTURES = ("HYV3ForCausalLM", "HyV3ForCausalLM", "HYV3Model")


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
    num_mtp_layers: int = settings.default("num_mtp_layers")
    rope_theta: float = settings.default("rope_theta")
    rms_norm_eps: float = settings.default("rms_norm_eps")
    tie_word_embeddings: bool = settings.default("tie_word_embeddings")
    max_position_embeddings: int = settings.default("max_position_embeddings")
    enable_moe_fp32_combine: bool = settings.default("enable_moe_fp32_combine")
    dtype: str | None = settings.default("dtype")
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
        return settings.render(self, "transformers")

    def to_tencent(self) -> dict:
        """Tencent's spelling of the same config (what the published checkpoint ships)."""
        return {"architectures": [HY3_ARCHITECTURES[0]], "model_type": HY3_MODEL_TYPES[0],
                **settings.render(self, "tencent")}

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("raw")
        d["layer_types"] = "".join("D" if t == "dense" else "M" for t in self.layer_types)
        return d


# --- reading ----------------------------------------------------------------------------------

def is_hy3(d: dict) -> bool:
    archs = d.get("architectures") or []
    return d.get("model_type") in HY3_MODEL_TYPES or (isinstance(archs, list) and
                                                      any(a in HY3_ARCHITECTURES for a in archs if isinstance(a, str)))


def config_from_dict(d: dict, where: str = "config") -> Hy3Config:
    """The normalized config, every field we read checked for its type and range (see fields.py)."""
    _check_hy3(d, where)
    cfg = Hy3Config(**settings.read(d, where), raw=dict(d))
    _validate(cfg, where)
    return cfg


def _check_hy3(d: dict, where: str) -> None:
    """A Hy3 config (the switches that would make it a model Hy3's mapping does not describe are the table's)."""
    if not isinstance(d, dict):
        raise Hy3Error(f"{where}: expected a JSON object")
    fields.get(d, where, "model_type", fields.string, default=None)
    fields.get(d, where, "architectures", fields.string_list, default=None)
    if not is_hy3(d):
        raise Hy3Error(
            f"{where}: not a Hy3 config (model_type {d.get('model_type')!r}, architectures {d.get('architectures')!r}); "
            f"expected model_type 'hy_v3' or architectures {list(HY3_ARCHITECTURES[:1])}")


def _validate(c: Hy3Config, where: str) -> None:
    """Relations between fields (each field's own type and range are checked as it is read)."""
    problems = []
    name = {f: settings.row(f).key("transformers") for f in ("num_heads", "num_kv_heads", "top_k", "num_experts")}
    if c.num_heads % c.num_kv_heads:
        problems.append(f"{name['num_heads']} {c.num_heads} is not a multiple of {name['num_kv_heads']} "
                        f"{c.num_kv_heads}")
    if not 1 <= c.top_k <= c.num_experts:
        problems.append(f"{name['top_k']} {c.top_k} must be between 1 and {name['num_experts']} {c.num_experts}")
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
