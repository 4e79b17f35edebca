"""`hy3 plan --search`'s table and `--json`."""

from __future__ import annotations

import json

from . import memory
from .cost import DEFAULT_COST
from .report import plan_dict
from .search import LAYOUT_KEYS, offload_text, recompute_name, Result


def _what(result: Result) -> str:
    s = result.spec
    host = f", {s.host_memory_gb:g} GiB host memory per node" if s.host_memory_gb else ", host memory not given"
    return (f"{s.nodes} node(s) x {s.gpus_per_node} GPU, {s.gpu_memory_gb:g} GB each "
            f"({memory.capacity_gib(s.gpu_memory_gb):.1f} GiB usable){host}; "
            f"{'LoRA' if s.lora else 'full fine-tuning'}, {s.seq} tokens, MTP {'on' if s.mtp else 'off'}")


def _tally(result: Result) -> str:
    n = sum(result.considered.values())
    parts = ", ".join(f"{v} {k}" for k, v in sorted(result.considered.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{n} layout/recompute combinations: {parts}"


def model_note(result: Result) -> str:
    c, t = DEFAULT_COST, result.layouts[0].step if result.layouts else None
    peak = t.peak_tflops if t else c.tflops(result.spec.gpu_memory_gb, result.spec.tflops)
    return (f"step-time model (a model, not a measurement): MFU {c.mfu:g} of {peak:g} TFLOP/s, NVLink "
            f"{c.nvlink_gbps:g} GB/s, network {c.network_gbps:g} GB/s per GPU, PCIe {c.pcie_gbps:g} GB/s, host Adam "
            f"{c.host_adam_gelems:g} G elements/s per process; constants in megatron_hy/plan/cost.py")


def format_search(result: Result) -> str:
    out = [f"search   {_what(result)}", f"         {_tally(result)}"]
    if not result.layouts:
        out.append(f"verdict  {result.reason}")
        return "\n".join(out)
    out.append(" #  TP PP VPP CP DP  EP ETP  recompute          offload  GPU GiB  host GiB  s/step  tokens/s  verdict")
    for i, p in enumerate(result.layouts, 1):
        lay = p.layout
        off = offload_text(p.precision.offload) if p.precision.offload else "-"
        rc = recompute_name(p.recipe.args).removeprefix("recompute ")
        host = f"{p.worst_node.total_gib:8.0f}" if p.nodes else "       -"
        out.append(f"{i:2d} {lay.tp:3d} {lay.pp:2d} {lay.vpp:3d} {lay.cp:2d} {lay.dp:2d} {lay.ep:3d} {lay.etp:3d}  "
                   f"{rc:<18} {off:>7} {p.worst.total_gib:8.1f} {host}  {p.step.seconds:6.1f} "
                   f"{p.step.tokens_per_second:9,.0f}  {p.verdict}")
    out.append(f"note     {model_note(result)}")
    if result.spec.host_memory_gb is None and not result.spec.lora:
        out.append("note     optimizer CPU offload was not tried: pass --host-mem GB to allow it")
    return "\n".join(out)


def layout_entry(plan, rank: int) -> dict:
    d = plan_dict(plan)
    keep = ("verdict", "fits_gpu", "fits_host", "layout", "params_by_stage", "memory_per_gpu_gib",
            "memory_by_rank_gib", "host_per_node_gib", "host_by_node_gib", "optimizer_offload_fraction",
            "step_time_model")
    return {"rank": rank, "layout_args": {k: v for k, v in plan.recipe.args.items() if k in LAYOUT_KEYS},
            "args": plan.recipe.args,
            "recompute": recompute_name(plan.recipe.args).removeprefix("recompute "), **{k: d[k] for k in keep}}


def search_dict(result: Result) -> dict:
    s = result.spec
    return {
        "search": {"nodes": s.nodes, "gpus_per_node": s.gpus_per_node, "gpu_memory_gb": s.gpu_memory_gb,
                   "capacity_gib": memory.capacity_gib(s.gpu_memory_gb), "host_memory_gb": s.host_memory_gb,
                   "seq_length": s.seq, "tuner": "lora" if s.lora else "full", "mtp": s.mtp,
                   "global_batch": s.base.get("global_batch_size", 16), "micro_batch": s.base.get("micro_batch_size", 1)},
        "considered": dict(sorted(result.considered.items())),
        "layouts": [layout_entry(p, i) for i, p in enumerate(result.layouts, 1)],
        "reason": result.reason,
        "leanest": layout_entry(result.leanest, 0) if result.leanest and not result.layouts else None,
        "cost_model": DEFAULT_COST.as_dict(),
    }


def search_json(result: Result) -> str:
    return json.dumps(search_dict(result), indent=2, default=str)
