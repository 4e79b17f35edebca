"""The one table of Hy3 tensor names.

Every HF tensor of Hy3 is described once here by its *logical* name: the name it has in the
published ("inner") layout, where each expert is its own tensor. The fused ("outer") layout
stores the same bytes under other keys: renamed router, bias and shared-expert tensors, and
two 3D tensors per MoE layer that stack every expert. An outer location is therefore
(key, expert index, row range), and fusing or splitting experts is a byte shuffle.

Converters, the checker, the Megatron mapping, LoRA export and the tests all read this module.
A model of some decoder layers only (`LayerSubset`, at the end) renames its tensors here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

from .config import Hy3Config
from .errors import Hy3Error

LAYOUTS = ("inner", "outer")
LAYER = "model.layers.{i}."

# scopes: "model" (once), "layer" (every decoder and MTP layer), "dense" / "moe" (by layer type),
# "expert" (every routed expert of every MoE layer), "mtp" (MTP layers only)


@dataclass(frozen=True)
class HFTensor:
    scope: str
    inner: str
    shape: Callable[[Hy3Config], tuple]
    outer: str | None = None      # outer key, when it differs from the inner one
    rows: tuple[int, int] | None = None  # experts: row range of the fused tensor, in units of moe_ffn


HF_TENSORS: tuple[HFTensor, ...] = (
    HFTensor("model", "model.embed_tokens.weight", lambda c: (c.vocab_size, c.hidden_size)),
    HFTensor("model", "model.norm.weight", lambda c: (c.hidden_size,)),
    HFTensor("model", "lm_head.weight", lambda c: (c.vocab_size, c.hidden_size)),
    HFTensor("layer", "input_layernorm.weight", lambda c: (c.hidden_size,)),
    HFTensor("layer", "self_attn.q_proj.weight", lambda c: (c.num_heads * c.head_dim, c.hidden_size)),
    HFTensor("layer", "self_attn.k_proj.weight", lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size)),
    HFTensor("layer", "self_attn.v_proj.weight", lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size)),
    HFTensor("layer", "self_attn.o_proj.weight", lambda c: (c.hidden_size, c.num_heads * c.head_dim)),
    HFTensor("layer", "self_attn.q_norm.weight", lambda c: (c.head_dim,)),
    HFTensor("layer", "self_attn.k_norm.weight", lambda c: (c.head_dim,)),
    HFTensor("layer", "post_attention_layernorm.weight", lambda c: (c.hidden_size,)),
    HFTensor("dense", "mlp.gate_proj.weight", lambda c: (c.intermediate_size, c.hidden_size)),
    HFTensor("dense", "mlp.up_proj.weight", lambda c: (c.intermediate_size, c.hidden_size)),
    HFTensor("dense", "mlp.down_proj.weight", lambda c: (c.hidden_size, c.intermediate_size)),
    HFTensor("moe", "mlp.router.gate.weight", lambda c: (c.num_experts, c.hidden_size), outer="mlp.gate.weight"),
    HFTensor("moe", "mlp.expert_bias", lambda c: (c.num_experts,), outer="mlp.e_score_correction_bias"),
    HFTensor("moe", "mlp.shared_mlp.gate_proj.weight", lambda c: (c.shared_ffn, c.hidden_size),
             outer="mlp.shared_experts.gate_proj.weight"),
    HFTensor("moe", "mlp.shared_mlp.up_proj.weight", lambda c: (c.shared_ffn, c.hidden_size),
             outer="mlp.shared_experts.up_proj.weight"),
    HFTensor("moe", "mlp.shared_mlp.down_proj.weight", lambda c: (c.hidden_size, c.shared_ffn),
             outer="mlp.shared_experts.down_proj.weight"),
    HFTensor("expert", "mlp.experts.{e}.gate_proj.weight", lambda c: (c.moe_ffn, c.hidden_size),
             outer="mlp.experts.gate_up_proj", rows=(0, 1)),
    HFTensor("expert", "mlp.experts.{e}.up_proj.weight", lambda c: (c.moe_ffn, c.hidden_size),
             outer="mlp.experts.gate_up_proj", rows=(1, 2)),
    HFTensor("expert", "mlp.experts.{e}.down_proj.weight", lambda c: (c.hidden_size, c.moe_ffn),
             outer="mlp.experts.down_proj"),
    HFTensor("mtp", "eh_proj.weight", lambda c: (c.hidden_size, 2 * c.hidden_size)),
    HFTensor("mtp", "enorm.weight", lambda c: (c.hidden_size,)),
    HFTensor("mtp", "hnorm.weight", lambda c: (c.hidden_size,)),
    HFTensor("mtp", "final_layernorm.weight", lambda c: (c.hidden_size,)),
)

# Outer fused expert tensors: key suffix -> shape, built from the expert rows above.
FUSED_SHAPES: dict[str, Callable[[Hy3Config], tuple]] = {
    "mlp.experts.gate_up_proj": lambda c: (c.num_experts, 2 * c.moe_ffn, c.hidden_size),
    "mlp.experts.down_proj": lambda c: (c.num_experts, c.hidden_size, c.moe_ffn),
}


@dataclass(frozen=True)
class Logical:
    """One logical HF tensor of a concrete model, with where it lives in the outer layout."""
    name: str            # inner key
    shape: tuple
    layer: int | None    # HF layer index (MTP layers follow the decoder layers); None for model scope
    expert: int | None
    spec: HFTensor

    @property
    def outer_key(self) -> str:
        if self.spec.outer is None:
            return self.name
        return LAYER.format(i=self.layer) + self.spec.outer

    def key(self, layout: str) -> str:
        """The checkpoint key that holds this tensor (for outer experts: the fused tensor)."""
        return self.name if layout == "inner" else self.outer_key

    def outer_slice(self, c: Hy3Config) -> tuple[int, int] | None:
        """Element range of this tensor inside its outer fused tensor (row-major), or None."""
        if self.expert is None or self.spec.outer is None:
            return None
        per_expert = FUSED_SHAPES[self.spec.outer](c)
        expert_elems = per_expert[1] * per_expert[2]
        lo, hi = self.spec.rows or (0, None)
        row = c.moe_ffn * per_expert[2]  # elements per moe_ffn rows (gate_up rows are H wide)
        start = self.expert * expert_elems + lo * row
        end = self.expert * expert_elems + (hi * row if hi is not None else expert_elems)
        return start, end


def _layer_scopes(c: Hy3Config, i: int) -> tuple[str, ...]:
    scopes = ["layer", "moe" if c.is_moe(i) else "dense"]
    if i >= c.num_layers:
        scopes.append("mtp")
    return tuple(scopes)


def logical_tensors(c: Hy3Config) -> Iterator[Logical]:
    """Every logical HF tensor of the model, in a stable order (model, then layer by layer)."""
    for t in HF_TENSORS:
        if t.scope == "model":
            yield Logical(t.inner, tuple(t.shape(c)), None, None, t)
    for i in c.all_hf_layers():
        scopes = _layer_scopes(c, i)
        prefix = LAYER.format(i=i)
        for t in HF_TENSORS:
            if t.scope in scopes:
                yield Logical(prefix + t.inner, tuple(t.shape(c)), i, None, t)
        if "moe" in scopes:
            for e in range(c.num_experts):
                for t in HF_TENSORS:
                    if t.scope == "expert":
                        yield Logical(prefix + t.inner.format(e=e), tuple(t.shape(c)), i, e, t)


def expected_keys(c: Hy3Config, layout: str) -> dict[str, tuple]:
    """Checkpoint key -> shape for a complete checkpoint in the given layout."""
    if layout not in LAYOUTS:
        raise ValueError(layout)
    out: dict[str, tuple] = {}
    for t in logical_tensors(c):
        if layout == "outer" and t.expert is not None:
            out[t.outer_key] = tuple(FUSED_SHAPES[t.spec.outer](c))
        else:
            out[t.key(layout)] = t.shape
    return out


def fused_parts(c: Hy3Config) -> dict[str, list[Logical]]:
    """Outer fused key -> the logical expert tensors it holds, in byte order."""
    parts: dict[str, list[Logical]] = {}
    for t in logical_tensors(c):
        if t.expert is not None:
            parts.setdefault(t.outer_key, []).append(t)
    for key, ts in parts.items():
        ts.sort(key=lambda t: t.outer_slice(c)[0])
    return parts


def detect_layout(keys) -> str | None:
    """'inner', 'outer', 'mixed' or None (no expert tensors at all)."""
    inner = outer = False
    for k in keys:
        if ".mlp.experts." in k:
            if k.endswith(".mlp.experts.gate_up_proj") or k.endswith(".mlp.experts.down_proj"):
                outer = True
            else:
                inner = True
        elif k.endswith(".mlp.router.gate.weight") or k.endswith(".mlp.expert_bias") or ".mlp.shared_mlp." in k:
            inner = True
        elif k.endswith(".mlp.gate.weight") or k.endswith(".mlp.e_score_correction_bias") or ".mlp.shared_experts." in k:
            outer = True
    if inner and outer:
        return "mixed"
    return "inner" if inner else "outer" if outer else None


# --- Megatron-Core ---------------------------------------------------------------------------
#
# Megatron names are the distributed-checkpoint keys of megatron-core's GPTModel with the
# transformer-engine spec (what `megatron sft` saves and loads). Each row says which logical HF
# tensors make up the *global* (unsharded) Megatron tensor and how (`op`); how that global tensor
# is split across TP/EP ranks is Megatron's own business (its sharded_state_dict), except that
# `tp` records the axis tensor parallelism splits, for LoRA and for checking against Megatron.
#
# ops: copy | vocab (rows padded to the padded vocabulary) | qkv (q, k, v interleaved per query
# group) | glu (gate rows then up rows). Scope "expert" rows hold one expert per index of the
# leading axis of a [num_experts, ...] tensor.

MCORE_LAYER = "decoder.layers.{i}."
MCORE_MTP = "mtp.layers.{k}."
MCORE_MTP_LAYER = "mtp.layers.{k}.transformer_layer."


@dataclass(frozen=True)
class MCoreRow:
    scope: str
    mcore: str
    hf: tuple[str, ...]
    op: str = "copy"
    tp: int | None = None


MCORE_ROWS: tuple[MCoreRow, ...] = (
    MCoreRow("model", "embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab", tp=0),
    MCoreRow("model", "decoder.final_layernorm.weight", ("model.norm.weight",)),
    MCoreRow("model", "output_layer.weight", ("lm_head.weight",), "vocab", tp=0),
    MCoreRow("layer", "self_attention.linear_qkv.layer_norm_weight", ("input_layernorm.weight",)),
    MCoreRow("layer", "self_attention.linear_qkv.weight",
             ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"), "qkv", tp=0),
    MCoreRow("layer", "self_attention.q_layernorm.weight", ("self_attn.q_norm.weight",)),
    MCoreRow("layer", "self_attention.k_layernorm.weight", ("self_attn.k_norm.weight",)),
    MCoreRow("layer", "self_attention.linear_proj.weight", ("self_attn.o_proj.weight",), tp=1),
    MCoreRow("dense", "mlp.linear_fc1.layer_norm_weight", ("post_attention_layernorm.weight",)),
    MCoreRow("dense", "mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), "glu", tp=0),
    MCoreRow("dense", "mlp.linear_fc2.weight", ("mlp.down_proj.weight",), tp=1),
    MCoreRow("moe", "pre_mlp_layernorm.weight", ("post_attention_layernorm.weight",)),
    MCoreRow("moe", "mlp.router.weight", ("mlp.router.gate.weight",)),
    MCoreRow("moe", "mlp.router.expert_bias", ("mlp.expert_bias",)),
    MCoreRow("moe", "mlp.shared_experts.linear_fc1.weight",
             ("mlp.shared_mlp.gate_proj.weight", "mlp.shared_mlp.up_proj.weight"), "glu", tp=0),
    MCoreRow("moe", "mlp.shared_experts.linear_fc2.weight", ("mlp.shared_mlp.down_proj.weight",), tp=1),
    MCoreRow("expert", "mlp.experts.experts.linear_fc1.weight",
             ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight"), "glu", tp=0),
    MCoreRow("expert", "mlp.experts.experts.linear_fc2.weight", ("mlp.experts.{e}.down_proj.weight",), tp=1),
    MCoreRow("mtp", "enorm.weight", ("enorm.weight",)),
    MCoreRow("mtp", "hnorm.weight", ("hnorm.weight",)),
    MCoreRow("mtp", "eh_proj.weight", ("eh_proj.weight",), tp=0),
    MCoreRow("mtp", "final_layernorm.weight", ("final_layernorm.weight",)),
)


@dataclass(frozen=True)
class MCoreTensor:
    """One global Megatron tensor of a concrete model and the logical HF tensors it is made of."""
    key: str
    row: MCoreRow
    layer: int | None            # HF layer index
    hf: tuple[str, ...]          # for expert tensors: names for expert 0 (see `sources`)
    shape: tuple                 # global shape; expert tensors: (num_experts, *per-expert shape)

    @property
    def experts(self) -> int | None:
        return self.shape[0] if self.row.scope == "expert" else None

    def sources(self, expert: int | None = None) -> tuple[str, ...]:
        if self.row.scope != "expert":
            return self.hf
        prefix = LAYER.format(i=self.layer)
        return tuple(prefix + h.format(e=expert) for h in self.row.hf)


def mcore_prefix(c: Hy3Config, hf_layer: int, scope: str) -> str:
    if hf_layer < c.num_layers:
        return MCORE_LAYER.format(i=hf_layer)
    k = hf_layer - c.num_layers
    return MCORE_MTP.format(k=k) if scope == "mtp" else MCORE_MTP_LAYER.format(k=k)


def mcore_tensors(c: Hy3Config, padded_vocab: int | None = None) -> list[MCoreTensor]:
    """Every global Megatron tensor of the model, in a stable order."""
    shapes = {t.name: t.shape for t in logical_tensors(c)}
    vocab = padded_vocab or c.vocab_size
    out: list[MCoreTensor] = []

    def add(row: MCoreRow, key: str, layer, hf: tuple[str, ...]):
        parts = [shapes[h] for h in hf]
        if row.op == "vocab":
            shape = (vocab,) + tuple(parts[0][1:])
        elif row.op in ("qkv", "glu"):
            shape = (sum(p[0] for p in parts),) + tuple(parts[0][1:])
        else:
            shape = tuple(parts[0])
        if row.scope == "expert":
            shape = (c.num_experts,) + shape
        out.append(MCoreTensor(key, row, layer, hf, shape))

    for row in MCORE_ROWS:
        if row.scope == "model":
            add(row, row.mcore, None, row.hf)
    for i in c.all_hf_layers():
        scopes = _layer_scopes(c, i)
        prefix = LAYER.format(i=i)
        for row in MCORE_ROWS:
            if row.scope in scopes or (row.scope == "expert" and "moe" in scopes):
                hf = tuple(prefix + h.format(e=0) for h in row.hf)
                add(row, mcore_prefix(c, i, row.scope) + row.mcore, i, hf)
    return out


# --- a model of some decoder layers ----------------------------------------------------------
#
# `hy3 verify parity --layers` builds a Hy3 of only some decoder layers, plus the embedding, final norm,
# output layer and MTP layers. That model has a config of its own (`LayerSubset.config`): its decoder
# layer j is the checkpoint's decoder layer layers[j], its MTP layer k the checkpoint's MTP layer k. Its
# tensors are named as that config names them (above), and read under the checkpoint's names (below),
# for the Megatron model and the transformers reference alike.

@dataclass(frozen=True)
class LayerSubset:
    full: Hy3Config
    layers: tuple[int, ...]
    config: Hy3Config = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        layers = tuple(self.layers)
        check_layers(self.full, layers)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "config", replace(
            self.full, num_layers=len(layers), layer_types=tuple(self.full.layer_types[i] for i in layers)))

    @property
    def is_whole(self) -> bool:
        return self.layers == tuple(range(self.full.num_layers))

    def hf_layer(self, j: int) -> int:
        """The checkpoint's HF layer index of this model's HF layer j (decoder or MTP)."""
        n = len(self.layers)
        return self.layers[j] if j < n else self.full.num_layers + (j - n)

    def hf_name(self, name: str) -> str:
        """The checkpoint's logical name of this model's logical HF tensor `name`."""
        return self._hf_names[name]

    def mcore_key(self, key: str) -> str:
        """The checkpoint's Megatron key of this model's Megatron key (tensor or object under a layer)."""
        for mine, theirs in self._mcore_prefixes:
            if key.startswith(mine):
                return theirs + key[len(mine):]
        return key

    def reader(self, read: Callable[[str], object]) -> Callable[[str], object]:
        """read(checkpoint name) -> a function reading this model's tensors by their names."""
        return lambda name: read(self.hf_name(name))

    @property
    def _hf_names(self) -> dict[str, str]:
        names = self.__dict__.get("_names")
        if names is None:
            names = {}
            for t in logical_tensors(self.config):
                if t.layer is None:
                    names[t.name] = t.name
                else:
                    mine = LAYER.format(i=t.layer)
                    names[t.name] = LAYER.format(i=self.hf_layer(t.layer)) + t.name[len(mine):]
            object.__setattr__(self, "_names", names)
        return names

    @property
    def _mcore_prefixes(self) -> list[tuple[str, str]]:
        """(this model's prefix, the checkpoint's), longest first, for every decoder and MTP layer."""
        pairs = {}
        for j in self.config.all_hf_layers():
            for scope in ("layer", "mtp") if j >= self.config.num_layers else ("layer",):
                pairs[mcore_prefix(self.config, j, scope)] = mcore_prefix(self.full, self.hf_layer(j), scope)
        return sorted(pairs.items(), key=lambda p: -len(p[0]))


def check_layers(c: Hy3Config, layers: Sequence[int]) -> None:
    """Decoder layer indices that make a model: some, in the checkpoint's order, each once, each there."""
    shown = ",".join(map(str, layers))
    if not layers:
        raise Hy3Error("--layers: expected at least one decoder layer index")
    bad = [i for i in layers if not 0 <= i < c.num_layers]
    if bad:
        raise Hy3Error(f"--layers {shown}: layer {bad[0]} does not exist; the checkpoint has {c.num_layers} decoder "
                       f"layers, 0 to {c.num_layers - 1}" + (" (its MTP layers come with every subset)"
                                                             if c.num_mtp_layers and bad[0] >= c.num_layers else ""))
    seen = set()
    for i in layers:
        if i in seen:
            raise Hy3Error(f"--layers {shown}: layer {i} is listed twice")
        seen.add(i)
    if list(layers) != sorted(layers):
        raise Hy3Error(f"--layers {shown}: expected increasing layer indices, as the checkpoint orders its layers")
