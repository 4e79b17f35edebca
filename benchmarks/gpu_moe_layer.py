"""One Hy3 MoE decoder layer on one GPU: forward+backward time and activation memory, measured, printed
next to the planner's estimate for the same layer.

The layer is megatron-core's own (local spec: TransformerLayer with SelfAttention, q/k RMSNorm, RoPE, GQA,
and a MoELayer with the sigmoid router, expert bias, SequentialMLP experts and the shared expert), built
from the bundled Hy3 config at real widths: hidden 4096, 64 heads of 128, 8 KV heads, expert FFN 1536,
top-8, one shared expert. One GPU holds the experts of one expert-parallel rank: 192/EP experts, and each
token still picks 8 of them, so every expert gets the load it gets under EP (default EP 8: 24 experts).
Core attention is torch's scaled_dot_product_attention (flash on a Hopper GPU) in place of the local spec's
unfused DotProductAttention, because training runs transformer-engine's fused attention, which is what
the planner's activation count assumes (no sequence x sequence scores kept).

Per sequence length (micro batch 1) and recompute setting it reports:
  - time of forward+backward (median of --iters after --warmup), the planner's time for the layer's FLOPs
    at the cost model's MFU, and the MFU the measurement implies (re-fit `CostModel.mfu` from it);
  - activation memory: what autograd keeps from the forward for the backward (distinct tensors, weights
    left out) next to the planner's stored count (memory.layer_elements), and on a GPU the peak allocated
    during forward+backward above what was resident before (weights, their gradients kept from the
    warm-up, the input) next to the planner's peak (stored, plus the rebuilt layer under full recompute),
    both before the planner's calibration factor, and their ratio.
Recompute settings: none; selective "moe" (megatron-core checkpoints the MoE block); full (the whole layer
under megatron-core's tensor_parallel.checkpoint, as recompute_granularity full with one layer per unit does). "moe_act" is
not offered: in megatron-core 0.16 it acts only in the grouped-GEMM experts (TE or grouped_gemm), not in
the local spec's SequentialMLP.

On a machine without a GPU it runs the same code at tiny widths on the CPU (tests/test_bench_gpu_moe_layer.py
does, so CI keeps it working); those numbers mean nothing.

Running it on a GPU machine whose Python 3.12 has CUDA torch but no megatron-core and no network:

    # here, with network: megatron-core 0.16.1 is not pure Python (one compiled helper for its datasets,
    # which this script does not import), so fetch the wheel built for the GPU machine's Python
    pip download --no-deps megatron-core==0.16.1 --python-version 3.12 --only-binary=:all: \\
        --platform manylinux_2_28_x86_64 -d .gpu-wheels/
    # megatron-core also needs numpy and packaging; if `python -c "import numpy, packaging"` fails there,
    # fetch them the same way (pip download --no-deps numpy packaging --python-version 3.12 ...)
    # there:
    pip install --no-deps .gpu-wheels/*.whl
    PYTHONPATH=. python benchmarks/gpu_moe_layer.py --json /tmp/gpu_moe_layer.json
    # the script imports only megatron_hy's model parts (no PyYAML, ms-swift or transformers needed)

Sized for one H200 (or H100): three sequence lengths x three settings, two warm-up and five timed steps
each, about a minute of GPU time plus start-up; well under five minutes. The numbers go in
docs/benchmarks.md ("GPU MoE layer").
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SETTINGS = {
    "none": {"recompute_granularity": "none"},
    "selective moe": {"recompute_granularity": "selective", "recompute_modules": ["moe"]},
    "full": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
}
GPU_MEMORY_GB = {"H200": 141, "H100": 80, "H800": 80, "H20": 96}


def layer_config(real: bool, ep: int):
    """Hy3 at real widths with the experts of one EP rank, or a tiny Hy3."""
    import megatron_hy
    from megatron_hy.config import load_config

    cfg = load_config(Path(megatron_hy.__file__).parent / "assets" / "hy3_config.json")
    if real:
        return dataclasses.replace(cfg, num_experts=cfg.num_experts // ep, num_mtp_layers=0)
    return dataclasses.replace(cfg, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, num_experts=8,
                               top_k=4, moe_ffn=32, intermediate_size=128, num_layers=2,
                               layer_types=("dense", "sparse"), num_mtp_layers=0)


def flash_attention_class():
    """Core attention over torch's scaled_dot_product_attention, with megatron-core's core-attention interface."""
    import torch
    from megatron.core.transformer.module import MegatronModule

    class SDPAttention(MegatronModule):
        def __init__(self, config, layer_number, attn_mask_type, attention_type, **kwargs):
            super().__init__(config=config)

        def forward(self, query, key, value, attention_mask=None, attn_mask_type=None, attention_bias=None,
                    packed_seq_params=None):
            # megatron-core hands [s, b, heads, dim]; SDPA takes [b, heads, s, dim]
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            s, b = query.shape[0], query.shape[1]
            return out.permute(2, 0, 1, 3).reshape(s, b, -1)

    return SDPAttention


def build_layer(cfg, setting: dict, device, dtype):
    import torch

    from megatron_hy.megatron.harness import CPU_CONFIG
    from megatron_hy.megatron.model import block_specs, make_transformer_config
    from megatron.core.transformer.spec_utils import build_module

    # selective recompute is the layer's own; full is applied around the layer, as TransformerBlock does
    rc = setting if setting["recompute_granularity"] == "selective" else {}
    tconfig = make_transformer_config(cfg, **CPU_CONFIG, params_dtype=dtype, **rc)
    _, moe_spec = block_specs(tconfig, use_te=False)
    spec = copy.deepcopy(moe_spec)
    spec.submodules.self_attention.submodules.core_attention = flash_attention_class()
    torch.manual_seed(0)
    layer = build_module(spec, config=tconfig, layer_number=2)
    return layer.to(device), tconfig


def planner_estimate(cfg, setting: dict, seq: int, peak_tflops: float, itemsize: int) -> dict:
    """What the planner assumes for this layer: activation bytes (before calibration; the planner counts
    bf16, here in the run's dtype) and FLOP time."""
    from megatron_hy.plan.cost import DEFAULT_COST, _recomputed_flops, layer_flops
    from megatron_hy.plan.layout import recompute_modules
    from megatron_hy.plan.memory import ACTIVATION_CALIBRATION, layer_elements

    full = setting["recompute_granularity"] == "full"
    mods = set(recompute_modules(setting)) if setting["recompute_granularity"] == "selective" else set()
    every = layer_elements(cfg, "moe", set())
    # stored for the backward; under full recompute only the layer input, and the layer is rebuilt whole
    # in the backward, which sets the peak
    stored = cfg.hidden_size if full else layer_elements(cfg, "moe", mods)
    peak = stored + every if full else stored
    f = layer_flops(cfg, "moe", seq)
    flops = seq * (3 * sum(f.values()) + _recomputed_flops(f, setting))
    size = seq * itemsize
    return {"stored_bytes": stored * size, "activation_bytes": peak * size,
            "calibrated_bytes": ACTIVATION_CALIBRATION * peak * size,
            "flops": flops, "seconds": flops / (peak_tflops * 1e12 * DEFAULT_COST.mfu), "mfu": DEFAULT_COST.mfu}


def run_one(layer, cfg, seq: int, full: bool, device, dtype, warmup: int, iters: int) -> dict:
    import torch
    from megatron.core import tensor_parallel
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    on_gpu = device.type == "cuda"
    emb = RotaryEmbedding(cfg.head_dim, rotary_percent=1.0, rotary_base=cfg.rope_theta)(seq).to(device)
    x = torch.randn(seq, 1, cfg.hidden_size, device=device, dtype=dtype, requires_grad=True)

    def fwd(h):
        out, _ = layer(h, attention_mask=None, rotary_pos_emb=emb)
        return out

    def forward():
        return tensor_parallel.checkpoint(fwd, False, x) if full else fwd(x)

    def step():
        forward().float().pow(2).mean().backward()

    def sync():
        if on_gpu:
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    saved = saved_for_backward(layer, forward, seq)
    sync()
    times, peak = [], 0
    for _ in range(iters):
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        if on_gpu:
            peak = max(peak, torch.cuda.max_memory_allocated() - resident)
    return {"seconds": statistics.median(times), "saved_bytes": saved["bytes"],
            "saved_scores_bytes": saved["scores_bytes"], "saved_largest": saved["largest"],
            "activation_peak_bytes": peak if on_gpu else None}


def saved_for_backward(layer, forward, seq: int) -> dict:
    """What autograd keeps from one forward pass for the backward: distinct storages (the weights, which
    it keeps too, left out), the quantity the planner's activation count models. `scores` is the part in
    tensors whose last two sizes are (seq, seq): attention probabilities, which flash attention does not keep
    (torch's CPU attention does). `largest` lists the biggest kept tensors, for re-deriving the count."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    kept: dict[int, tuple] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = (storage.nbytes(), tuple(t.shape), str(t.dtype).replace("torch.", ""))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    out.float().pow(2).mean().backward()
    scores = sum(n for n, shape, _ in kept.values() if len(shape) >= 2 and shape[-2:] == (seq, seq))
    largest = sorted(kept.values(), reverse=True)[:16]
    return {"bytes": sum(n for n, _, _ in kept.values()), "scores_bytes": scores,
            "largest": [{"bytes": n, "shape": list(shape), "dtype": d} for n, shape, d in largest]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Time one Hy3 MoE decoder layer (megatron-core local spec) on one GPU, "
                                            "next to the planner's estimate; tiny widths on a CPU.")
    p.add_argument("--seq", type=int, nargs="+", help="sequence lengths (default 4096 8192 16384 on a GPU, "
                                                      "64 128 on a CPU)")
    p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS),
                   help="recompute settings to run")
    p.add_argument("--ep", type=int, default=8, help="expert-parallel size whose one rank this GPU plays (default 8)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--gpu-tflops", type=float, help="peak dense bf16 TFLOP/s (default from the GPU's name)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--widths", choices=["real", "tiny"],
                   help="layer widths (default real on a GPU, tiny on a CPU; real widths on a CPU check the "
                        "saved-activation count, slowly, at short sequences)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return p.parse_args(argv)


def init_single_process(on_gpu: bool) -> None:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_hy.megatron.harness import apply_cpu_shims, free_port

    if not on_gpu:
        apply_cpu_shims()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    dist.init_process_group("nccl" if on_gpu else "gloo", rank=0, world_size=1)
    ps.initialize_model_parallel()
    if on_gpu:
        from megatron.core import tensor_parallel

        torch.cuda.set_device(0)
        tensor_parallel.model_parallel_cuda_manual_seed(0)


def peak_of(on_gpu: bool, override: float | None) -> tuple[float, str]:
    import torch

    from megatron_hy.plan.cost import DEFAULT_COST

    if not on_gpu:
        return override or DEFAULT_COST.default_tflops, "cpu"
    name = torch.cuda.get_device_name(0)
    mem = next((gb for key, gb in GPU_MEMORY_GB.items() if key in name), 0)
    return DEFAULT_COST.tflops(mem, override), name


def _row(seq: int, setting: str, got: dict, est: dict, peak: float) -> dict:
    act = got["activation_peak_bytes"]
    return {"seq": seq, "recompute": setting, "measured": got, "planner": est,
            "implied_mfu": est["flops"] / (got["seconds"] * peak * 1e12),
            "peak_over_planner": act / est["activation_bytes"] if act else None,
            "saved_over_planner": got["saved_bytes"] / est["stored_bytes"],
            "saved_without_scores_over_planner": (got["saved_bytes"] - got["saved_scores_bytes"]) / est["stored_bytes"]}


def _line(r: dict) -> str:
    mib = 2 ** 20
    got, est = r["measured"], r["planner"]
    peak = f"{got['activation_peak_bytes'] / mib:9.1f}" if got["activation_peak_bytes"] else f"{'-':>9}"
    ratio = f"{r['peak_over_planner']:12.2f}" if r["peak_over_planner"] else f"{'-':>12}"
    return (f"{r['seq']:6d} {r['recompute']:<14} {got['seconds']:8.3f} {est['seconds']:9.3f} {r['implied_mfu']:6.2f} "
            f"{got['saved_bytes'] / mib:10.1f} {est['stored_bytes'] / mib:8.1f} {peak} "
            f"{est['activation_bytes'] / mib:8.1f} {ratio}")


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    on_gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    real = (args.widths or ("real" if on_gpu else "tiny")) == "real"
    seqs = args.seq or ([4096, 8192, 16384] if on_gpu else [64, 128] if not real else [256])
    init_single_process(on_gpu)
    peak, name = peak_of(on_gpu, args.gpu_tflops)
    cfg = layer_config(real, args.ep)
    rows = []
    print(f"device {name}; Hy3 MoE layer: hidden {cfg.hidden_size}, {cfg.num_heads} heads / {cfg.num_kv_heads} KV, "
          f"{cfg.num_experts} experts of FFN {cfg.moe_ffn}, top-{cfg.top_k}; peak {peak:g} TFLOP/s", flush=True)
    print(f"{'seq':>6} {'recompute':<14} {'time s':>8} {'planner s':>9} {'MFU':>6} {'saved MiB':>10} "
          f"{'planner':>8} {'peak MiB':>9} {'planner':>8} {'peak/planner':>12}")
    for setting_name in args.settings:
        setting = SETTINGS[setting_name]
        layer, _ = build_layer(cfg, setting, device, dtype)
        for seq in seqs:
            got = run_one(layer, cfg, seq, setting["recompute_granularity"] == "full", device, dtype,
                          args.warmup, args.iters)
            est = planner_estimate(cfg, setting, seq, peak, dtype.itemsize)
            rows.append(_row(seq, setting_name, got, est, peak))
            print(_line(rows[-1]), flush=True)
        del layer
        if on_gpu:
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "peak_tflops": peak, "ep": args.ep, "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
