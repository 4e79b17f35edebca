"""Per-GPU memory of a `megatron sft` run: weights, gradients, optimizer states, activations.

    total = weights + gradients + optimizer states on the GPU + ACTIVATION_CALIBRATION * activations
            + RESERVE_GIB

Weights, gradients and optimizer states are exact element counts times bytes (Megatron keeps them in
contiguous buffers); with optimizer CPU offload part of the optimizer states moves to the host
(Precision.gpu_optimizer_bytes / host_optimizer_bytes; host.py adds them up per node). Activations are a
per-token element count per layer (see `layer_elements`) times the layers and micro-batches a pipeline
rank holds at once; that count leaves out allocator fragmentation, dispatcher and communication buffers
and routing imbalance, which the calibration factor covers. docs/training.md derives the numbers and the
factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import Hy3Config
from .layout import Layout, recompute_modules
from .params import ModelParams, RankParams

GIB = 2 ** 30
# Measured peak / modelled activations of the one public Hy3 Megatron run (docs/training.md, "Calibration").
ACTIVATION_CALIBRATION = 1.5
# CUDA context, NCCL communicators and cuBLAS/TE workspaces, outside what the model accounts for.
RESERVE_GIB = 3.0
# What the driver reports for each sold size (nvidia-smi total), in GiB; other sizes are taken as GiB.
GPU_CAPACITY_GIB = {80: 79.6, 96: 95.6, 141: 140.4}
TIGHT = 0.92   # above this share of capacity the verdict says "tight"

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


def capacity_gib(gpu_memory_gb: float) -> float:
    return GPU_CAPACITY_GIB.get(gpu_memory_gb, float(gpu_memory_gb))


@dataclass(frozen=True)
class Precision:
    param: int = 2           # bf16 weights
    grad: int = 4            # ms-swift accumulates and reduces gradients in fp32 unless main_grads_dtype: bf16
    optimizer: int = 12      # Adam: fp32 master copy + two fp32 moments (per element, on the GPU, no offload)
    distributed: bool = True
    offload: float = 0.0     # optimizer_offload_fraction when optimizer_cpu_offload is on, else 0
    aware: bool = False      # use_precision_aware_optimizer
    moments: int = 8         # Adam's two fp32 moments (SGD: one momentum buffer)

    def gpu_optimizer_bytes(self) -> float:
        """Optimizer bytes per element of this rank's optimizer shard that stay on the GPU.

        megatron-core's HybridDeviceOptimizer (optimizer_cpu_offload) takes the distributed optimizer's
        shards and moves the first `offload` share of their elements to the host. The part it keeps
        has an fp32 master and fp32 moments. Without use_precision_aware_optimizer the distributed
        optimizer has already made an fp32 master of every element on the GPU, and that copy stays
        there for the offloaded part too; with it, the optimizer starts from the bf16 weights."""
        if not self.offload:
            return self.optimizer
        kept = 4 + self.moments
        return (1 - self.offload) * kept + (0 if self.aware else 4 * self.offload)

    def host_optimizer_bytes(self) -> float:
        """Host bytes per element of the shard: per offloaded element an fp32 master (pinned), fp32
        moments and a pinned fp32 copy of the gradient (HybridDeviceOptimizer's D2H buffer)."""
        return self.offload * (4 + 4 + self.moments)


def precision_from_args(args: dict) -> Precision:
    grad = DTYPE_BYTES[args.get("main_grads_dtype", "fp32")]
    aware = bool(args.get("use_precision_aware_optimizer"))
    moments = 4 if args.get("optimizer", "adam") == "sgd" else 8
    if moments == 4:
        opt = 4 + 4
    elif aware:
        opt = (DTYPE_BYTES[args.get("main_params_dtype", "fp32")] + DTYPE_BYTES[args.get("exp_avg_dtype", "fp32")]
               + DTYPE_BYTES[args.get("exp_avg_sq_dtype", "fp32")])
    else:
        opt = 12
    offload = float(args.get("optimizer_offload_fraction", 1.0)) if args.get("optimizer_cpu_offload") else 0.0
    return Precision(2, grad, opt, bool(args.get("use_distributed_optimizer", True)), offload, aware, moments)


def layer_elements(cfg: Hy3Config, kind: str, recomputed: set[str]) -> float:
    """bf16 elements stored per token by one layer for its backward pass ("dense", "moe" or "mtp").

    attention: input-norm input and output (2h), q and k before their norms, q/k/v after RoPE (the
    flash-attention inputs), the attention output (= output-projection input), the post-attention
    residual (h). MoE: the pre-MLP norm output (h), router logits and scores in fp32, the shared expert's
    fc1 output and activation, and per routed copy (top-k per token) the dispatched input, fc1 output,
    activation and the probability-weighted activation that feeds fc2.
    """
    h, hd, nh, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    attn = 3 * h + hd * (nh + nkv) + hd * (nh + 2 * nkv) + hd * nh
    mlp_in = h
    if "layernorm" in recomputed:
        attn -= h
        mlp_in = 0
    if kind == "dense":
        mlp = 0 if "mlp" in recomputed else 3 * cfg.intermediate_size
        return attn + mlp_in + mlp
    router = 2 * cfg.num_experts * 2                # two fp32 tensors per token, counted in bf16 units
    shared = 0 if "shared_experts" in recomputed else 3 * cfg.shared_ffn
    per_copy = h + 4 * cfg.moe_ffn - (2 * cfg.moe_ffn if "moe_act" in recomputed else 0)
    moe = router + shared + cfg.top_k * per_copy
    if "moe" in recomputed:
        moe = 0
    extra = 4 * h if kind == "mtp" else 0           # enorm/hnorm inputs and the 2h eh_proj input
    return attn + (h if "moe" in recomputed else mlp_in) + moe + extra


@dataclass
class RankMemory:
    pp_rank: int
    params: float            # elements held (weights incl. adapters)
    weights: float           # bytes
    grads: float
    optimizer: float         # on the GPU
    activations: float       # bytes, before calibration
    inflight: float          # micro-batches (or VPP chunk passes) whose activations are held at once
    host_optimizer: float = 0.0   # bytes on the host (optimizer_cpu_offload), per GPU of this stage
    optimizer_elements: float = 0.0   # elements of this GPU's optimizer shard

    @property
    def total_gib(self) -> float:
        return (self.weights + self.grads + self.optimizer + ACTIVATION_CALIBRATION * self.activations) / GIB \
            + RESERVE_GIB

    def breakdown_gib(self) -> dict:
        return {"weights": self.weights / GIB, "gradients": self.grads / GIB, "optimizer": self.optimizer / GIB,
                "activations": self.activations / GIB,
                "activations_calibrated": ACTIVATION_CALIBRATION * self.activations / GIB,
                "reserve": RESERVE_GIB, "total": self.total_gib, "host_optimizer": self.host_optimizer / GIB}


def _inflight(lay: Layout, p: int, group: int) -> float:
    """Micro-batches whose activations pipeline rank p holds at its peak (1F1B / interleaved 1F1B)."""
    m = lay.microbatches
    if lay.pp == 1:
        return 1
    if lay.vpp == 1:
        return min(lay.pp - p, m)
    warmup = (lay.pp - p - 1) * 2 + (lay.vpp - 1) * group
    return min(warmup + 1, m * lay.vpp) / lay.vpp    # chunk passes, in units of a whole rank's layers


def state_bytes(rp: RankParams, lay: Layout, prec: Precision, lora: bool) -> dict:
    """Weights, gradients and optimizer states of one GPU (bytes), and its optimizer shard (elements)."""
    shard_dense, shard_expert = (lay.dp * lay.cp, lay.edp) if prec.distributed else (1, 1)
    buffers = rp.buffer * 4
    if lora:
        trained_dense, trained_expert = rp.lora_dense, rp.lora_expert
        weights = (rp.dense + rp.expert) * prec.param + (rp.lora_dense + rp.lora_expert) * 4 + buffers
        grads = (rp.lora_dense + rp.lora_expert) * 4
    else:
        trained_dense, trained_expert = rp.dense, rp.expert
        weights = (rp.dense + rp.expert) * prec.param + buffers
        grads = (rp.dense + rp.expert) * prec.grad
    elements = trained_dense / shard_dense + trained_expert / shard_expert
    return {"weights": weights, "grads": grads, "optimizer": elements * prec.gpu_optimizer_bytes(),
            "host_optimizer": elements * prec.host_optimizer_bytes(), "elements": elements}


def activation_bytes(cfg: Hy3Config, mp: ModelParams, lay: Layout, rp: RankParams, args: dict) -> tuple[float, float]:
    """(activation bytes at the peak, micro-batches in flight) for pipeline rank rp.pp_rank."""
    p = rp.pp_rank
    tokens = lay.mbs * lay.seq / lay.cp
    split = lay.tp if lay.sp else 1
    gran = args.get("recompute_granularity", "selective")
    modules = set(recompute_modules(args)) if gran == "selective" else set()
    per_kind = {k: layer_elements(cfg, k, modules) * tokens * 2 / split for k in ("dense", "moe", "mtp")}
    if gran == "full":
        kinds = ["dense" if not mp.layers[i].expert else "moe" for i in lay.rank_layers(p)] + ["mtp"] * rp.mtp_layers
        chunks = [len([x for x in c if isinstance(x, int) or x == "m"]) for c in lay.rank_chunks(p)]
        stored, working = _full_recompute([per_kind[k] for k in kinds], chunks,
                                          cfg.hidden_size * tokens * 2 / split, args)
    else:
        stored = rp.dense_layers * per_kind["dense"] + rp.moe_layers * per_kind["moe"] + rp.mtp_layers * per_kind["mtp"]
        working = 0.0
    group = args.get("microbatch_group_size_per_vp_stage") or lay.pp
    inflight = _inflight(lay, p, group)
    acts = inflight * stored + working
    if lay.rank_has(p, "L"):
        # logits in bf16 plus the fp32 copy the fused cross-entropy keeps, for the main head and each MTP head
        heads = 1 + rp.mtp_layers
        acts += heads * tokens * math.ceil(cfg.vocab_size / lay.tp) * 6
    return acts, inflight


def _full_recompute(full: list[float], chunks: list[int], layer_input: float, args: dict) -> tuple[float, float]:
    """(stored, working) activation bytes under recompute_granularity full, per model chunk."""
    n = args.get("recompute_num_layers") or 1
    stored, working, start = 0.0, 0.0, 0
    for size in chunks:
        block = full[start:start + size]
        if args.get("recompute_method") == "block":
            stored += min(n, size) * layer_input + sum(block[min(n, size):])
            working = max(working, max(block, default=0))
        else:
            stored += math.ceil(size / n) * layer_input
            working = max(working, max((sum(block[i:i + n]) for i in range(0, size, n)), default=0))
        start += size
    return stored, working


def rank_memory(cfg: Hy3Config, mp: ModelParams, lay: Layout, rp: RankParams, args: dict,
                prec: Precision, lora: bool) -> RankMemory:
    st = state_bytes(rp, lay, prec, lora)
    acts, inflight = activation_bytes(cfg, mp, lay, rp, args)
    params = rp.total + (rp.lora_dense + rp.lora_expert if lora else 0)
    return RankMemory(rp.pp_rank, params, st["weights"], st["grads"], st["optimizer"], acts, inflight,
                      st["host_optimizer"], st["elements"])
