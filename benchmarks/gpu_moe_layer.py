"""One Hy3 MoE decoder layer on one GPU: forward+backward time and activation memory, measured, printed
next to the planner's figures for the same layer.

The layer is megatron-core's own (local spec: TransformerLayer with SelfAttention, q/k RMSNorm, RoPE, GQA,
and a MoELayer with the sigmoid router, expert bias, SequentialMLP experts and the shared expert; the
transformer-engine spec with grouped-GEMM experts where transformer_engine imports), built from the bundled
Hy3 config at real widths: hidden 4096, 64 heads of 128, 8 KV heads, expert FFN 1536, top-8, one shared
expert. It is cast to bf16 the way training casts a model (megatron-core's Float16Module: every weight, the
RMSNorm weights included). One GPU holds the experts of one expert-parallel rank: 192/EP experts, and each
token still picks 8 of them, so every expert gets the load it gets under EP (default EP 8: 24 experts).
With the local spec, core attention is torch's scaled_dot_product_attention (flash on a Hopper GPU) in place
of the unfused DotProductAttention, because training runs fused attention, which is what the planner's
activation count assumes (no sequence x sequence scores kept).

Per sequence length (micro batch 1) and recompute setting it reports:
  - time of forward+backward (median of --iters after --warmup), the planner's time for the layer's FLOPs
    at the cost model's MFU, and the MFU the measurement implies (re-fit `CostModel.mfu` from it);
  - activation memory: what autograd keeps from the forward for the backward (distinct tensors, weights
    left out) over the planner's stored count (memory.layer_activations, before calibration): the quantity
    the calibration factor is fitted to; and on a GPU the peak allocated during forward+backward above
    what was resident before (weights, their gradients kept from the warm-up, the input) over the planner's
    peak for the layer (calibrated stored activations plus the backward: the rebuilt MoE block or layer and
    one layer's activation gradients). The backward starts from a gradient of the layer's output made right
    after the forward, as a pipeline stage receives it (no loss function's fp32 copies).
Recompute settings: none; selective "moe" (megatron-core checkpoints the MoE block); full (the whole layer
under megatron-core's tensor_parallel.checkpoint, as recompute_granularity full with one layer per unit does).

`--device cpu --tiny` runs the same code at tiny widths on the CPU (tests/test_bench_gpu_moe_layer.py does,
so CI keeps it working); those numbers mean nothing. benchmarks/gpu_check.py runs it on a GPU among the
other GPU checks (`make gpu-check`); docs/benchmarks.md ("GPU checks") says how to bring megatron-core to
a GPU machine without network.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _gpu  # noqa: E402

SETTINGS = {
    "none": {"recompute_granularity": "none"},
    "selective moe": {"recompute_granularity": "selective", "recompute_modules": ["moe"]},
    "full": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
}


def build_layer(cfg, setting: dict, on_gpu: bool, device, dtype, te: bool):
    """The MoE decoder layer, cast like training casts it; full recompute is applied around it by run_one."""
    import torch
    from megatron.core.transformer.spec_utils import build_module

    rc = setting if setting["recompute_granularity"] == "selective" else {}
    tconfig = _gpu.transformer_config(cfg, on_gpu, dtype, te, **rc)
    _, moe_spec = _gpu.layer_specs(tconfig, te)
    torch.manual_seed(0)
    layer = build_module(moe_spec, config=tconfig, layer_number=2).to(device)
    return _gpu.cast_like_training(layer, tconfig), tconfig


def planner_estimate(cfg, setting: dict, seq: int, peak_tflops: float, itemsize: int) -> dict:
    """The planner's figures for this layer (memory.layer_activations; the planner counts bf16, scaled here
    to the run's dtype) and its FLOP time."""
    from megatron_hy.plan.cost import DEFAULT_COST, _recomputed_flops, layer_flops
    from megatron_hy.plan.memory import layer_activations

    act = layer_activations(cfg, "moe", setting, seq)
    scale = itemsize / 2
    f = layer_flops(cfg, "moe", seq)
    flops = seq * (3 * sum(f.values()) + _recomputed_flops(f, setting))
    return {"stored_bytes": (act.stored + act.inputs) * scale, "rebuilt_bytes": act.rebuilt * scale,
            "gradient_bytes": act.gradients * scale, "peak_bytes": act.peak * scale,
            "flops": flops, "seconds": flops / (peak_tflops * 1e12 * DEFAULT_COST.mfu), "mfu": DEFAULT_COST.mfu}


def run_one(layer, cfg, seq: int, full: bool, device, dtype, warmup: int, iters: int) -> dict:
    import torch
    from megatron.core import tensor_parallel

    on_gpu = device.type == "cuda"
    emb = _gpu.rotary(cfg, seq, device)
    x = torch.randn(seq, 1, cfg.hidden_size, device=device, dtype=dtype, requires_grad=True)

    def fwd(h):
        out, _ = layer(h, attention_mask=None, rotary_pos_emb=emb)
        return out

    def forward():
        return tensor_parallel.checkpoint(fwd, False, x) if full else fwd(x)

    def step():
        out = forward()
        out.backward(torch.empty_like(out).normal_(0, 1e-2))     # the gradient a next stage would send

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


def saved_for_backward(module, forward, seq: int) -> dict:
    """What autograd keeps from one forward pass for the backward: distinct storages (the weights, which
    it keeps too, left out), the quantity the planner's activation count models. `scores` is the part in
    tensors whose last two sizes are (seq, seq): attention probabilities, which flash attention does not keep
    (torch's CPU attention does). `largest` lists the biggest kept tensors, for re-deriving the count."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    kept: dict[int, tuple] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = (storage.nbytes(), tuple(t.shape), str(t.dtype).replace("torch.", ""))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    out.backward(torch.zeros_like(out))
    scores = sum(n for n, shape, _ in kept.values() if len(shape) >= 2 and shape[-2:] == (seq, seq))
    largest = sorted(kept.values(), reverse=True)[:16]
    return {"bytes": sum(n for n, _, _ in kept.values()), "scores_bytes": scores,
            "largest": [{"bytes": n, "shape": list(shape), "dtype": d} for n, shape, d in largest]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Time one Hy3 MoE decoder layer (megatron-core) on one GPU and "
                                            "measure its activation memory, next to the planner's figures; "
                                            "--device cpu --tiny runs the same code at tiny widths.")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                   help="where to run (default: cuda when a GPU is present)")
    p.add_argument("--tiny", action="store_true", help="tiny widths (the default on a CPU; numbers mean nothing)")
    p.add_argument("--real", action="store_true", help="real widths on a CPU: checks the saved-activation "
                                                       "count, slowly, at short sequences")
    p.add_argument("--seq", type=int, nargs="+", help="sequence lengths (default 4096 8192 16384 on a GPU, "
                                                      "64 128 tiny, 256 real on a CPU)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                   help="recompute settings to run")
    p.add_argument("--ep", type=int, default=8, help="expert-parallel size whose one rank this GPU plays (default 8)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="run dtype (default bf16)")
    p.add_argument("--spec", choices=["auto", "local", "te"], default="auto",
                   help="layer spec: transformer-engine's where it imports on a GPU (auto), or local")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--gpu-tflops", type=float, help="peak dense bf16 TFLOP/s (default from the GPU's name)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return p.parse_args(argv)


def _row(seq: int, setting: str, got: dict, est: dict, peak: float) -> dict:
    act = got["activation_peak_bytes"]
    return {"seq": seq, "recompute": setting, "measured": got, "planner": est,
            "implied_mfu": est["flops"] / (got["seconds"] * peak * 1e12),
            "peak_over_planner": act / est["peak_bytes"] if act else None,
            "saved_over_planner": got["saved_bytes"] / est["stored_bytes"],
            "saved_without_scores_over_planner": (got["saved_bytes"] - got["saved_scores_bytes"]) / est["stored_bytes"]}


def _line(r: dict) -> str:
    mib = 2 ** 20
    got, est = r["measured"], r["planner"]
    peak = f"{got['activation_peak_bytes'] / mib:9.1f}" if got["activation_peak_bytes"] else f"{'-':>9}"
    ratio = f"{r['peak_over_planner']:12.2f}" if r["peak_over_planner"] else f"{'-':>12}"
    return (f"{r['seq']:6d} {r['recompute']:<14} {got['seconds']:8.3f} {est['seconds']:9.3f} {r['implied_mfu']:6.2f} "
            f"{got['saved_bytes'] / mib:10.1f} {est['stored_bytes'] / mib:8.1f} {r['saved_over_planner']:6.2f} "
            f"{peak} {est['peak_bytes'] / mib:8.1f} {ratio}")


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    on_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here")
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    tiny = args.tiny or not (on_gpu or args.real)
    seqs = args.seq or ([4096, 8192, 16384] if on_gpu and not tiny else [64, 128] if tiny else [256])
    _gpu.init_single_process(on_gpu)
    te = _gpu.use_te(on_gpu, args.spec)
    peak, name = _gpu.peak_of(on_gpu, args.gpu_tflops)
    cfg = _gpu.hy3_config(tiny, ep=1 if tiny else args.ep)
    rows, dtypes = [], {}
    print(f"device {name}; Hy3 MoE layer: hidden {cfg.hidden_size}, {cfg.num_heads} heads / {cfg.num_kv_heads} KV, "
          f"{cfg.num_experts} experts of FFN {cfg.moe_ffn}, top-{cfg.top_k}; {args.dtype}, "
          f"{'transformer-engine' if te else 'local'} spec; peak {peak:g} TFLOP/s", flush=True)
    print(f"{'seq':>6} {'recompute':<14} {'time s':>8} {'planner s':>9} {'MFU':>6} {'saved MiB':>10} "
          f"{'planner':>8} {'ratio':>6} {'peak MiB':>9} {'planner':>8} {'peak/planner':>12}")
    for setting_name in args.settings:
        setting = SETTINGS[setting_name]
        layer, _ = build_layer(cfg, setting, on_gpu, device, dtype, te)
        dtypes = _gpu.param_dtypes(layer)
        if args.dtype == "bf16" and dtypes["norm_weights"] != ["bfloat16"]:
            raise SystemExit(f"the cast left norm weights in {dtypes['norm_weights']}, not bf16")
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
        Path(args.json).write_text(json.dumps(
            {"device": name, "peak_tflops": peak, "ep": args.ep, "experts": cfg.num_experts, "dtype": args.dtype,
             "spec": "te" if te else "local", "tiny": tiny, "param_dtypes": dtypes, "versions": _gpu.versions(),
             "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
