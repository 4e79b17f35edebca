"""Parallel layout of a `megatron sft` run: sizes, the divisibility rules Megatron-Core enforces, and
which decoder layers (plus embedding, loss and MTP) land on which pipeline rank.

Rules follow megatron-core 0.16.1 (`parallel_state.initialize_model_parallel`,
`TransformerConfig.__post_init__`, `transformer_block.get_num_layers_to_build`,
`PipelineParallelLayerLayout`) and ms-swift 4.6 (`MegatronArguments._init_distributed`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..config import Hy3Config

RECOMPUTE_MODULES = {"core_attn", "moe_act", "layernorm", "mlp", "moe", "shared_experts"}


@dataclass
class Layout:
    world: int
    tp: int
    pp: int
    cp: int
    ep: int
    etp: int
    vpp: int
    dp: int
    sp: bool
    mbs: int
    gbs: int
    seq: int
    mtp: int
    # chunks[k] for k = vpp_rank * pp + pp_rank: items are decoder layer ids, "E", "L" or "m"
    chunks: list = field(default_factory=list)

    @property
    def microbatches(self) -> int:
        return self.gbs // (self.mbs * self.dp) if self.mbs * self.dp else 0

    @property
    def edp(self) -> int:
        """Expert data-parallel size: replicas of one expert shard."""
        return self.world // (self.etp * self.ep * self.pp)

    def rank_chunks(self, p: int) -> list[list]:
        return [self.chunks[v * self.pp + p] for v in range(self.vpp)]

    def rank_layers(self, p: int) -> list[int]:
        return [x for c in self.rank_chunks(p) for x in c if isinstance(x, int)]

    def rank_has(self, p: int, tag: str) -> bool:
        return any(tag in c for c in self.rank_chunks(p))

    def describe(self) -> str:
        parts = [f"TP={self.tp}", f"PP={self.pp}"]
        if self.vpp > 1:
            parts.append(f"VPP={self.vpp}")
        parts += [f"CP={self.cp}", f"DP={self.dp}", f"EP={self.ep}", f"ETP={self.etp}"]
        return " ".join(parts) + (" SP" if self.sp else "")

    def stage_summary(self) -> list[str]:
        out = []
        for p in range(self.pp):
            layers = self.rank_layers(p)
            extra = [n for t, n in (("E", "embedding"), ("m", "MTP"), ("L", "output+loss")) if self.rank_has(p, t)]
            if not layers:
                span = "no decoder layers"
            elif self.vpp > 1:
                sizes = [len([x for x in c if isinstance(x, int)]) for c in self.rank_chunks(p)]
                span = f"{len(layers)} layers in {self.vpp} chunks ({'+'.join(map(str, sizes))})"
            else:
                span = f"layers {layers[0]}-{layers[-1]} ({len(layers)})"
            out.append(f"pp{p}: {span}" + (" + " + ", ".join(extra) if extra else ""))
        return out


def parse_pipeline_layout(text: str) -> list[list]:
    """Megatron's layout string ("Et*3|(tt|)*29,m|L") -> list of chunks of "E"/"t"/"m"/"L"."""
    s = text.replace(",", "").replace(" ", "")
    group = re.compile(r"\(([^()]*)\)\*(\d+)")
    while group.search(s):
        s = group.sub(lambda m: m.group(1) * int(m.group(2)), s)
    s = re.sub(r"([EtmL])\*(\d+)", lambda m: m.group(1) * int(m.group(2)), s)
    chunks = []
    for part in s.split("|"):
        bad = set(part) - set("EtmL")
        if bad:
            raise ValueError(f"unknown character(s) {''.join(sorted(bad))!r}; layouts use E, t, m, L, |, (...)*n")
        chunks.append(list(part))
    return chunks


def recompute_modules(args: dict) -> list[str]:
    """`recompute_modules` as a list (a single YAML string is one module, as on the command line)."""
    mods = args.get("recompute_modules") or ["core_attn"]
    return [mods] if isinstance(mods, str) else list(mods)


def _int(args: dict, key: str, default: int) -> int:
    v = args.get(key, default)
    return default if v is None else v


def build_layout(cfg: Hy3Config, args: dict, world: int, errors: list[str], warnings: list[str]) -> Layout | None:
    """Sizes and layer placement; appends every broken rule to `errors` (None when sizes themselves are broken)."""
    tp, pp, cp = _int(args, "tensor_model_parallel_size", 1), _int(args, "pipeline_model_parallel_size", 1), \
        _int(args, "context_parallel_size", 1)
    ep, etp = _int(args, "expert_model_parallel_size", 1), _int(args, "expert_tensor_parallel_size", 1)
    mbs, gbs = _int(args, "micro_batch_size", 1), _int(args, "global_batch_size", 16)
    vpp = args.get("virtual_pipeline_model_parallel_size") or 1
    mtp = args.get("mtp_num_layers") or 0
    seq = args.get("packing_length") or args.get("max_length")
    if seq is None:
        seq = cfg.max_position_embeddings
        warnings.append(f"max_length is not set: ms-swift then uses the model's {seq} tokens; set it explicitly")
    sizes = {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp, "context_parallel_size": cp,
             "expert_model_parallel_size": ep, "expert_tensor_parallel_size": etp, "micro_batch_size": mbs,
             "global_batch_size": gbs, "virtual_pipeline_model_parallel_size": vpp, "max_length": seq}
    bad = [f"{k} must be a positive integer, got {v!r}" for k, v in sizes.items()
           if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        errors.extend(bad)
        return None

    model = tp * pp * cp
    if world % model:
        errors.append(f"world size {world} is not divisible by TP*PP*CP = {tp}*{pp}*{cp} = {model}")
        return None
    dp = world // model
    lay = Layout(world, tp, pp, cp, ep, etp, vpp, dp, bool(args.get("sequence_parallel", False)), mbs, gbs, seq, mtp)

    _tensor_rules(cfg, lay, errors)
    _expert_rules(cfg, lay, errors)
    _batch_rules(args, lay, errors, warnings)
    _sequence_rules(cfg, lay, errors, warnings)
    if mtp and mtp > cfg.num_mtp_layers:
        errors.append(f"mtp_num_layers {mtp}: the checkpoint has {cfg.num_mtp_layers} MTP layer(s) "
                      f"(num_nextn_predict_layers); more would start from random weights")
    _recompute_rules(args, errors)
    _place_layers(cfg, args, lay, errors)
    return lay


def _tensor_rules(cfg: Hy3Config, lay: Layout, errors: list[str]) -> None:
    """Attention heads and query groups across tensor-parallel ranks; sequence parallelism."""
    tp = lay.tp
    if cfg.num_heads % tp:
        errors.append(f"num_attention_heads {cfg.num_heads} is not divisible by tensor_model_parallel_size {tp}")
    if cfg.num_kv_heads % tp:
        errors.append(f"num_key_value_heads (query groups) {cfg.num_kv_heads} is not divisible by "
                      f"tensor_model_parallel_size {tp}")
    if tp > 1 and not lay.sp:
        errors.append(f"tensor_model_parallel_size {tp} needs sequence_parallel: true (Megatron's MoE layers with "
                      f"tensor parallelism expect sequence parallelism; it also cuts activation memory by TP)")


def _expert_rules(cfg: Hy3Config, lay: Layout, errors: list[str]) -> None:
    """MoE parallel folding: the TP*CP*DP ranks of a pipeline stage are split into EP*ETP*EDP."""
    tp, cp, dp, ep, etp = lay.tp, lay.cp, lay.dp, lay.ep, lay.etp
    if cfg.num_experts % ep:
        errors.append(f"num_experts {cfg.num_experts} is not divisible by expert_model_parallel_size {ep}")
    if (tp * cp * dp) % (ep * etp):
        errors.append(f"EP*ETP = {ep}*{etp} = {ep * etp} does not divide the {tp * cp * dp} ranks of a pipeline stage "
                      f"(TP*CP*DP = {tp}*{cp}*{dp}); with TP=CP=ETP=1 the expert-parallel size must divide the "
                      f"data-parallel size {dp}")
    if cfg.moe_ffn % etp:
        errors.append(f"moe_intermediate_size {cfg.moe_ffn} is not divisible by expert_tensor_parallel_size {etp}")


def _batch_rules(args: dict, lay: Layout, errors: list[str], warnings: list[str]) -> None:
    """Global batch against micro batch * DP, and enough micro-batches for the pipeline schedule."""
    mbs, gbs, dp, pp, vpp = lay.mbs, lay.gbs, lay.dp, lay.pp, lay.vpp
    if gbs % (mbs * dp):
        errors.append(f"global_batch_size {gbs} is not a multiple of micro_batch_size*DP = {mbs}*{dp} = {mbs * dp}")
    elif vpp > 1:
        group = args.get("microbatch_group_size_per_vp_stage") or pp
        m = lay.microbatches
        if m < group or (m % group and m % group < pp):
            errors.append(f"interleaved pipeline (VPP={vpp}) needs the {m} micro-batches per step to be at least, and "
                          f"a multiple of, {group} (microbatch_group_size_per_vp_stage, default PP); "
                          f"raise global_batch_size")
    elif pp > 1 and lay.microbatches < pp:
        warnings.append(f"{lay.microbatches} micro-batches per step for {pp} pipeline stages: most of each step is "
                        f"pipeline bubble; raise global_batch_size")


def _sequence_rules(cfg: Hy3Config, lay: Layout, errors: list[str], warnings: list[str]) -> None:
    """Context parallelism against the sequence: ms-swift cuts each sequence into 2*CP chunks (and each
    CP shard into TP pieces under sequence parallelism), padding the sequence up to a multiple when needed."""
    cp, tp, seq = lay.cp, lay.tp, lay.seq
    if cp > 1:
        unit = math.lcm(2 * cp, cp * tp if lay.sp else 1)
        if seq < 2 * cp:
            errors.append(f"context_parallel_size {cp} needs sequences of at least 2*CP = {2 * cp} tokens; "
                          f"max_length is {seq}")
        elif seq % unit:
            errors.append(f"max_length {seq} is not a multiple of {unit} (2*CP{'*TP' if lay.sp and tp > 1 else ''}): "
                          f"a full-length sequence cannot be split evenly over {cp} context-parallel ranks")
        elif seq // cp < 4096:
            warnings.append(f"context_parallel_size {cp} leaves {seq // cp} tokens per rank; context parallelism "
                            f"pays off for long sequences only")
    if seq > cfg.max_position_embeddings:
        warnings.append(f"max_length {seq} exceeds the model's max_position_embeddings {cfg.max_position_embeddings}")


def _recompute_rules(args: dict, errors: list[str]) -> None:
    gran = args.get("recompute_granularity", "selective")
    method = args.get("recompute_method")
    n = args.get("recompute_num_layers")
    if gran == "selective":
        if method is not None or n is not None:
            errors.append("recompute_method / recompute_num_layers apply only to recompute_granularity: full")
        bad = set(recompute_modules(args)) - RECOMPUTE_MODULES
        if bad:
            errors.append(f"recompute_modules {sorted(bad)} not supported for Hy3; choose from {sorted(RECOMPUTE_MODULES)}")
        if "moe_act" in recompute_modules(args) and args.get("moe_grouped_gemm") is False:
            errors.append("recompute_modules moe_act needs moe_grouped_gemm: true")
    elif gran == "full":
        if method not in ("uniform", "block") or not isinstance(n, int) or n < 1:
            errors.append("recompute_granularity full needs recompute_method (uniform or block) and "
                          "recompute_num_layers >= 1")


def _place_layers(cfg: Hy3Config, args: dict, lay: Layout, errors: list[str]) -> None:
    """Fill lay.chunks, the way get_num_layers_to_build / PipelineParallelLayerLayout do."""
    text = args.get("pipeline_model_parallel_layout")
    first, last = args.get("decoder_first_pipeline_num_layers"), args.get("decoder_last_pipeline_num_layers")
    acc_e = bool(args.get("account_for_embedding_in_pipeline_split"))
    acc_l = bool(args.get("account_for_loss_in_pipeline_split"))
    if lay.vpp > 1 and lay.pp == 1:
        errors.append("virtual_pipeline_model_parallel_size needs pipeline_model_parallel_size > 1")
        return
    if text:
        if first is not None or last is not None or acc_e or acc_l:
            errors.append("pipeline_model_parallel_layout cannot be combined with decoder_first/last_pipeline_num_layers "
                          "or account_for_*_in_pipeline_split")
            return
        raw = _chunks_from_layout_string(cfg, args, lay, str(text), errors)
    else:
        if first is not None or last is not None:
            counts = _counts_first_last(cfg, lay, first, last, acc_e or acc_l, errors)
        else:
            counts = _counts_uniform(cfg, lay, acc_e, acc_l, errors)
        raw = None if counts is None else _chunks_from_counts(counts, lay)
    if raw is not None:
        lay.chunks = _number_layers(raw)


def _chunks_from_layout_string(cfg: Hy3Config, args: dict, lay: Layout, text: str, errors: list[str]):
    """Chunks of "E"/"t"/"m"/"L" from an explicit pipeline_model_parallel_layout (sets lay.vpp), or None."""
    pp = lay.pp
    try:
        raw = parse_pipeline_layout(text)
    except ValueError as e:
        errors.append(f"pipeline_model_parallel_layout {text!r}: {e}")
        return None
    if len(raw) % pp:
        errors.append(f"pipeline_model_parallel_layout has {len(raw)} stages, not a multiple of PP={pp}")
        return None
    vpp = len(raw) // pp
    if args.get("virtual_pipeline_model_parallel_size") not in (None, vpp):
        errors.append(f"pipeline_model_parallel_layout implies VPP={vpp}, but "
                      f"virtual_pipeline_model_parallel_size is {args['virtual_pipeline_model_parallel_size']}")
    lay.vpp = vpp
    flat = [x for c in raw for x in c]
    problems = []
    if flat.count("t") != cfg.num_layers:
        problems.append(f"has {flat.count('t')} decoder layers (t), the model has {cfg.num_layers}")
    if flat.count("m") != lay.mtp:
        problems.append(f"has {flat.count('m')} MTP layers (m), mtp_num_layers is {lay.mtp}")
    if flat.count("E") != 1 or flat[0] != "E":
        problems.append("must start with the embedding E, exactly once")
    if flat.count("L") != 1 or flat[-1] != "L":
        problems.append("must end with the loss L, exactly once")
    if "m" in flat and "t" in flat[flat.index("m"):]:
        problems.append("decoder layers must all come before the MTP layers")
    if any("m" in c and k // pp != vpp - 1 for k, c in enumerate(raw)):
        problems.append("MTP layers must sit in the last virtual stage of their pipeline rank")
    if problems:
        errors.append(f"pipeline_model_parallel_layout {text!r}: " + "; ".join(problems))
        return None
    return raw


def _counts_first_last(cfg: Hy3Config, lay: Layout, first, last, accounting: bool, errors: list[str]):
    """counts[v][p] from decoder_first/last_pipeline_num_layers, or None."""
    pp, vpp = lay.pp, lay.vpp
    if accounting:
        errors.append("decoder_first/last_pipeline_num_layers cannot be combined with account_for_*_in_pipeline_split")
        return None
    if pp == 1:
        errors.append("decoder_first/last_pipeline_num_layers need pipeline_model_parallel_size > 1")
        return None
    per = [None] * pp
    rest, stages = cfg.num_layers, pp
    for idx, n in ((0, first), (pp - 1, last)):
        if n is not None:
            if n < 1 or n % vpp:
                errors.append(f"{n} layers on pipeline rank {idx} must be >= 1 and divisible by VPP={vpp}")
                return None
            per[idx] = n
            rest -= n
            stages -= 1
    if stages == 0 and rest != 0 or stages and (rest <= 0 or rest % stages or (rest // stages) % vpp):
        errors.append(f"after the first/last stages, {rest} decoder layers do not split evenly over the "
                      f"{stages} middle pipeline rank(s) (and their VPP={vpp} chunks)")
        return None
    per = [n if n is not None else rest // stages for n in per]
    return [[per[p] // vpp for p in range(pp)] for _ in range(vpp)]


def _counts_uniform(cfg: Hy3Config, lay: Layout, acc_e: bool, acc_l: bool, errors: list[str]):
    """counts[v][p] for an even split (embedding/loss counted as layers when asked), or None."""
    chunks = lay.pp * lay.vpp
    total = cfg.num_layers + acc_e + acc_l
    if total % chunks:
        what = f"{cfg.num_layers} decoder layers" + (" plus embedding/loss" if acc_e or acc_l else "")
        errors.append(f"{what} do not split evenly over PP*VPP = {lay.pp}*{lay.vpp} = {chunks} pipeline chunks "
                      f"({total} % {chunks} = {total % chunks}); use "
                      f"decoder_first/last_pipeline_num_layers or pipeline_model_parallel_layout")
        return None
    counts = [[total // chunks] * lay.pp for _ in range(lay.vpp)]
    if acc_e:
        counts[0][0] -= 1
    if acc_l:
        counts[-1][-1] -= 1
    return counts


def _chunks_from_counts(counts: list[list[int]], lay: Layout) -> list[list]:
    """Chunks in Megatron's order (k = v*PP + p): embedding first, MTP and loss last."""
    raw = [["t"] * counts[v][p] for v in range(lay.vpp) for p in range(lay.pp)]
    raw[0].insert(0, "E")
    raw[-1] += ["m"] * lay.mtp
    raw[-1].append("L")
    return raw


def _number_layers(raw: list[list]) -> list[list]:
    """Replace each "t" by its decoder layer id, counting in chunk order."""
    layer = 0
    chunks = []
    for c in raw:
        out = []
        for x in c:
            out.append(layer if x == "t" else x)
            layer += x == "t"
        chunks.append(out)
    return chunks


def layout_string(counts: list[int], mtp: int) -> str:
    """A pipeline_model_parallel_layout for chunk layer counts (Megatron's chunk order), with the
    embedding on the first chunk and MTP and loss on the last: [3, 4, 4, 3] -> "Et*3|t*4|t*4|t*3L"."""
    parts = []
    for k, n in enumerate(counts):
        s = ("E" if k == 0 else "") + (f"t*{n}" if n > 1 else "t" * n)
        if k == len(counts) - 1:
            s += "m" * mtp + "L"
        parts.append(s)
    return "|".join(parts)
