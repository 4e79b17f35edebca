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

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

from .config import Hy3Config
from .errors import Hy3Error

LAYOUTS = ("inner", "outer")
LAYER = "model.layers.{i}."

# scopes: "model" (once), "layer" (every decoder and MTP layer), "dense" / "moe" (by layer type),
# "expert" (every routed expert of every MoE layer), "mtp" (MTP layers only)

# Tensors some readers name by their role (the MTP forward of reference.py, the tiny generator, mcore-bridge's
# keys), spelled once here and used by the rows below.
EMBED = "model.embed_tokens.weight"
ROUTER = "mlp.router.gate.weight"     # a matrix in no linear module; ms-swift's LoRA can still target it
EXPERT_BIAS = "mlp.expert_bias"
SHARED_GATE = "mlp.shared_mlp.gate_proj.weight"
MTP_EH_PROJ = "eh_proj.weight"
MTP_ENORM = "enorm.weight"
MTP_HNORM = "hnorm.weight"
MTP_NORM = "final_layernorm.weight"


@dataclass(frozen=True)
class HFTensor:
    scope: str
    inner: str
    shape: Callable[[Hy3Config], tuple]
    outer: str | None = None      # outer key, when it differs from the inner one
    rows: tuple[int, int] | None = None  # experts: row range of the fused tensor, in units of moe_ffn
    lora: str | None = None       # the Megatron linear module this tensor is part of, which LoRA can target
    buffer: bool = False          # a Megatron buffer, not a trained parameter
    keep_dtype: bool = False      # kept in its own dtype (Megatron stores fp32), not the checkpoint's main one


HF_TENSORS: tuple[HFTensor, ...] = (
    HFTensor("model", EMBED, lambda c: (c.vocab_size, c.hidden_size)),
    HFTensor("model", "model.norm.weight", lambda c: (c.hidden_size,)),
    HFTensor("model", "lm_head.weight", lambda c: (c.vocab_size, c.hidden_size)),
    HFTensor("layer", "input_layernorm.weight", lambda c: (c.hidden_size,)),
    HFTensor("layer", "self_attn.q_proj.weight", lambda c: (c.num_heads * c.head_dim, c.hidden_size),
             lora="linear_qkv"),
    HFTensor("layer", "self_attn.k_proj.weight", lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size),
             lora="linear_qkv"),
    HFTensor("layer", "self_attn.v_proj.weight", lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size),
             lora="linear_qkv"),
    HFTensor("layer", "self_attn.o_proj.weight", lambda c: (c.hidden_size, c.num_heads * c.head_dim),
             lora="linear_proj"),
    HFTensor("layer", "self_attn.q_norm.weight", lambda c: (c.head_dim,)),
    HFTensor("layer", "self_attn.k_norm.weight", lambda c: (c.head_dim,)),
    HFTensor("layer", "post_attention_layernorm.weight", lambda c: (c.hidden_size,)),
    HFTensor("dense", "mlp.gate_proj.weight", lambda c: (c.intermediate_size, c.hidden_size), lora="linear_fc1"),
    HFTensor("dense", "mlp.up_proj.weight", lambda c: (c.intermediate_size, c.hidden_size), lora="linear_fc1"),
    HFTensor("dense", "mlp.down_proj.weight", lambda c: (c.hidden_size, c.intermediate_size), lora="linear_fc2"),
    HFTensor("moe", ROUTER, lambda c: (c.num_experts, c.hidden_size), outer="mlp.gate.weight"),
    HFTensor("moe", EXPERT_BIAS, lambda c: (c.num_experts,), outer="mlp.e_score_correction_bias",
             buffer=True, keep_dtype=True),
    HFTensor("moe", SHARED_GATE, lambda c: (c.shared_ffn, c.hidden_size),
             outer="mlp.shared_experts.gate_proj.weight", lora="linear_fc1"),
    HFTensor("moe", "mlp.shared_mlp.up_proj.weight", lambda c: (c.shared_ffn, c.hidden_size),
             outer="mlp.shared_experts.up_proj.weight", lora="linear_fc1"),
    HFTensor("moe", "mlp.shared_mlp.down_proj.weight", lambda c: (c.hidden_size, c.shared_ffn),
             outer="mlp.shared_experts.down_proj.weight", lora="linear_fc2"),
    HFTensor("expert", "mlp.experts.{e}.gate_proj.weight", lambda c: (c.moe_ffn, c.hidden_size),
             outer="mlp.experts.gate_up_proj", rows=(0, 1), lora="linear_fc1"),
    HFTensor("expert", "mlp.experts.{e}.up_proj.weight", lambda c: (c.moe_ffn, c.hidden_size),
             outer="mlp.experts.gate_up_proj", rows=(1, 2), lora="linear_fc1"),
    HFTensor("expert", "mlp.experts.{e}.down_proj.weight", lambda c: (c.hidden_size, c.moe_ffn),
             outer="mlp.experts.down_proj", lora="linear_fc2"),
    HFTensor("mtp", MTP_EH_PROJ, lambda c: (c.hidden_size, 2 * c.hidden_size), lora="eh_proj"),
    HFTensor("mtp", MTP_ENORM, lambda c: (c.hidden_size,)),
    HFTensor("mtp", MTP_HNORM, lambda c: (c.hidden_size,)),
    HFTensor("mtp", MTP_NORM, lambda c: (c.hidden_size,)),
)


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
        per_expert = fused_shape(self.spec.outer, c)
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
            out[t.outer_key] = fused_shape(t.spec.outer, c)
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
    """'inner', 'outer', 'mixed' or None (no expert tensors at all), from the keys only one layout has."""
    experts, fused, marks = _derived(_layout_marks)
    inner = outer = False
    for k in keys:
        if any(e in k for e in experts):
            if k.endswith(fused):
                outer = True
            else:
                inner = True
        elif k.endswith(marks["inner"][0]) or any(m in k for m in marks["inner"][1]):
            inner = True
        elif k.endswith(marks["outer"][0]) or any(m in k for m in marks["outer"][1]):
            outer = True
    if inner and outer:
        return "mixed"
    return "inner" if inner else "outer" if outer else None


def _layout_marks() -> tuple:
    """(parts of per-expert keys, fused expert key suffixes, layout -> (key suffixes, key parts) of that layout
    only): a tensor renamed between the layouts marks its layout by its name, unless its module is renamed in
    place (`mlp.shared_mlp.` and `mlp.shared_experts.`): then every key under the module does."""
    experts = tuple({"." + t.inner.split("{e}")[0]: 0 for t in HF_TENSORS if t.scope == "expert"})
    fused = tuple({"." + t.outer: 0 for t in HF_TENSORS if t.scope == "expert"})
    marks: dict[str, tuple[list, list]] = {layout: ([], []) for layout in LAYOUTS}
    for t in HF_TENSORS:
        if t.outer is None or t.scope == "expert":
            continue
        modules = _renamed_module(t)
        for layout, name, module in zip(LAYOUTS, (t.inner, t.outer), modules or (None, None)):
            suffixes, parts = marks[layout]
            if module is None:
                suffixes.append("." + name)
            elif "." + module + "." not in parts:
                parts.append("." + module + ".")
    return experts, fused, {layout: (tuple(s), tuple(p)) for layout, (s, p) in marks.items()}


def _renamed_module(t: HFTensor) -> tuple[str, str] | None:
    """(inner, outer) module of a tensor whose layouts differ in one module's name only, else None."""
    a, b = t.inner.split("."), t.outer.split(".")
    same = 0
    while same < min(len(a), len(b)) and a[-1 - same] == b[-1 - same]:
        same += 1
    a, b = a[: len(a) - same], b[: len(b) - same]
    if not same or len(a) != len(b) or a[:-1] != b[:-1]:
        return None
    return ".".join(a), ".".join(b)


def keeps_dtype(key: str) -> bool:
    """Whether the tensor under this key (HF in either layout, or Megatron) keeps its own dtype where others are
    converted: the `keep_dtype` rows, and the Megatron tensors made of them (megatron-core keeps them in fp32)."""
    return key.endswith(_derived(_kept_names))


def _kept_names() -> tuple[str, ...]:
    kept = [t for t in HF_TENSORS if t.keep_dtype]
    names = [n for t in kept for n in (t.inner, t.outer) if n]
    names += [r.mcore for r in MCORE_ROWS if any(t.inner in r.hf for t in kept)]
    return tuple(names)


_DERIVED: dict = {}


def _derived(build: Callable[[], object]):
    """build()'s value for the tables as they are; built again only where a table was replaced (as a test of
    a variant may)."""
    hit = _DERIVED.get(build)
    if hit is None or hit[0] is not HF_TENSORS or hit[1] is not MCORE_ROWS:
        hit = _DERIVED[build] = (HF_TENSORS, MCORE_ROWS, build())
    return hit[2]


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
MCORE_EMBED = "embedding.word_embeddings.weight"
# Transformer-engine modules of each MTP layer's decoder layer that hold no tensor of the table but
# whose `_extra_state` the TE model asks the checkpoint for: megatron-core's TEDotProductAttention leaves
# it out of its sharded_state_dict, but MultiTokenPredictionBlock.sharded_state_dict also adds its layers'
# plain state_dict, which has it (until 0.17: mcore_versions.MTP_NO_CORE_ATTENTION_EXTRA_STATE).
MCORE_MTP_TE_MODULES = ("self_attention.core_attention",)


@dataclass(frozen=True)
class MCoreRow:
    scope: str
    mcore: str
    hf: tuple[str, ...]
    op: str = "copy"
    tp: int | None = None
    stage: str | None = None   # model tensors: the item of Megatron's pipeline layout that holds it, E or L
    te_op: bool = False        # a standalone transformer-engine op in the TE spec: its module's `_extra_state` too


MCORE_ROWS: tuple[MCoreRow, ...] = (
    MCoreRow("model", MCORE_EMBED, (EMBED,), "vocab", tp=0, stage="E"),
    MCoreRow("model", "decoder.final_layernorm.weight", ("model.norm.weight",), stage="L", te_op=True),
    MCoreRow("model", "output_layer.weight", ("lm_head.weight",), "vocab", tp=0, stage="L"),
    MCoreRow("layer", "self_attention.linear_qkv.layer_norm_weight", ("input_layernorm.weight",)),
    MCoreRow("layer", "self_attention.linear_qkv.weight",
             ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"), "qkv", tp=0),
    MCoreRow("layer", "self_attention.q_layernorm.weight", ("self_attn.q_norm.weight",), te_op=True),
    MCoreRow("layer", "self_attention.k_layernorm.weight", ("self_attn.k_norm.weight",), te_op=True),
    MCoreRow("layer", "self_attention.linear_proj.weight", ("self_attn.o_proj.weight",), tp=1),
    MCoreRow("dense", "mlp.linear_fc1.layer_norm_weight", ("post_attention_layernorm.weight",)),
    MCoreRow("dense", "mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), "glu", tp=0),
    MCoreRow("dense", "mlp.linear_fc2.weight", ("mlp.down_proj.weight",), tp=1),
    MCoreRow("moe", "pre_mlp_layernorm.weight", ("post_attention_layernorm.weight",), te_op=True),
    MCoreRow("moe", "mlp.router.weight", (ROUTER,)),
    MCoreRow("moe", "mlp.router.expert_bias", (EXPERT_BIAS,)),
    MCoreRow("moe", "mlp.shared_experts.linear_fc1.weight",
             (SHARED_GATE, "mlp.shared_mlp.up_proj.weight"), "glu", tp=0),
    MCoreRow("moe", "mlp.shared_experts.linear_fc2.weight", ("mlp.shared_mlp.down_proj.weight",), tp=1),
    MCoreRow("expert", "mlp.experts.experts.linear_fc1.weight",
             ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight"), "glu", tp=0),
    MCoreRow("expert", "mlp.experts.experts.linear_fc2.weight", ("mlp.experts.{e}.down_proj.weight",), tp=1),
    MCoreRow("mtp", MTP_ENORM, (MTP_ENORM,), te_op=True),
    MCoreRow("mtp", MTP_HNORM, (MTP_HNORM,), te_op=True),
    MCoreRow("mtp", MTP_EH_PROJ, (MTP_EH_PROJ,), tp=0),
    MCoreRow("mtp", MTP_NORM, (MTP_NORM,), te_op=True),
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


# --- what LoRA, the planner and the adapter formats read ----------------------------------------

PEFT_PREFIX = "base_model.model."     # PEFT's prefix on the names of the model it wraps


def lora_modules(*scopes: str) -> list[str]:
    """The Megatron linear modules LoRA can target, in table order (of tensors of these scopes; all by default)."""
    return list(dict.fromkeys(t.lora for t in HF_TENSORS if t.lora and (not scopes or t.scope in scopes)))


def spec(inner: str) -> HFTensor:
    """The row of an inner name as the table spells it (`MCoreRow.hf`: after the layer prefix, `{e}` for experts)."""
    return next(t for t in HF_TENSORS if t.inner == inner)


def mcore_row(t: Logical, c: Hy3Config) -> MCoreRow:
    """The Megatron row a logical HF tensor of this config goes into."""
    scopes = ("model",) if t.layer is None else ("expert",) if t.expert is not None else _layer_scopes(c, t.layer)
    return next(r for r in MCORE_ROWS if r.scope in scopes and t.spec.inner in r.hf)


def fused_specs() -> dict[str, list[HFTensor]]:
    """Outer fused expert key (after the layer prefix) -> the expert rows it stacks, in byte order."""
    out: dict[str, list[HFTensor]] = {}
    for t in HF_TENSORS:
        if t.scope == "expert":
            out.setdefault(t.outer, []).append(t)
    return {k: sorted(ts, key=lambda t: (t.rows or (0,))[0]) for k, ts in out.items()}


def fused_shape(outer: str, c: Hy3Config) -> tuple:
    """Shape of an outer fused expert tensor (key after the layer prefix): one slab per expert, each the expert
    rows it stacks (`rows` in units of moe_ffn; a row without `rows` is the whole slab)."""
    parts = fused_specs()[outer]
    rows, cols = parts[0].shape(c)
    return (c.num_experts, rows * max(t.rows[1] if t.rows else 1 for t in parts), cols)


def fused_rows(t: HFTensor, c: Hy3Config) -> slice:
    """The rows of one expert's slab of its outer fused tensor that hold this expert tensor."""
    lo, hi = t.rows or (0, None)
    return slice(lo * c.moe_ffn, None if hi is None else hi * c.moe_ffn)


def to_inner(key: str) -> str:
    """A key in the outer layout's spelling -> the inner one. Keys both layouts share, and fused expert keys
    (which hold many inner tensors), come back unchanged."""
    for t in HF_TENSORS:
        if t.outer and t.scope != "expert" and (key == t.outer or key.endswith("." + t.outer)):
            return key[: len(key) - len(t.outer)] + t.inner
    return key


def layer_of(name: str) -> int | None:
    """The HF layer index of a name under a layer prefix (`LAYER`), else None."""
    m = re.match(re.escape(LAYER).replace(re.escape("{i}"), r"(\d+)"), name)
    return int(m.group(1)) if m else None


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
