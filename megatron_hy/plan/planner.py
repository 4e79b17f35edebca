"""`hy3 plan`: check a recipe's layout against Hy3 and its cluster, count parameters, estimate memory."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Hy3Config, load_config
from . import memory
from .layout import Layout, build_layout
from .params import ModelParams, count_params, lora_targets, rank_params
from .recipe import Recipe
from .swift_args import check_args
from .swift_model import check as check_swift_model

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "assets" / "hy3_config.json"


@dataclass
class Plan:
    recipe: Recipe
    cfg: Hy3Config
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    layout: Layout | None = None
    model: ModelParams | None = None
    ranks: list = field(default_factory=list)     # RankMemory per pipeline rank
    capacity_gib: float = 0.0

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def worst(self):
        return max(self.ranks, key=lambda r: r.total_gib) if self.ranks else None

    @property
    def fits(self) -> bool:
        return bool(self.ranks) and self.worst.total_gib <= self.capacity_gib

    @property
    def ok(self) -> bool:
        return self.valid and self.fits

    @property
    def verdict(self) -> str:
        if not self.valid:
            return "invalid layout"
        if not self.fits:
            return "does not fit"
        share = self.worst.total_gib / self.capacity_gib
        return "fits (tight)" if share > memory.TIGHT else "fits"


def _hy3_moe_settings(args: dict, warnings: list[str]) -> None:
    """Hy3 routes with a sigmoid over expert-biased scores and was trained without an auxiliary loss;
    for SFT the bias stays frozen. Say so when a recipe drifts from that."""
    lb = args.get("moe_router_load_balancing_type")
    if (lb if isinstance(lb, list) else [lb]) != ["none"]:
        warnings.append("moe_router_load_balancing_type is not 'none': mcore-bridge defaults to 'aux_loss', "
                        "but Hy3 is aux-loss-free")
    coeff = args.get("moe_aux_loss_coeff", 0)
    if any(c for c in (coeff if isinstance(coeff, list) else [coeff])):
        warnings.append("moe_aux_loss_coeff is not 0: Hy3 was trained without an auxiliary loss")
    extra = args.get("megatron_extra_kwargs") or {}
    if isinstance(extra, str):          # ms-swift also takes the JSON text
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            extra = {}
    if extra.get("moe_router_bias_update_rate") != 0:
        warnings.append("megatron_extra_kwargs.moe_router_bias_update_rate is not 0: mcore-bridge's default 1e-3 "
                        "moves the expert bias during SFT")
    if extra.get("moe_router_score_function", "sigmoid") != "sigmoid":
        warnings.append("megatron_extra_kwargs.moe_router_score_function is not 'sigmoid' (Hy3's router)")
    if args.get("moe_grouped_gemm") is False:
        warnings.append("moe_grouped_gemm is false: 192 experts run one GEMM each")
    if args.get("moe_token_dispatcher_type", "alltoall") != "alltoall":
        warnings.append(f"moe_token_dispatcher_type is {args['moe_token_dispatcher_type']!r}; the recipes use alltoall")


def plan_recipe(recipe: Recipe, cfg: Hy3Config | None = None) -> Plan:
    cfg = cfg or load_config(DEFAULT_CONFIG)
    plan = Plan(recipe, cfg)
    args = recipe.args
    plan.errors += check_args(args, "sft", where=f"{recipe.path}: args", lines=recipe.lines)
    plan.errors += check_swift_model(args, cfg)
    plan.capacity_gib = memory.capacity_gib(recipe.cluster.gpu_memory_gb)
    _hy3_moe_settings(args, plan.warnings)
    lay = build_layout(cfg, args, recipe.cluster.world_size, plan.errors, plan.warnings)
    plan.layout = lay
    plan.model = count_params(cfg)
    lora = args.get("tuner_type", "full") != "full"
    if lora and lay and lay.etp > 1:
        plan.errors.append("LoRA does not support expert_tensor_parallel_size > 1 (mcore-bridge raises); use 1")
    if lay is None or not lay.chunks or lay.edp < 1 or cfg.num_experts % lay.ep or lay.mtp > cfg.num_mtp_layers:
        return plan      # sizes that do not even tile the GPUs: no per-GPU memory to speak of
    try:
        prec = memory.precision_from_args(args)
    except KeyError as e:
        plan.errors.append(f"unknown dtype {e} in main_grads_dtype/main_params_dtype/exp_avg_dtype/exp_avg_sq_dtype")
        return plan
    rank = int(args.get("lora_rank", 8)) if lora else 0
    if lora and args.get("target_regex"):
        plan.warnings.append("target_regex: adapter memory is estimated as if every linear were targeted")
    targets = lora_targets(args)
    for p in range(lay.pp):
        rp = rank_params(plan.model, lay, p, rank, targets)
        plan.ranks.append(memory.rank_memory(cfg, plan.model, lay, rp, args, prec, lora))
    return plan


def _b(n: float) -> str:
    return f"{n / 1e9:.2f}B"


def format_plan(plan: Plan) -> str:
    r, c = plan.recipe, plan.recipe.cluster
    out = [f"recipe   {r.path}"]
    if r.description:
        out.append(f"         {r.description.splitlines()[0]}")
    out.append(f"cluster  {c.nodes} node(s) x {c.gpus_per_node} GPU = {c.world_size} GPUs, "
               f"{c.gpu_memory_gb:g} GB each ({plan.capacity_gib:.1f} GiB usable){' ' + c.gpu if c.gpu else ''}")
    lay = plan.layout
    if lay:
        mb = f", {lay.microbatches} micro-batches/step" if lay.microbatches else ""
        out.append(f"layout   {lay.describe()}; seq {lay.seq}, micro batch {lay.mbs}, global batch {lay.gbs}{mb}")
        if lay.chunks:
            out += ["         " + s for s in lay.stage_summary()]
        pad = -(-plan.cfg.vocab_size // lay.tp) * lay.tp
        if pad != plan.cfg.vocab_size:
            out.append(f"         vocab padded {plan.cfg.vocab_size} -> {pad} for TP={lay.tp}")
    m = plan.model
    if m:
        out.append(f"params   {_b(m.total(False))} without MTP + {_b(m.mtp)} MTP = {_b(m.total(True))} "
                   f"(routed experts {_b(m.experts)})")
    if plan.ranks:
        tuner = plan.recipe.args.get("tuner_type", "full")
        out.append(f"memory   per GPU, GiB ({tuner}; activations x{memory.ACTIVATION_CALIBRATION} calibration, "
                   f"+{memory.RESERVE_GIB:g} reserve)")
        out.append("         rank   params   weights  grads  optim  activ.  total")
        for rm in plan.ranks:
            b = rm.breakdown_gib()
            out.append(f"         pp{rm.pp_rank:<4} {_b(rm.params):>7}  {b['weights']:7.1f} {b['gradients']:6.1f} "
                       f"{b['optimizer']:6.1f} {b['activations_calibrated']:7.1f} {b['total']:6.1f}")
    for w in plan.warnings:
        out.append(f"warning  {w}")
    for e in plan.errors:
        out.append(f"error    {e}")
    verdict = plan.verdict
    if plan.ranks:
        verdict += f": {plan.worst.total_gib:.1f} of {plan.capacity_gib:.1f} GiB on the fullest GPU (pp{plan.worst.pp_rank})"
    out.append(f"verdict  {verdict}")
    return "\n".join(out)


def plan_json(plan: Plan) -> str:
    m, w = plan.model, plan.worst
    trained_mtp = bool(plan.layout and plan.layout.mtp)
    d = {
        "recipe": plan.recipe.path,
        "valid": plan.valid,
        "fits": plan.fits if plan.valid else False,
        "verdict": plan.verdict,
        "errors": plan.errors,
        "warnings": plan.warnings,
        "cluster": {"nodes": plan.recipe.cluster.nodes, "gpus_per_node": plan.recipe.cluster.gpus_per_node,
                    "gpu_memory_gb": plan.recipe.cluster.gpu_memory_gb, "capacity_gib": plan.capacity_gib},
        "layout": None,
        "params_total": m.total(True) if m else None,
        "params_without_mtp": m.total(False) if m else None,
        "params_mtp": m.mtp if m else None,
        "params_trained": m.total(trained_mtp) if m else None,
        "params_per_gpu_max": round(max(r.params for r in plan.ranks)) if plan.ranks else None,
        "memory_per_gpu_gib": round(w.total_gib, 2) if w else None,
        "memory_per_gpu_gb": round(w.total_gib * memory.GIB / 1e9, 2) if w else None,
        "memory_by_rank_gib": [{"pp_rank": r.pp_rank, **{k: round(v, 2) for k, v in r.breakdown_gib().items()}}
                               for r in plan.ranks],
        "calibration": {"activations": memory.ACTIVATION_CALIBRATION, "reserve_gib": memory.RESERVE_GIB},
    }
    lay = plan.layout
    if lay:
        d["layout"] = {"tp": lay.tp, "pp": lay.pp, "vpp": lay.vpp, "cp": lay.cp, "dp": lay.dp, "ep": lay.ep,
                       "etp": lay.etp, "sequence_parallel": lay.sp, "seq_length": lay.seq, "micro_batch": lay.mbs,
                       "global_batch": lay.gbs, "micro_batches_per_step": lay.microbatches,
                       "padded_vocab": -(-plan.cfg.vocab_size // lay.tp) * lay.tp,
                       "stages": lay.stage_summary() if lay.chunks else []}
    return json.dumps(d, indent=2)
