"""The first pipeline stage of a Hy3 run on one GPU under 1F1B: N decoder layers holding the activations of
the micro-batches in flight, under each recompute setting; peak memory measured against the planner's
figure for the same stage.

Under 1F1B, pipeline stage p of PP runs PP - p - 1 forwards before its first backward and then alternates
one forward and one backward, so it holds PP - p micro-batches' activations at its peak: the first stage
(p = 0) holds the most. This script is that stage: megatron-core's TransformerBlock with the first N layers
of Hy3 (layer 0 dense, the others MoE with the routed experts of one expert-parallel rank, default EP 8: 24
of 192), built as megatron_hy's model builder builds them (local spec with SDPA core attention, or
transformer-engine's where it imports), cast to bf16 as megatron-core's Float16Module casts a model. It runs
the 1F1B order of stage 0 over M micro-batches on random embedding outputs: each forward's output is freed
after the send as Megatron frees it (deallocate_output_tensor), each backward starts from a gradient made
as it arrives from the next stage (custom_backward), full recompute is TransformerBlock's own.

Per recompute setting (none; selective with each module the planner knows, alone; full) it reports:
  - measured: peak allocated during one 1F1B pass above what was resident before (weights and their
    gradients from a warm-up pass), torch.cuda.max_memory_allocated; what autograd keeps from one
    micro-batch (distinct storages, weights left out); the seconds per micro-batch;
  - planner: `hy3 plan`'s own estimate for this stage, from plan_recipe on a Hy3 config of N x PP layers with
    this GPU's experts, PP stages, M micro-batches, micro batch 1, the same sequence length and recompute
    setting: activations at the peak of pipeline rank 0 (calibrated stored activations of the micro-batches
    in flight plus one layer's backward), its stored bytes per micro-batch before calibration, and its
    FLOP time;
  - peak / planner, which the planner's model should keep between 1.0 and 1/1.15 (never below the
    measurement, at most 15% above it), and stored / count, the quantity the calibration is fitted to.

Without transformer-engine two settings are reported as skipped, with the reason: selective moe_act
(megatron-core accepts it only with grouped-GEMM experts) and selective layernorm (megatron-core's
CheckpointWithoutOutput calls transformer-engine's FP8 state even when FP8 is off). `--device cpu --tiny` runs the same code at tiny widths on the CPU
(tests/test_bench_gpu_stage.py; the numbers mean nothing there). benchmarks/gpu_check.py runs it on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _gpu  # noqa: E402
from gpu_moe_layer import saved_for_backward  # noqa: E402

FULL = {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
BOUND = 1.15     # the planner may be this much above the measured peak, and never below it


def settings() -> dict:
    """none, selective with each module the planner knows (alone), full."""
    from megatron_hy.plan.layout import RECOMPUTE_MODULES

    out = {"none": {"recompute_granularity": "none"}}
    for m in sorted(RECOMPUTE_MODULES):
        out[f"selective {m}"] = {"recompute_granularity": "selective", "recompute_modules": [m]}
    out["full"] = FULL
    return out


def skip_reason(setting: dict, te: bool) -> str | None:
    """Why a setting cannot run without transformer-engine (None: it can, or TE is here)."""
    mods = setting.get("recompute_modules", [])
    if te:
        return None
    if "moe_act" in mods:
        return "moe_act recompute needs grouped-GEMM experts (megatron-core refuses it without moe_grouped_gemm, " \
               "which needs transformer-engine here)"
    if "layernorm" in mods:
        # tensor_parallel.CheckpointWithoutOutput(fp8=False) sets self.fp8 = fp8 is not None, i.e. True, and then
        # calls transformer-engine's FP8GlobalStateManager (0.16.1 and 0.19.2 alike): NameError without TE
        return "layernorm recompute calls transformer-engine's FP8GlobalStateManager in megatron-core " \
               "(CheckpointWithoutOutput), so it needs transformer-engine"
    return None


def build_stage(cfg, setting: dict, on_gpu: bool, device, dtype, te: bool):
    """TransformerBlock of the stage's layers (no final norm: not the last stage), cast like training."""
    import torch
    from megatron.core.transformer.transformer_block import TransformerBlock

    rc = {} if setting["recompute_granularity"] == "none" else setting
    tconfig = _gpu.transformer_config(cfg, on_gpu, dtype, te, **rc)
    block_spec, _ = _gpu.layer_specs(tconfig, te)
    torch.manual_seed(0)
    block = TransformerBlock(tconfig, block_spec, pre_process=True, post_process=False).to(device)
    return _gpu.cast_like_training(block, tconfig), tconfig


def planner_stage(cfg, layers: int, pp: int, microbatches: int, seq: int, setting: dict, gpu_memory_gb: float):
    """`hy3 plan`'s estimate of this stage: rank 0 of a PP-stage run of N x PP layers, every stage N layers."""
    import dataclasses

    from megatron_hy.plan.planner import plan_recipe
    from megatron_hy.plan.recipe import Cluster, Recipe
    from megatron_hy.swift.recipe import RECIPE_PLUGIN

    n = layers * pp
    model = dataclasses.replace(cfg, num_layers=n, layer_types=("dense",) + ("sparse",) * (n - 1))
    args = {"custom_register_path": RECIPE_PLUGIN, "mtp_num_layers": 0, "tuner_type": "full",
            "pipeline_model_parallel_size": pp, "micro_batch_size": 1, "global_batch_size": microbatches,
            "max_length": seq, "main_grads_dtype": "bf16", "moe_router_load_balancing_type": "none",
            "moe_aux_loss_coeff": 0.0, "megatron_extra_kwargs": {"moe_router_bias_update_rate": 0.0}, **setting}
    plan = plan_recipe(Recipe("gpu_stage", Cluster(1, pp, gpu_memory_gb), args), cfg=model, check_flags=False)
    if plan.errors or not plan.ranks:
        raise SystemExit(f"the planner rejects the stage's configuration: {plan.errors}")
    if plan.layout.rank_layers(0) != list(range(layers)):
        raise SystemExit(f"the planner puts layers {plan.layout.rank_layers(0)} on stage 0, not the first {layers}")
    return plan


def one_f_one_b(block, cfg, seq: int, pp: int, microbatches: int, device, dtype, emb) -> None:
    """Stage 0's order under 1F1B: PP - 1 warm-up forwards, then forward/backward pairs, then the rest."""
    import torch
    from megatron.core.pipeline_parallel.schedules import custom_backward, deallocate_output_tensor

    waiting = []

    def forward():
        x = torch.randn(seq, 1, cfg.hidden_size, device=device, dtype=dtype, requires_grad=True)   # embedding output
        out = block(hidden_states=x, attention_mask=None, rotary_pos_emb=emb)
        shape = out.shape
        deallocate_output_tensor(out, True)          # sent on: only its grad_fn is kept
        waiting.append((out, shape))

    def backward():
        out, shape = waiting.pop(0)
        custom_backward(out, torch.empty(shape, device=device, dtype=dtype).normal_(0, 1e-2))   # received

    warmup = min(pp - 1, microbatches)
    for _ in range(warmup):
        forward()
    for _ in range(microbatches - warmup):
        forward()
        backward()
    while waiting:
        backward()


def run_setting(block, cfg, seq: int, pp: int, microbatches: int, device, dtype) -> dict:
    import torch

    on_gpu = device.type == "cuda"
    emb = _gpu.rotary(cfg, seq, device)

    def sync():
        if on_gpu:
            torch.cuda.synchronize()

    one_f_one_b(block, cfg, seq, pp, microbatches, device, dtype, emb)        # warm-up: gradients allocated
    x = torch.randn(seq, 1, cfg.hidden_size, device=device, dtype=dtype, requires_grad=True)
    saved = saved_for_backward(block, lambda: block(hidden_states=x, attention_mask=None, rotary_pos_emb=emb), seq)
    del x
    sync()
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    one_f_one_b(block, cfg, seq, pp, microbatches, device, dtype, emb)
    sync()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - resident if on_gpu else None
    return {"seconds_per_microbatch": seconds / microbatches, "saved_bytes": saved["bytes"],
            "saved_scores_bytes": saved["scores_bytes"], "saved_largest": saved["largest"][:8],
            "resident_bytes": resident if on_gpu else None, "activation_peak_bytes": peak}


def planner_figures(plan, itemsize: int, peak_tflops: float) -> dict:
    from megatron_hy.plan.cost import DEFAULT_COST, stage_flops

    rm = plan.ranks[0]
    act, scale = rm.act, itemsize / 2          # the planner counts bf16
    flops = stage_flops(plan.cfg, plan.model, plan.layout, plan.stage_params[0], plan.recipe.args)
    return {"inflight": act.inflight, "stored_bytes": (act.stored + act.inputs) * scale,
            "rebuilt_bytes": act.rebuilt * scale, "gradient_bytes": act.gradients * scale,
            "peak_bytes": act.peak * scale, "flops_per_microbatch": flops,
            "seconds_per_microbatch": flops / (peak_tflops * 1e12 * DEFAULT_COST.mfu), "mfu": DEFAULT_COST.mfu}


def _row(name: str, got: dict | None, est: dict, skipped: str | None, peak_tflops: float) -> dict:
    row = {"recompute": name, "measured": got, "planner": est, "skipped": skipped}
    if got:
        act = got["activation_peak_bytes"]
        row["planner_over_measured"] = est["peak_bytes"] / act if act else None
        row["within_bound"] = act <= est["peak_bytes"] <= BOUND * act if act else None
        row["saved_over_planner"] = got["saved_bytes"] / est["stored_bytes"]
        row["implied_mfu"] = est["flops_per_microbatch"] / (got["seconds_per_microbatch"] * peak_tflops * 1e12)
    return row


def _line(r: dict) -> str:
    mib = 2 ** 20
    est, got = r["planner"], r["measured"]
    if r["skipped"]:
        return f"{r['recompute']:<26} skipped: {r['skipped']}"
    peak = f"{got['activation_peak_bytes'] / mib:9.0f}" if got["activation_peak_bytes"] else f"{'-':>9}"
    ratio = f"{r['planner_over_measured']:8.2f}" if r["planner_over_measured"] else f"{'-':>8}"
    ok = {True: "yes", False: "NO", None: "-"}[r["within_bound"]]
    return (f"{r['recompute']:<26} {got['seconds_per_microbatch']:7.3f} {r['implied_mfu']:5.2f} "
            f"{got['saved_bytes'] / mib:9.0f} {est['stored_bytes'] / mib:8.0f} {r['saved_over_planner']:6.2f} "
            f"{peak} {est['peak_bytes'] / mib:8.0f} {ratio} {ok:>7}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="The first pipeline stage of a Hy3 run on one GPU under 1F1B: peak "
                                            "memory under each recompute setting against `hy3 plan`'s figure; "
                                            "--device cpu --tiny runs the same code at tiny widths.")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                   help="where to run (default: cuda when a GPU is present)")
    p.add_argument("--tiny", action="store_true", help="tiny widths (the default on a CPU; numbers mean nothing)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers on the stage, the first dense (default 4)")
    p.add_argument("--pp", type=int, default=4, help="pipeline stages; stage 0 holds PP micro-batches (default 4)")
    p.add_argument("--microbatches", type=int, help="micro-batches per pass (default PP + 2)")
    p.add_argument("--seq", type=int, help="tokens per micro-batch (default 8192 on a GPU, 64 tiny)")
    p.add_argument("--ep", type=int, default=8, help="expert-parallel size whose one rank this GPU plays (default 8)")
    p.add_argument("--settings", nargs="+", help="recompute settings to run (default all: none, selective X for "
                                                 "each module the planner knows, full)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="run dtype (default bf16)")
    p.add_argument("--spec", choices=["auto", "local", "te"], default="auto",
                   help="layer spec: transformer-engine's where it imports on a GPU (auto), or local")
    p.add_argument("--gpu-tflops", type=float, help="peak dense bf16 TFLOP/s (default from the GPU's name)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    table = settings()
    chosen = args.settings or list(table)
    bad = [s for s in chosen if s not in table]
    if bad:
        raise SystemExit(f"--settings: unknown {bad}; choose from {list(table)}")
    if args.layers < 2 or args.pp < 1:
        raise SystemExit("--layers must be at least 2 (a dense and a MoE layer) and --pp at least 1")
    on_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here")
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    tiny = args.tiny or not on_gpu
    seq = args.seq or (64 if tiny else 8192)
    m = args.microbatches or args.pp + 2
    _gpu.init_single_process(on_gpu)
    te = _gpu.use_te(on_gpu, args.spec)
    peak_tflops, name = _gpu.peak_of(on_gpu, args.gpu_tflops)
    mem_gb = next((gb for key, gb in _gpu.GPU_MEMORY_GB.items() if key in name), 141)
    cfg = _gpu.hy3_config(tiny, ep=1 if tiny else args.ep, layers=args.layers)
    print(f"device {name}; stage 0 of PP {args.pp} under 1F1B ({min(args.pp, m)} micro-batches in flight, {m} per "
          f"pass): {args.layers} Hy3 layers (1 dense + {args.layers - 1} MoE of {cfg.num_experts} experts, hidden "
          f"{cfg.hidden_size}), {seq} tokens, {args.dtype}, {'transformer-engine' if te else 'local'} spec", flush=True)
    print(f"{'recompute':<26} {'s/mb':>7} {'MFU':>5} {'saved MiB':>9} {'planner':>8} {'ratio':>6} "
          f"{'peak MiB':>9} {'planner':>8} {'pl./meas':>8} {'ok':>7}")
    rows, dtypes = [], {}
    for setting_name in chosen:
        setting = table[setting_name]
        plan = planner_stage(cfg, args.layers, args.pp, m, seq, setting, mem_gb)
        est = planner_figures(plan, dtype.itemsize, peak_tflops)
        skipped = skip_reason(setting, te)
        got = None
        if not skipped:
            block, _ = build_stage(cfg, setting, on_gpu, device, dtype, te)
            dtypes = _gpu.param_dtypes(block)
            if args.dtype == "bf16" and dtypes["norm_weights"] != ["bfloat16"]:
                raise SystemExit(f"the cast left norm weights in {dtypes['norm_weights']}, not bf16")
            got = run_setting(block, cfg, seq, args.pp, m, device, dtype)
            del block
            if on_gpu:
                torch.cuda.empty_cache()
        rows.append(_row(setting_name, got, est, skipped, peak_tflops))
        print(_line(rows[-1]), flush=True)
    measured = [r for r in rows if r.get("within_bound") is not None]
    if measured:
        worst = max(measured, key=lambda r: abs(r["planner_over_measured"] - 1))
        ok = all(r["within_bound"] for r in measured)
        print(f"planner within [1, {BOUND}] x the measured peak in {sum(r['within_bound'] for r in measured)} of "
              f"{len(measured)} settings{'' if ok else ' (NOT all)'}; furthest: {worst['recompute']}, planner / "
              f"measured = {worst['planner_over_measured']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"device": name, "peak_tflops": peak_tflops, "layers": args.layers, "pp": args.pp, "microbatches": m,
             "seq": seq, "ep": args.ep, "experts": cfg.num_experts, "dtype": args.dtype,
             "spec": "te" if te else "local", "tiny": tiny, "bound": BOUND, "param_dtypes": dtypes,
             "versions": _gpu.versions(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
