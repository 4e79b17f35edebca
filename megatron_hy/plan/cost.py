"""The step-time model behind `hy3 plan --search`: a model, not a measurement.

    step = (M + (PP - 1) / VPP) * slowest stage's (compute + communication) per micro-batch
           + gradient/parameter sync of the distributed optimizer + optimizer offload

M is the micro-batches per step; (PP - 1) / VPP micro-batch times are the pipeline bubble of the
(interleaved) 1F1B schedule. Compute is the stage's training FLOPs (forward x 3, plus the forward
of whatever is recomputed) at `mfu` of the GPU's peak bf16 rate. Communication is message bytes
over a link bandwidth, not overlapped with compute: tensor parallelism's all-gathers and
reduce-scatters (sequence parallel), the experts' all-to-all dispatch and combine, context
parallelism's ring exchange of K and V, pipeline sends, then once per step the distributed
optimizer's gradient reduce-scatter and parameter all-gather over the data-parallel ranks, and
with optimizer CPU offload the PCIe copies and the host's Adam step.

All constants are in `CostModel` below, with what each stands for. They are round numbers for
Hopper-class nodes (NVLink inside a node, one 400 Gb/s NIC per GPU between nodes), not fitted to
any run of this stack; docs/training.md ("Step-time model") explains how to re-fit them from a
real run's step time. The model ranks layouts against each other; its absolute seconds carry the
constants' uncertainty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..config import Hy3Config
from .layout import Layout, recompute_modules
from .memory import RankMemory
from .params import ModelParams, RankParams


@dataclass(frozen=True)
class CostModel:
    # share of the GPU's peak dense bf16 FLOP rate the training GEMMs and attention reach
    mfu: float = 0.35
    # peak dense bf16 TFLOP/s by memory size as sold: 80 GB H100/H800, 96 GB H20, 141 GB H200
    # (an A100-80G peaks at 312: pass --gpu-tflops); other sizes use `default_tflops`
    peak_tflops: dict = field(default_factory=lambda: {80: 989.0, 96: 148.0, 141: 989.0})
    default_tflops: float = 989.0
    # per-GPU bus bandwidth (GB/s) of collectives inside a node (NVLink) and across nodes (the NIC)
    nvlink_gbps: float = 350.0
    network_gbps: float = 40.0
    # host <-> GPU copies of optimizer offload, per GPU (GB/s), and the host's Adam step, in giga
    # elements per second per training process (the node's cores are shared by its GPUs' processes)
    pcie_gbps: float = 20.0
    host_adam_gelems: float = 1.0
    # GPU memory bandwidth (GB/s) for the optimizer step on the GPU; Adam moves ~32 bytes per element
    hbm_gbps: float = 3000.0
    adam_bytes_per_element: float = 32.0

    def tflops(self, gpu_memory_gb: float, override: float | None = None) -> float:
        return override or self.peak_tflops.get(int(gpu_memory_gb) if gpu_memory_gb == int(gpu_memory_gb)
                                                 else gpu_memory_gb, self.default_tflops)

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT_COST = CostModel()


# --- FLOPs ---------------------------------------------------------------------------------------

def layer_flops(cfg: Hy3Config, kind: str, seq: int) -> dict:
    """Forward FLOPs per token of one layer, by part: "attn" (projections), "core" (QK^T and PV,
    causal, over the full sequence: packed samples attend less, so this is an upper bound), "mlp"
    (dense FFN), "moe" (router + top-k routed experts), "shared" (shared expert), "mtp" (eh_proj)."""
    h, hd, nh, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    f = {"attn": 2 * (h * (nh + 2 * nkv) * hd + nh * hd * h), "core": 2 * seq * nh * hd}
    if kind == "dense":
        f["mlp"] = 2 * 3 * h * cfg.intermediate_size
    else:
        f["moe"] = 2 * h * cfg.num_experts + cfg.top_k * 2 * 3 * h * cfg.moe_ffn
        f["shared"] = 2 * 3 * h * cfg.shared_ffn
    if kind == "mtp":
        f["mtp"] = 2 * 2 * h * h
    return f


def _recomputed_flops(f: dict, args: dict) -> float:
    """Forward FLOPs (per token) done again in the backward pass under the recipe's recompute setting."""
    gran = args.get("recompute_granularity", "selective")
    if gran == "full":
        return sum(f.values())
    if gran != "selective":
        return 0.0
    mods = set(recompute_modules(args))
    part = {"core_attn": "core", "mlp": "mlp", "moe": "moe", "shared_experts": "shared"}
    total = sum(f.get(part[m], 0) for m in mods if m in part)
    if "moe" in mods:
        total += f.get("shared", 0)     # Megatron's "moe" recompute covers the shared expert too
    return total


def _kinds(rp: RankParams) -> dict:
    """Layers of each kind on pipeline rank rp.pp_rank."""
    return {"dense": rp.dense_layers, "moe": rp.moe_layers, "mtp": rp.mtp_layers}


def stage_flops(cfg: Hy3Config, mp: ModelParams, lay: Layout, rp: RankParams, args: dict) -> float:
    """Training FLOPs of one micro-batch on pipeline rank rp.pp_rank, all its TP/CP ranks together."""
    total = 0.0
    for kind, n in _kinds(rp).items():
        if n:
            f = layer_flops(cfg, kind, lay.seq)
            total += n * (3 * sum(f.values()) + _recomputed_flops(f, args))
    if lay.rank_has(rp.pp_rank, "L"):
        total += (1 + rp.mtp_layers) * 3 * 2 * cfg.hidden_size * cfg.vocab_size
    return total * lay.mbs * lay.seq


def active_params_per_token(cfg: Hy3Config) -> float:
    """Weights a token passes through (no MTP): the model card's "21B active"."""
    f = [layer_flops(cfg, "moe" if cfg.is_moe(i) else "dense", 0) for i in range(cfg.num_layers)]
    return sum(v for d in f for k, v in d.items() if k != "core") / 2 + 2 * cfg.hidden_size * cfg.vocab_size


# --- communication ------------------------------------------------------------------------------

def _off_node_share(size: int, stride: int, gpus_per_node: int) -> float:
    """Share of a rank's peers in a group of `size` ranks `stride` apart that sit on other nodes
    (ranks fill nodes in order: Megatron's tp-cp-ep-dp-pp order, node n holding ranks nG..nG+G-1)."""
    if size <= 1:
        return 0.0
    per_node = max(1, min(size, gpus_per_node // stride)) if stride < gpus_per_node else 1
    return (size - per_node) / (size - 1)


def _seconds(nbytes: float, off_node: float, cost: CostModel, ring: bool) -> float:
    """Time to move nbytes per rank: a ring runs at its slowest link; an all-to-all splits its traffic."""
    if nbytes <= 0:
        return 0.0
    if ring:
        bw = cost.network_gbps if off_node > 0 else cost.nvlink_gbps
        return nbytes / (bw * 1e9)
    return nbytes * ((1 - off_node) / cost.nvlink_gbps + off_node / cost.network_gbps) / 1e9


def _passes(recomputed: bool) -> int:
    """Forward-sized passes of a layer part's collectives: the forward, twice that in the backward,
    and the forward again when the part is recomputed."""
    return 3 + int(recomputed)


def stage_comm_seconds(cfg: Hy3Config, mp: ModelParams, lay: Layout, rp: RankParams, args: dict,
                       cost: CostModel, gpus_per_node: int) -> dict:
    """Communication seconds of one micro-batch on one GPU of pipeline rank rp.pp_rank, by kind."""
    h, G = cfg.hidden_size, gpus_per_node
    local = lay.mbs * lay.seq / lay.cp / lay.tp          # tokens on this GPU (sequence parallel)
    act = local * h * 2                                    # one bf16 hidden-state tensor of them
    gran = args.get("recompute_granularity", "selective")
    mods = set(recompute_modules(args)) if gran == "selective" else set()
    full = gran == "full"
    kinds = _kinds(rp)
    n_layers, n_moe = sum(kinds.values()), kinds["moe"] + kinds["mtp"]
    tp = cp = ep = 0.0
    if lay.tp > 1:
        # sequence parallel: all-gather before and reduce-scatter after attention and the (shared) MLP,
        # each moving (TP-1) x this GPU's share of the hidden states
        per = 2 * act * (lay.tp - 1)
        tp = n_layers * per * (_passes(full) + _passes(full or "moe" in mods or "mlp" in mods))
    if n_moe and lay.ep * lay.etp > 1:
        # dispatch + combine of top-k copies of each token; the share for experts on this GPU stays
        copies = local * cfg.top_k * h * 2 * (1 - 1 / lay.ep)
        ep = n_moe * 2 * _passes(full or "moe" in mods) * _seconds(copies, _off_node_share(lay.ep, lay.etp, G),
                                                                   cost, ring=False)
        if lay.etp > 1:
            etp_bytes = 2 * local * cfg.top_k * h * 2 * (lay.etp - 1)
            ep += n_moe * _passes(full or "moe" in mods) * _seconds(etp_bytes, _off_node_share(lay.etp, 1, G),
                                                                     cost, ring=True)
    if lay.cp > 1:
        # ring attention: K and V of every other CP rank's chunk pass through each rank
        kv = lay.mbs * lay.seq / lay.cp * 2 * cfg.num_kv_heads * cfg.head_dim * 2 / lay.tp * (lay.cp - 1)
        cp = n_layers * _passes(full or "core_attn" in mods) * _seconds(kv, _off_node_share(lay.cp, lay.tp, G),
                                                                        cost, ring=True)
    tp_s = _seconds(tp, _off_node_share(lay.tp, 1, G), cost, ring=True)
    pp_s = 0.0
    if lay.pp > 1:
        stride = lay.tp * lay.cp * lay.dp
        off = 1.0 if stride >= G else 0.0
        pp_s = 2 * lay.vpp * _seconds(act, off, cost, ring=True)
    return {"tensor": tp_s, "expert": ep, "context": cp, "pipeline": pp_s}


def sync_seconds(rp: RankParams, rm: RankMemory, lay: Layout, args: dict, cost: CostModel, gpus_per_node: int,
                 grad_bytes: int, lora: bool) -> float:
    """Once per step: gradient reduce-scatter and bf16 parameter all-gather of the distributed optimizer."""
    dense = rp.lora_dense if lora else rp.dense
    expert = rp.lora_expert if lora else rp.expert
    gb = 4 if lora else grad_bytes
    n_dense, n_expert = lay.dp * lay.cp, lay.edp
    t = 0.0
    if n_dense > 1:
        nbytes = dense * (gb + 2) * (n_dense - 1) / n_dense
        t += _seconds(nbytes, _off_node_share(n_dense, lay.tp, gpus_per_node), cost, ring=True)
    if n_expert > 1:
        nbytes = expert * (gb + 2) * (n_expert - 1) / n_expert
        t += _seconds(nbytes, _off_node_share(n_expert, lay.ep * lay.etp, gpus_per_node), cost, ring=True)
    return t


def optimizer_seconds(rm: RankMemory, offload: float, cost: CostModel) -> float:
    """The optimizer step: on the GPU at memory bandwidth, plus for the offloaded share the
    gradient copy to the host (fp32), the host's Adam and the fp32 master copy back."""
    on_gpu = rm.optimizer_elements * (1 - offload) * cost.adam_bytes_per_element / (cost.hbm_gbps * 1e9)
    off = rm.optimizer_elements * offload
    return on_gpu + off * 8 / (cost.pcie_gbps * 1e9) + off / (cost.host_adam_gelems * 1e9)


@dataclass
class StepTime:
    seconds: float
    compute: float          # per step, all micro-batches, slowest stage (bubble excluded)
    bubble: float
    tensor: float
    expert: float
    context: float
    pipeline: float
    data_parallel: float
    optimizer: float
    tokens_per_second: float
    mfu: float
    peak_tflops: float
    microbatches: int = 1
    bubble_microbatches: float = 0.0     # (PP - 1) / VPP

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def refit_mfu(self, measured_seconds: float) -> float | None:
        """The MFU that makes this model give `measured_seconds`, every other constant kept; None when the
        modelled communication and optimizer time alone exceed the measurement (then the bandwidth
        constants, not the MFU, are off)."""
        m, b = self.microbatches, self.bubble_microbatches
        comm = (self.tensor + self.expert + self.context + self.pipeline) / m
        compute = (measured_seconds - self.data_parallel - self.optimizer) / (m + b) - comm
        if compute <= 0:
            return None
        return self.mfu * (self.compute / m) / compute


def step_time(cfg: Hy3Config, mp: ModelParams, lay: Layout, rps: list[RankParams], rms: list[RankMemory],
              args: dict, gpu_memory_gb: float, gpus_per_node: int, offload: float, grad_bytes: int, lora: bool,
              cost: CostModel = DEFAULT_COST, tflops: float | None = None) -> StepTime:
    peak = cost.tflops(gpu_memory_gb, tflops)
    rate = peak * 1e12 * cost.mfu
    per_mb, parts = [], []
    for rp in rps:
        compute = stage_flops(cfg, mp, lay, rp, args) / (lay.tp * lay.cp) / rate
        comm = stage_comm_seconds(cfg, mp, lay, rp, args, cost, gpus_per_node)
        per_mb.append(compute + sum(comm.values()))
        parts.append((compute, comm))
    slow = max(range(len(per_mb)), key=per_mb.__getitem__)
    m = lay.microbatches
    compute, comm = parts[slow]
    bubble = (lay.pp - 1) / lay.vpp * per_mb[slow]
    dp = max(sync_seconds(rp, rm, lay, args, cost, gpus_per_node, grad_bytes, lora) for rp, rm in zip(rps, rms))
    opt = max(optimizer_seconds(rm, offload, cost) for rm in rms)
    total = m * per_mb[slow] + bubble + dp + opt
    return StepTime(total, m * compute, bubble, m * comm["tensor"], m * comm["expert"], m * comm["context"],
                    m * comm["pipeline"], dp, opt, lay.gbs * lay.seq / total, cost.mfu, peak, m, (lay.pp - 1) / lay.vpp)
