"""`hy3 plan`'s report and `--json` for one recipe."""

from __future__ import annotations

import json

from . import host, memory
from .planner import Plan


def _b(n: float) -> str:
    return f"{n / 1e9:.2f}B"


def format_plan(plan: Plan) -> str:
    r, c = plan.recipe, plan.recipe.cluster
    out = [f"recipe   {r.path}"]
    if r.description:
        out.append(f"         {r.description.splitlines()[0]}")
    hostmem = f"; {c.host_memory_gb:g} GiB host memory per node" if c.host_memory_gb else ""
    out.append(f"cluster  {c.nodes} node(s) x {c.gpus_per_node} GPU = {c.world_size} GPUs, "
               f"{c.gpu_memory_gb:g} GB each ({plan.capacity_gib:.1f} GiB usable){' ' + c.gpu if c.gpu else ''}{hostmem}")
    out += _layout_lines(plan)
    m = plan.model
    if m:
        out.append(f"params   {_b(m.total(False))} without MTP + {_b(m.mtp)} MTP = {_b(m.total(True))} "
                   f"(routed experts {_b(m.experts)})")
    out += _memory_lines(plan) + _host_lines(plan) + _time_lines(plan)
    out += [f"note     {n}" for n in plan.notes]
    out += [f"warning  {w}" for w in plan.warnings] + [f"error    {e}" for e in plan.errors]
    verdict = plan.verdict
    if plan.ranks:
        verdict += f": {plan.worst.total_gib:.1f} of {plan.capacity_gib:.1f} GiB on the fullest GPU (pp{plan.worst.pp_rank})"
        if plan.nodes and plan.host_capacity_gib is not None:
            verdict += f"; {plan.worst_node.total_gib:.0f} of {plan.host_capacity_gib:.0f} GiB host memory on the fullest node"
    out.append(f"verdict  {verdict}")
    return "\n".join(out)


def _layout_lines(plan: Plan) -> list[str]:
    lay = plan.layout
    if not lay:
        return []
    mb = f", {lay.microbatches} micro-batches/step" if lay.microbatches else ""
    out = [f"layout   {lay.describe()}; seq {lay.seq}, micro batch {lay.mbs}, global batch {lay.gbs}{mb}"]
    if lay.chunks:
        out += ["         " + s for s in lay.stage_summary()]
    pad = -(-plan.cfg.vocab_size // lay.tp) * lay.tp
    if pad != plan.cfg.vocab_size:
        out.append(f"         vocab padded {plan.cfg.vocab_size} -> {pad} for TP={lay.tp}")
    return out


def _memory_lines(plan: Plan) -> list[str]:
    if not plan.ranks:
        return []
    tuner = plan.recipe.args.get("tuner_type", "full")
    f = plan.precision.offload
    offload = f"; {'all' if f >= 1 else f'{f:.0%}'} of the optimizer states on the host" if f else ""
    out = [f"memory   per GPU, GiB ({tuner}; activations x{memory.ACTIVATION_CALIBRATION} calibration with one layer's "
           f"backward, +{memory.RESERVE_GIB:g} reserve{offload})",
           "         rank   params   weights  grads  optim  activ.  total"]
    for rm in plan.ranks:
        b = rm.breakdown_gib()
        out.append(f"         pp{rm.pp_rank:<4} {_b(rm.params):>7}  {b['weights']:7.1f} {b['gradients']:6.1f} "
                   f"{b['optimizer']:6.1f} {b['activations_calibrated']:7.1f} {b['total']:6.1f}")
    return out


def _host_lines(plan: Plan) -> list[str]:
    if not plan.nodes:
        return []
    c, w = plan.recipe.cluster, plan.worst_node
    workers = plan.recipe.args.get("dataloader_num_workers", 4)
    out = [f"host     per node, GiB ({c.gpus_per_node} training processes x {host.HOST_PROCESS_GIB:g}, "
           f"{workers} dataloader workers each x {host.HOST_WORKER_GIB:g}, offloaded optimizer states)"]
    if plan.precision.offload:
        out.append("         node   stages        optim  processes  dataloader   total")
        for n in sorted(plan.nodes, key=lambda n: -n.total_gib)[:4]:
            b = n.breakdown_gib()
            stages = ",".join(f"pp{p}x{k}" for p, k in sorted(n.gpus_by_stage.items()))
            out.append(f"         n{n.node:<5} {stages:<12} {b['optimizer']:6.0f} {b['processes']:10.0f} "
                       f"{b['dataloader']:11.0f} {b['total']:7.0f}")
    if plan.host_capacity_gib is None:
        out.append(f"         {w.total_gib:.0f} GiB on the fullest node; not checked: the recipe has no "
                   f"cluster.host_memory_gb (or pass --host-mem)")
    else:
        out.append(f"         {w.total_gib:.0f} of {plan.host_capacity_gib:.0f} GiB usable on the fullest node "
                   f"(host_memory_gb {c.host_memory_gb:g} less {host.HOST_RESERVE_SHARE:.0%} for the OS)")
    return out


def _time_lines(plan: Plan) -> list[str]:
    t = plan.step
    if not t:
        return []
    parts = ", ".join(f"{k} {getattr(t, k):.2f}" for k in ("compute", "bubble", "tensor", "expert", "context",
                                                         "pipeline", "data_parallel", "optimizer")
                      if getattr(t, k) >= 0.005)
    return [f"time     ~{t.seconds:.1f} s/step, {t.tokens_per_second:,.0f} tokens/s: a step-time model at MFU "
            f"{t.mfu:g} of {t.peak_tflops:g} TFLOP/s, not a measurement (docs/training.md)",
            f"         seconds per step: {parts}"]


def stage_params_json(plan: Plan) -> list[dict]:
    """Exact element counts held by each GPU of each pipeline stage (every TP and EP rank of a stage
    holds the same: the layout rules make heads, vocabulary and experts divide evenly)."""
    out = []
    for rp in plan.stage_params:
        d = {"pp_rank": rp.pp_rank, "params": rp.dense + rp.expert, "non_expert": rp.dense, "expert": rp.expert,
             "expert_bias_buffer": rp.buffer, "decoder_layers": rp.moe_layers + rp.dense_layers,
             "mtp_layers": rp.mtp_layers}
        if rp.lora_dense or rp.lora_expert:
            d["adapter_params_estimate"] = round(rp.lora_dense + rp.lora_expert)
        out.append(d)
    return out


def plan_dict(plan: Plan) -> dict:
    m, w, c = plan.model, plan.worst, plan.recipe.cluster
    trained_mtp = bool(plan.layout and plan.layout.mtp)
    d = {
        "recipe": plan.recipe.path,
        "valid": plan.valid,
        "fits": plan.fits if plan.valid else False,
        "fits_gpu": plan.fits_gpu if plan.valid else False,
        "fits_host": plan.fits_host if plan.valid else False,
        "verdict": plan.verdict,
        "errors": plan.errors,
        "warnings": plan.warnings,
        "notes": plan.notes,
        "cluster": {"nodes": c.nodes, "gpus_per_node": c.gpus_per_node, "gpu_memory_gb": c.gpu_memory_gb,
                    "capacity_gib": plan.capacity_gib, "host_memory_gb": c.host_memory_gb,
                    "host_capacity_gib": plan.host_capacity_gib},
        "layout": None,
        "params_total": m.total(True) if m else None,
        "params_without_mtp": m.total(False) if m else None,
        "params_mtp": m.mtp if m else None,
        "params_trained": m.total(trained_mtp) if m else None,
        "params_per_gpu_max": round(max(r.params for r in plan.ranks)) if plan.ranks else None,
        "params_by_stage": stage_params_json(plan),
        "memory_per_gpu_gib": round(w.total_gib, 2) if w else None,
        "memory_per_gpu_gb": round(w.total_gib * memory.GIB / 1e9, 2) if w else None,
        "memory_by_rank_gib": [{"pp_rank": r.pp_rank, **{k: round(v, 2) for k, v in r.breakdown_gib().items()}}
                               for r in plan.ranks],
        "host_by_node_gib": [{"node": n.node, "gpus_by_stage": {f"pp{p}": k for p, k in sorted(n.gpus_by_stage.items())},
                              **{k: round(v, 2) for k, v in n.breakdown_gib().items()}} for n in plan.nodes],
        "host_per_node_gib": round(plan.worst_node.total_gib, 2) if plan.nodes else None,
        "optimizer_offload_fraction": plan.precision.offload if plan.precision else None,
        "step_time_model": plan.step.as_dict() if plan.step else None,
        "calibration": {"activations": memory.ACTIVATION_CALIBRATION, "reserve_gib": memory.RESERVE_GIB,
                        "host_process_gib": host.HOST_PROCESS_GIB, "host_worker_gib": host.HOST_WORKER_GIB},
    }
    lay = plan.layout
    if lay:
        d["layout"] = {"tp": lay.tp, "pp": lay.pp, "vpp": lay.vpp, "cp": lay.cp, "dp": lay.dp, "ep": lay.ep,
                       "etp": lay.etp, "sequence_parallel": lay.sp, "seq_length": lay.seq, "micro_batch": lay.mbs,
                       "global_batch": lay.gbs, "micro_batches_per_step": lay.microbatches,
                       "padded_vocab": -(-plan.cfg.vocab_size // lay.tp) * lay.tp,
                       "stages": lay.stage_summary() if lay.chunks else []}
    return d


def plan_json(plan: Plan) -> str:
    return json.dumps(plan_dict(plan), indent=2)
