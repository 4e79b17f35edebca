"""Parameter counts: the whole model, and what one GPU holds under a layout.

Every number comes from `mapping.logical_tensors`, sorted by the table into how Megatron-Core shards it:
  - "tp":     split over tensor-parallel ranks (its Megatron row has a `tp` axis: attention projections,
              dense MLP, shared expert, eh_proj, embedding and output layer, which are vocab-parallel)
  - "rep":    replicated on every tensor-parallel rank (norms, router)
  - "expert": split over EP*ETP ranks (routed experts)
  - "buffer": held but not trained (the `buffer` column: the router's expert bias)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from ..config import Hy3Config
from ..mapping import logical_tensors, lora_modules, mcore_row
from .layout import Layout

LORA_TARGETS = set(lora_modules())


@dataclass
class Part:
    """Element counts of one layer (or of the model-level tensors), by sharding kind."""
    tp: int = 0
    rep: int = 0
    expert: int = 0           # all experts of the layer
    buffer: int = 0
    # LoRA: module -> (in_features, out_features, copies), copies = experts for routed experts
    linears: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.tp + self.rep + self.expert + self.buffer


@dataclass
class ModelParams:
    embedding: int
    output: int
    final_norm: int
    layers: dict            # HF layer index -> Part (MTP layers follow the decoder layers)
    num_layers: int
    num_experts: int

    def total(self, with_mtp: bool = True) -> int:
        n = self.embedding + self.output + self.final_norm
        for i, part in self.layers.items():
            if i < self.num_layers or with_mtp:
                n += part.total
        return n

    @property
    def mtp(self) -> int:
        return sum(p.total for i, p in self.layers.items() if i >= self.num_layers)

    @property
    def experts(self) -> int:
        return sum(p.expert for i, p in self.layers.items() if i < self.num_layers)


@lru_cache(maxsize=8)
def count_params(cfg: Hy3Config) -> ModelParams:
    """Cached: the published config has 47,138 tensors. Callers must not modify the result."""
    emb = out = norm = 0
    layers: dict[int, Part] = {}
    for t in logical_tensors(cfg):
        n = math.prod(t.shape)
        row = mcore_row(t, cfg)
        if t.layer is None:
            if row.stage == "E":
                emb += n
            elif row.tp is not None:   # the output layer; the final norm is not split
                out += n
            else:
                norm += n
            continue
        part = layers.setdefault(t.layer, Part())
        if t.expert is not None:
            part.expert += n
        elif t.spec.buffer:
            part.buffer += n
        elif row.tp is None:
            part.rep += n
        else:
            part.tp += n
        module = t.spec.lora
        if module and (t.expert is None or t.expert == 0):   # every expert has expert 0's shapes
            # a MoE layer's own (non-expert) linears are its shared expert's
            key = ("expert_" if t.expert is not None else "shared_" if t.spec.scope == "moe" else "") + module
            fan_in, fan_out, _ = part.linears.get(key, (t.shape[1], 0, 1))
            copies = cfg.num_experts if t.expert is not None else 1
            part.linears[key] = (fan_in, fan_out + t.shape[0], copies)
    return ModelParams(emb, out, norm, layers, cfg.num_layers, cfg.num_experts)


def lora_targets(args: dict) -> set[str]:
    mods = args.get("target_modules") or ["all-linear"]
    if isinstance(mods, str):
        mods = [mods]
    if "all-linear" in mods or args.get("target_regex"):
        return set(LORA_TARGETS)
    return {m for m in mods if m in LORA_TARGETS}


def lora_params(part: Part, rank: int, targets: set[str], tp: int, ep: int) -> float:
    """Adapter elements one GPU holds for one layer: r*(in+out) per targeted linear (per local expert)."""
    n = 0.0
    for key, (fan_in, fan_out, copies) in part.linears.items():
        module = key.split("_", 1)[1] if key.startswith(("expert_", "shared_")) else key
        if module not in targets:
            continue
        if key.startswith("expert_"):
            n += rank * (fan_in + fan_out) * copies / ep
        else:
            n += rank * (fan_in + fan_out) / tp
    return n


@dataclass
class RankParams:
    """Elements held by one GPU of pipeline rank `pp_rank` (every TP and EP rank of a stage holds the
    same counts: heads, vocabulary, experts and expert widths divide evenly). Base counts are exact;
    adapter counts are estimates (see lora_params)."""
    pp_rank: int
    dense: int = 0            # non-expert trainable (sharded over DP*CP by the distributed optimizer)
    expert: int = 0           # expert trainable (sharded over expert-DP)
    buffer: int = 0           # the routers' expert bias
    lora_dense: float = 0.0
    lora_expert: float = 0.0
    moe_layers: int = 0
    dense_layers: int = 0
    mtp_layers: int = 0

    @property
    def total(self) -> int:
        return self.dense + self.expert + self.buffer


def padded_vocab(vocab: int, tp: int) -> int:
    return -(-vocab // tp) * tp


def rank_params(mp: ModelParams, lay: Layout, p: int, lora_rank: int = 0, targets: set[str] = frozenset(),
                vocab: int | None = None) -> RankParams:
    r = RankParams(p)
    tp, ep_etp = lay.tp, lay.ep * lay.etp

    def vocab_parallel(n: int) -> int:   # embedding / output layer rows, padded to a multiple of TP
        return n // vocab * padded_vocab(vocab, tp) // tp if vocab else n // tp

    embedding = vocab_parallel(mp.embedding)

    def add_layer(part: Part):
        r.dense += part.tp // tp + part.rep
        r.expert += part.expert // ep_etp
        r.buffer += part.buffer
        if lora_rank:
            n_exp = lora_params(Part(linears={k: v for k, v in part.linears.items() if k.startswith("expert_")}),
                                lora_rank, targets, tp, lay.ep)
            r.lora_expert += n_exp
            r.lora_dense += lora_params(part, lora_rank, targets, tp, lay.ep) - n_exp

    for i in lay.rank_layers(p):
        add_layer(mp.layers[i])
        if mp.layers[i].expert:
            r.moe_layers += 1
        else:
            r.dense_layers += 1
    has_mtp = lay.rank_has(p, "m")
    if lay.rank_has(p, "E") or has_mtp:   # an MTP stage keeps its own copy of the embedding
        r.dense += embedding
    if lay.rank_has(p, "L"):
        r.dense += vocab_parallel(mp.output) + mp.final_norm
    if has_mtp:
        for k in range(lay.mtp):
            add_layer(mp.layers[mp.num_layers + k])
            r.mtp_layers += 1
    return r
