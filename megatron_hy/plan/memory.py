"""Per-GPU memory of a `megatron sft` run: weights, gradients, optimizer states, activations.

    total = weights + gradients + optimizer states + ACTIVATION_CALIBRATION * activations + RESERVE_GIB

Weights, gradients and optimizer states are exact element counts times bytes (Megatron keeps them in
contiguous buffers). Activations are a per-token element count per layer (see `layer_elements`) times
the layers and micro-batches a pipeline rank holds at once; that count leaves out allocator
fragmentation, dispatcher and communication buffers and routing imbalance, which the calibration
factor covers. docs/training.md derives the numbers and the factor.
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
    optimizer: int = 12      # Adam: fp32 master copy + two fp32 moments
    distributed: bool = True
    on_gpu: float = 1.0      # share of optimizer states kept on the GPU (optimizer_cpu_offload)


def precision_from_args(args: dict) -> Precision:
    grad = DTYPE_BYTES[args.get("main_grads_dtype", "fp32")]
    if args.get("optimizer", "adam") == "sgd":
        opt = 4 + 4
    elif args.get("use_precision_aware_optimizer"):
        opt = (DTYPE_BYTES[args.get("main_params_dtype", "fp32")] + DTYPE_BYTES[args.get("exp_avg_dtype", "fp32")]
               + DTYPE_BYTES[args.get("exp_avg_sq_dtype", "fp32")])
    else:
        opt = 12
    on_gpu = 1.0
    if args.get("optimizer_cpu_offload"):
        on_gpu = 1.0 - float(args.get("optimizer_offload_fraction", 1.0))
    return Precision(2, grad, opt, bool(args.get("use_distributed_optimizer", True)), on_gpu)


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
    optimizer: float
    activations: float       # bytes, before calibration
    inflight: float          # micro-batches (or VPP chunk passes) whose activations are held at once

    @property
    def total_gib(self) -> float:
        return (self.weights + self.grads + self.optimizer + ACTIVATION_CALIBRATION * self.activations) / GIB \
            + RESERVE_GIB

    def breakdown_gib(self) -> dict:
        return {"weights": self.weights / GIB, "gradients": self.grads / GIB, "optimizer": self.optimizer / GIB,
                "activations": self.activations / GIB,
                "activations_calibrated": ACTIVATION_CALIBRATION * self.activations / GIB,
                "reserve": RESERVE_GIB, "total": self.total_gib}


def _inflight(lay: Layout, p: int, group: int) -> float:
    """Micro-batches whose activations pipeline rank p holds at its peak (1F1B / interleaved 1F1B)."""
    m = lay.microbatches
    if lay.pp == 1:
        return 1
    if lay.vpp == 1:
        return min(lay.pp - p, m)
    warmup = (lay.pp - p - 1) * 2 + (lay.vpp - 1) * group
    return min(warmup + 1, m * lay.vpp) / lay.vpp    # chunk passes, in units of a whole rank's layers


def rank_memory(cfg: Hy3Config, mp: ModelParams, lay: Layout, rp: RankParams, args: dict,
                prec: Precision, lora: bool) -> RankMemory:
    p = rp.pp_rank
    # --- states ---
    dpcp, edp = lay.dp * lay.cp, lay.edp
    shard_dense, shard_expert = (dpcp, edp) if prec.distributed else (1, 1)
    buffers = rp.buffer * 4
    if lora:
        weights = (rp.dense + rp.expert) * prec.param + (rp.lora_dense + rp.lora_expert) * 4 + buffers
        grads = (rp.lora_dense + rp.lora_expert) * 4
        optim = rp.lora_dense * prec.optimizer / shard_dense + rp.lora_expert * prec.optimizer / shard_expert
    else:
        weights = (rp.dense + rp.expert) * prec.param + buffers
        grads = (rp.dense + rp.expert) * prec.grad
        optim = rp.dense * prec.optimizer / shard_dense + rp.expert * prec.optimizer / shard_expert
    optim *= prec.on_gpu

    # --- activations ---
    tokens = lay.mbs * lay.seq / lay.cp
    split = lay.tp if lay.sp else 1
    gran = args.get("recompute_granularity", "selective")
    modules = set(recompute_modules(args)) if gran == "selective" else set()
    kinds = ["dense" if not mp.layers[i].expert else "moe" for i in lay.rank_layers(p)] + ["mtp"] * rp.mtp_layers
    full = [layer_elements(cfg, k, modules) * tokens * 2 / split for k in kinds]
    layer_input = cfg.hidden_size * tokens * 2 / split
    working = 0.0
    if gran == "full" and full:
        n = args.get("recompute_num_layers") or 1
        chunks = [len([x for x in c if isinstance(x, int) or x == "m"]) for c in lay.rank_chunks(p)]
        stored, start = 0.0, 0
        for size in chunks:
            block = full[start:start + size]
            if args.get("recompute_method") == "block":
                stored += min(n, size) * layer_input + sum(block[min(n, size):])
                working = max(working, max(block, default=0))
            else:
                stored += math.ceil(size / n) * layer_input
                working = max(working, max((sum(block[i:i + n]) for i in range(0, size, n)), default=0))
            start += size
    else:
        stored = sum(full)
    group = args.get("microbatch_group_size_per_vp_stage") or lay.pp
    inflight = _inflight(lay, p, group)
    acts = inflight * stored + working
    if lay.rank_has(p, "L"):
        # logits in bf16 plus the fp32 copy the fused cross-entropy keeps, for the main head and each MTP head
        heads = 1 + (rp.mtp_layers if rp.mtp_layers else 0)
        acts += heads * tokens * math.ceil(cfg.vocab_size / lay.tp) * 6
    params = rp.total + (rp.lora_dense + rp.lora_expert if lora else 0)
    return RankMemory(p, params, weights, grads, optim, acts, inflight)
