"""Hy3 for mcore-bridge, registered through its own API (imported by plugins/ms_swift.py).

- `Hy3ModelConfig`, mcore-bridge's ModelConfig with a Hy3 config hook: the architecture comes from
  the checkpoint's config.json read by our config reader (either spelling), not from mcore-bridge's
  generic parser, which has no hy_v3 branch (it drops q/k norm, the dense layer, MTP, the expert
  width of Tencent's spelling). A value given on the command line that contradicts the checkpoint is
  an error; mcore-bridge's MoE training defaults (aux loss, bias updates) become Hy3's.
- `Hy3Bridge`, mcore-bridge's GPTBridge with Hy3's key names taken from the mapping table: the MTP
  final norm under Tencent's `final_layernorm.weight`, and router, expert bias, shared expert and
  experts in the layout of the checkpoint at hand (inner or outer, on load and on export). An export
  gives each tensor the dtype it has in that HF checkpoint (its safetensors headers), as
  `hy3 convert mcore-to-hf` does: megatron-core keeps the router's expert bias in fp32, and without
  this a bf16 bias would come back fp32 from `megatron export --to_hf` and `save_safetensors`.
- `register()`: `register_model(ModelMeta("hy_v3", ...), exist_ok=True)`, replacing mcore-bridge's
  own hy_v3 entry for this process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mcore_bridge.bridge import GPTBridge
from mcore_bridge.config import ModelConfig
from mcore_bridge.config.parser import hf_to_mcore_config
from mcore_bridge.model.register import ModelMeta, get_model_meta, register_model

from ..config import config_from_dict, Hy3Config, load_config
from ..dtypes import dtype_name, FLOAT_DTYPES, torch_dtype
from ..errors import Hy3Error
from ..formats.hf_checkpoint import HFCheckpoint, inspect, Inspection
from ..mapping import expected_keys, EXPERT_BIAS, HF_TENSORS, MTP_NORM, ROUTER, SHARED_GATE
from .model import ARCH_FIELDS, layer_freq, model_fields, same_value, TRAINING_DEFAULTS

MODEL_TYPE = "hy_v3"
MLP = GPTBridge.hf_mlp_prefix + "."   # GPTBridge's keys below are under it


def _table_row(inner: str):
    rows = [t for t in HF_TENSORS if t.inner == inner]
    if len(rows) != 1:
        raise Hy3Error(f"mapping table: expected one row for {inner}, found {len(rows)}")
    return rows[0]


def _under_mlp(key: str) -> str:
    if not key.startswith(MLP):
        raise Hy3Error(f"mapping table: {key} is not under {MLP}")
    return key[len(MLP):]


def bridge_keys(layout: str) -> dict:
    """GPTBridge's per-layer key attributes for one layout, from the mapping table."""
    def key(inner):
        row = _table_row(inner)
        return _under_mlp(row.inner if layout == "inner" or row.outer is None else row.outer)

    return {"hf_gate_key": key(ROUTER),
            "hf_expert_bias_key": key(EXPERT_BIAS),
            "hf_shared_expert_key": key(SHARED_GATE).rsplit(".", 2)[0]}   # the module of its gate projection


MTP_FINAL_NORM = _table_row(MTP_NORM).inner   # Tencent's model.layers.{L}.final_layernorm.weight


def _checkpoint_dir(hf_config) -> Path | None:
    path = getattr(hf_config, "name_or_path", None) or getattr(hf_config, "_name_or_path", None)
    if path and (Path(path) / "config.json").is_file():
        return Path(path)
    return None


def read_hy3_config(hf_config) -> Hy3Config:
    """The checkpoint's config.json through our reader (the file itself when it is at hand:
    transformers' HYV3Config fills its own defaults for fields Tencent's spelling names differently)."""
    root = _checkpoint_dir(hf_config)
    if root is not None:
        return load_config(root)
    return config_from_dict(hf_config.to_dict(), "hf_config")


def inspect_weights(root) -> Inspection | None:
    """The HF checkpoint in a directory (its headers, 'inner' or 'outer' layout), read leniently: None when it
    has no weights here; an unreadable index or header, or both layouts at once, is an error."""
    if root is None or not any(Path(root).glob("*.safetensors")):
        return None
    found = inspect(root)
    if found.ck is None:
        raise Hy3Error(found.problems[0])
    if found.layout == "mixed":
        raise Hy3Error(f"{found.root}: holds both inner and outer expert tensors; run `hy3 check {found.root}`")
    return found


def checkpoint_layout(root) -> str | None:
    """'inner' or 'outer' for an HF checkpoint directory, None when it has no weights here."""
    found = inspect_weights(root)
    return found.layout if found else None


@dataclass
class Hy3ModelConfig(ModelConfig):
    def __post_init__(self):
        if self.hf_config is None:
            raise Hy3Error("Hy3 (mcore-bridge): the model config needs hf_config (the checkpoint's config.json)")
        cfg = read_hy3_config(self.hf_config)
        self._apply_hy3(cfg)
        self.hy3 = cfg          # read by Hy3Bridge, which ModelConfig.__post_init__ builds
        super().__post_init__()

    def _apply_hy3(self, cfg: Hy3Config) -> None:
        parsed = hf_to_mcore_config(self.hf_config)   # what mcore-bridge's parser handed ms-swift
        defaults = {f: ModelConfig.__dataclass_fields__[f].default for f in ARCH_FIELDS + tuple(TRAINING_DEFAULTS)
                    if f in ModelConfig.__dataclass_fields__}
        want = model_fields(cfg)
        bad = []
        for f in ARCH_FIELDS:
            have = getattr(self, f)
            from_parser = parsed.get(f, defaults.get(f))
            if same_value(f, have, from_parser, cfg.num_layers) or same_value(f, have, want[f], cfg.num_layers):
                setattr(self, f, want[f])
            else:
                bad.append(f"{f}={have!r} (the checkpoint's config.json says {want[f]!r})")
        if bad:
            raise Hy3Error("Hy3: these settings contradict the checkpoint and would build another model: "
                           + "; ".join(bad) + ". Remove them from the flags / megatron_extra_kwargs.")
        self.moe_layer_freq = "[" + ",".join(map(str, layer_freq(want["moe_layer_freq"], cfg.num_layers))) + "]"
        mtp = self.mtp_num_layers
        if mtp is None:
            self.mtp_num_layers = want["mtp_num_layers"]
        elif mtp == 0:
            self.mtp_num_layers = None       # --mtp_num_layers 0: train without the MTP layer
        elif not 0 < mtp <= cfg.num_mtp_layers:
            raise Hy3Error(f"Hy3: mtp_num_layers {mtp} but the checkpoint has {cfg.num_mtp_layers} MTP layer(s)")
        for f, v in TRAINING_DEFAULTS.items():
            if getattr(self, f) == defaults.get(f):
                setattr(self, f, v)


class Hy3Bridge(GPTBridge):
    hf_mtp_final_layernorm_key = MTP_FINAL_NORM

    def __init__(self, config):
        super().__init__(config)
        self.hy3: Hy3Config = getattr(config, "hy3", None) or read_hy3_config(config.hf_config)
        self.layout = checkpoint_layout(_checkpoint_dir(config.hf_config)) or "inner"
        self._use_layout(self.layout)

    def _use_layout(self, layout: str) -> None:
        self.layout = layout
        for name, value in bridge_keys(layout).items():
            setattr(self, name, value)
        self._expected = set(expected_keys(self.hy3, layout))

    def load_weights(self, mg_models, hf_model_dir, peft_format=False, adapter_name="default", converter=None):
        if not peft_format:
            ck = HFCheckpoint(hf_model_dir)         # every key and shape against config.json, clear errors
            if ck.config.to_transformers() != self.hy3.to_transformers():
                raise Hy3Error(f"{hf_model_dir}: its config.json is not the one this model was built from")
            self._use_layout(ck.layout)
            self._source = Path(hf_model_dir)
        return super().load_weights(mg_models, hf_model_dir, peft_format, adapter_name, converter)

    def source_dtypes(self) -> dict:
        """Each tensor's dtype in the HF checkpoint the model came from (the one load_weights read, else the
        one config.json was read from), from its safetensors headers; {} when no weights are at hand."""
        root = getattr(self, "_source", None) or _checkpoint_dir(self.config.hf_config)
        if root is None or not any(Path(root).glob("*.safetensors")):
            return {}
        if getattr(self, "_dtypes_of", None) != root:
            self._dtypes = {k: info.dtype for k, info in inspect_weights(root).ck.tensors.items()}
            self._dtypes_of = root
        return self._dtypes

    def _set_router(self, mg_mlp, hf_state_dict, to_mcore, **kwargs):
        if self._peft_format:
            # The expert bias is a frozen base buffer, never an adapter tensor. GPTBridge would look for
            # `router.lora_A.<adapter>.expert_bias` when the router itself carries LoRA (all-router) and fail.
            kwargs["moe_router_enable_expert_bias"] = False
        return super()._set_router(mg_mlp, hf_state_dict, to_mcore, **kwargs)

    def _get_hf_experts_attr(self, is_mtp: bool = False):
        # (fused 3D experts, gate and up fused): the outer layout's `mlp.experts.gate_up_proj` [E, 2I, H]
        # and `mlp.experts.down_proj` [E, H, I]; adapters are always per expert.
        if self.layout == "outer" and not self._peft_format:
            return True, True
        return False, False

    def export_weights(self, mg_models, *args, **kwargs):
        peft = kwargs.get("peft_format", args[2] if len(args) > 2 else False)
        dtypes = {} if peft else self.source_dtypes()
        for k, v in super().export_weights(mg_models, *args, **kwargs):
            if not peft and v is not None:
                if k not in self._expected:
                    raise Hy3Error(f"Hy3 export: {k} is not a tensor of a {self.layout}-layout Hy3 checkpoint "
                                   f"(mapping table); refusing to write it")
                want = dtypes.get(k)
                if want in FLOAT_DTYPES and v.is_floating_point() and dtype_name(v.dtype) != want:
                    v = v.to(torch_dtype(want))   # the source checkpoint's dtype, as mcore-to-hf keeps it
            yield k, v


def register() -> None:
    """Replace mcore-bridge's hy_v3 registration with this one (idempotent)."""
    meta = get_model_meta(MODEL_TYPE)
    if meta is not None and meta.bridge_cls is Hy3Bridge:
        return
    register_model(ModelMeta(MODEL_TYPE, [MODEL_TYPE], bridge_cls=Hy3Bridge, config_cls=Hy3ModelConfig),
                   exist_ok=True)
