"""Per-GPU memory of a `megatron sft` run: weights, gradients, optimizer states, activations.

    total = weights + gradients + optimizer states on the GPU + activations at the peak + RESERVE_GIB
    activations at the peak = ACTIVATION_CALIBRATION * (in flight * stored + rebuilt + logits)
                              + in flight * checkpointed layer inputs + gradients

Weights, gradients and optimizer states are exact element counts times bytes (Megatron keeps them in
contiguous buffers); with optimizer CPU offload part of the optimizer states moves to the host
(Precision.gpu_optimizer_bytes / host_optimizer_bytes; host.py adds them up per node). Activations are
per-token element counts per layer (see `layer_elements`) times the layers and micro-batches a pipeline
rank holds at once, plus the backward of one layer on top of them: what recomputation rebuilds for it
(`rebuilt_elements`, the whole layer under full recompute) and its activation gradients
(`gradient_elements`). The calibration factor covers what the count misses inside a layer, measured on a
GPU; docs/training.md derives the counts, the measurements and the fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import Hy3Config
from ..dtypes import SHORT_BYTES
from .layout import Layout, recompute_modules
from .params import ModelParams, RankParams

GIB = 2 ** 30
# What autograd keeps / the stored count, measured on one H200 with megatron-core's Hy3 layers cast like
# Float16Module: one layer 1.28 without recomputation, 1.20 with recompute_modules [moe]; a 1F1B first stage of 4
# layers with 4 micro-batches in flight 1.27 to 1.31 over the selective settings (docs/training.md, "Calibration").
# It multiplies counted activations; the layer inputs a full-recompute checkpoint keeps are exact (measured
# 1.00) and the gradient term is a bound on its own (measured backward transients stay under it).
ACTIVATION_CALIBRATION = 1.33
# CUDA context, NCCL communicators and cuBLAS/TE workspaces, outside what the model accounts for.
RESERVE_GIB = 3.0
# What the driver reports for each sold size (nvidia-smi total), in GiB; other sizes are taken as GiB.
GPU_CAPACITY_GIB = {80: 79.6, 96: 95.6, 141: 140.4}
TIGHT = 0.92   # above this share of capacity the verdict says "tight"


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
    grad = SHORT_BYTES[args.get("main_grads_dtype", "fp32")]
    aware = bool(args.get("use_precision_aware_optimizer"))
    moments = 4 if args.get("optimizer", "adam") == "sgd" else 8
    if moments == 4:
        opt = 4 + 4
    elif aware:
        opt = (SHORT_BYTES[args.get("main_params_dtype", "fp32")] + SHORT_BYTES[args.get("exp_avg_dtype", "fp32")]
               + SHORT_BYTES[args.get("exp_avg_sq_dtype", "fp32")])
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


def rebuilt_elements(cfg: Hy3Config, kind: str, recomputed: set[str]) -> float:
    """bf16 elements per token that recomputation rebuilds in one layer's backward: what the layer did not
    keep (selective recompute; the whole layer is `layer_elements(cfg, kind, set())`)."""
    return layer_elements(cfg, kind, set()) - layer_elements(cfg, kind, recomputed)


def gradient_elements(cfg: Hy3Config, kind: str) -> float:
    """bf16 activation gradients per token that the backward of one layer holds at once.

    The layer's output and input gradients (2h), and inside the MLP block: for a MoE block the gradients
    of every routed copy's expert output and expert input (2h per copy, top-k copies: the combine's gradient
    stays whole until the last expert has used its rows, while the dispatched input's gradient fills up
    expert by expert; a grouped GEMM holds at most fc1-output + input gradients, 2F + h < 2h per copy);
    for the dense MLP the fc1-output and activation gradients (3 x ffn)."""
    h = cfg.hidden_size
    inner = 3 * cfg.intermediate_size if kind == "dense" else 2 * cfg.top_k * h
    return 2 * h + inner


@dataclass(frozen=True)
class Activations:
    """Activation bytes of one GPU at its peak: the micro-batches in flight each leave `stored` (counted)
    and `inputs` (layer inputs kept by full-recompute checkpoints, exact), and one layer's backward adds
    what it rebuilds (counted) and its activation gradients; the last stage adds its logits (counted)."""
    stored: float = 0.0
    inputs: float = 0.0
    inflight: float = 1.0
    rebuilt: float = 0.0
    gradients: float = 0.0
    logits: float = 0.0

    @property
    def count(self) -> float:
        """Bytes before calibration."""
        return self.inflight * (self.stored + self.inputs) + self.rebuilt + self.gradients + self.logits

    @property
    def backward(self) -> float:
        """Bytes the backward of one layer (or recompute unit) adds at the peak."""
        return ACTIVATION_CALIBRATION * self.rebuilt + self.gradients

    @property
    def peak(self) -> float:
        """Bytes at the peak: what the memory total uses."""
        return ACTIVATION_CALIBRATION * (self.inflight * self.stored + self.logits) + self.inflight * self.inputs \
            + self.backward


@dataclass
class RankMemory:
    pp_rank: int
    params: float            # elements held (weights incl. adapters)
    weights: float           # bytes
    grads: float
    optimizer: float         # on the GPU
    act: Activations
    host_optimizer: float = 0.0   # bytes on the host (optimizer_cpu_offload), per GPU of this stage
    optimizer_elements: float = 0.0   # elements of this GPU's optimizer shard

    @property
    def activations(self) -> float:
        """Activation bytes at the peak before calibration."""
        return self.act.count

    @property
    def inflight(self) -> float:
        """Micro-batches (or VPP chunk passes) whose activations are held at once."""
        return self.act.inflight

    @property
    def total_gib(self) -> float:
        return (self.weights + self.grads + self.optimizer + self.act.peak) / GIB + RESERVE_GIB

    def breakdown_gib(self) -> dict:
        return {"weights": self.weights / GIB, "gradients": self.grads / GIB, "optimizer": self.optimizer / GIB,
                "activations": self.act.count / GIB, "activations_calibrated": self.act.peak / GIB,
                "activations_backward": self.act.backward / GIB,
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


def activation_bytes(cfg: Hy3Config, mp: ModelParams, lay: Layout, rp: RankParams, args: dict) -> Activations:
    """Activations at the peak of pipeline rank rp.pp_rank."""
    p = rp.pp_rank
    tokens = lay.mbs * lay.seq / lay.cp
    size = tokens * 2 / (lay.tp if lay.sp else 1)      # bytes per bf16 element per token of this GPU
    kinds = ["dense" if not mp.layers[i].expert else "moe" for i in lay.rank_layers(p)] + ["mtp"] * rp.mtp_layers
    chunks = [len([x for x in c if isinstance(x, int) or x == "m"]) for c in lay.rank_chunks(p)]
    stored, inputs, rebuilt, grads = stage_elements(cfg, kinds, chunks, args)
    group = args.get("microbatch_group_size_per_vp_stage") or lay.pp
    logits = 0.0
    if lay.rank_has(p, "L"):
        # logits in bf16 plus the fp32 copy the fused cross-entropy keeps, for the main head and each MTP head
        logits = (1 + rp.mtp_layers) * tokens * math.ceil(cfg.vocab_size / lay.tp) * 6
    return Activations(stored * size, inputs * size, _inflight(lay, p, group), rebuilt * size, grads * size, logits)


def layer_activations(cfg: Hy3Config, kind: str, args: dict, tokens: int) -> Activations:
    """One layer alone on a GPU, one micro-batch of `tokens` tokens (what benchmarks/gpu_moe_layer.py measures)."""
    stored, inputs, rebuilt, grads = (x * tokens * 2 for x in stage_elements(cfg, [kind], [1], args))
    return Activations(stored, inputs, 1.0, rebuilt, grads)


def stage_elements(cfg: Hy3Config, kinds: list[str], chunks: list[int], args: dict) -> tuple[float, ...]:
    """(stored, inputs, rebuilt, gradients) bf16 elements per token of one micro-batch through the layers
    `kinds` ("dense", "moe", "mtp"), split into model chunks of the sizes `chunks`."""
    gran = args.get("recompute_granularity", "selective")
    if gran == "full":
        return _full_recompute(cfg, kinds, chunks, args)
    modules = set(recompute_modules(args)) if gran == "selective" else set()
    return (sum(layer_elements(cfg, k, modules) for k in kinds), 0.0,
            *_worst_backward([(rebuilt_elements(cfg, k, modules), gradient_elements(cfg, k)) for k in set(kinds)]))


def _worst_backward(candidates: list[tuple[float, float]]) -> tuple[float, float]:
    """The (rebuilt, gradients) pair of the layer or recompute unit whose backward adds the most."""
    return max(candidates, key=lambda c: ACTIVATION_CALIBRATION * c[0] + c[1], default=(0.0, 0.0))


def _full_recompute(cfg: Hy3Config, kinds: list[str], chunks: list[int], args: dict) -> tuple[float, ...]:
    """(stored, inputs, rebuilt, gradients) elements per token under recompute_granularity full, per model
    chunk: a recompute unit keeps its input and rebuilds all its layers in its backward; layers past the
    first recompute_num_layers of a chunk (block method) keep their activations."""
    n = args.get("recompute_num_layers") or 1
    full = {k: layer_elements(cfg, k, set()) for k in set(kinds)}
    stored = inputs = 0.0
    candidates, start = [], 0
    for size in chunks:
        block = kinds[start:start + size]
        if args.get("recompute_method") == "block":
            units = [[k] for k in block[:n]]
            stored += sum(full[k] for k in block[n:])
            candidates += [(0.0, gradient_elements(cfg, k)) for k in block[n:]]
        else:
            units = [block[i:i + n] for i in range(0, size, n)]
        inputs += len(units) * cfg.hidden_size
        candidates += [(sum(full[k] for k in u), max(gradient_elements(cfg, k) for k in u)) for u in units]
        start += size
    return (stored, inputs, *_worst_backward(candidates))


def rank_memory(cfg: Hy3Config, mp: ModelParams, lay: Layout, rp: RankParams, args: dict,
                prec: Precision, lora: bool) -> RankMemory:
    st = state_bytes(rp, lay, prec, lora)
    params = rp.total + (rp.lora_dense + rp.lora_expert if lora else 0)
    return RankMemory(rp.pp_rank, params, st["weights"], st["grads"], st["optimizer"],
                      activation_bytes(cfg, mp, lay, rp, args), st["host_optimizer"], st["elements"])
