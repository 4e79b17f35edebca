"""`hy3 plan --search`: every layout of a search space on a given cluster, judged by the planner,
the ones that fit ranked by the step-time model (cost.py), best first.

The space, for N nodes of G GPUs:
  - TP in 1, 2, 4, 8 dividing the heads and query groups, at most G (tensor parallelism stays inside a node);
  - CP in powers of two, for sequences of at least 4096 tokens per context-parallel rank;
  - PP every divisor of the remaining ranks up to the layer count, with VPP 1, 2 or 4; the layers split
    evenly (no layout string) when they can, otherwise by an explicit pipeline_model_parallel_layout with
    the MTP layer counted as one layer of the last chunk;
  - EP every divisor of the 192 experts that divides the ranks of a stage, ETP 1 or TP (full fine-tuning);
  - recompute none, selective [moe_act], selective [moe], full (uniform, one layer);
  - full fine-tuning with a host memory size: megatron-core's optimizer CPU offload (with the precision-aware
    optimizer, which keeps no fp32 master on the GPU), at the smallest fraction, in steps of 0.05, that fits.
For each layout the cheapest recompute that fits with headroom is kept (more recompute only costs time),
and before it every cheaper one that fits only tightly or with offload. Micro batch and global batch come from the
base arguments; layouts whose data-parallel size does not divide the global batch are counted, not kept.
Layouts that fit with the planner's headroom ("fits") rank before those that fit tightly, each group by the
modelled step time; ties break on the smaller sizes, so the order is deterministic.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import Hy3Config, load_config
from ..mapping import lora_modules
from ..megatron.config import swift_moe_settings
from ..swift.recipe import RECIPE_PLUGIN
from . import memory
from .files import write_new
from .layout import layout_string
from .planner import add_step_time, DEFAULT_CONFIG, Plan, plan_recipe
from .recipe import Cluster, Recipe

RECOMPUTE = [
    ("none", {"recompute_granularity": "none"}),
    ("selective moe_act", {"recompute_granularity": "selective", "recompute_modules": ["moe_act"]}),
    ("selective moe", {"recompute_granularity": "selective", "recompute_modules": ["moe"]}),
    ("full", {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}),
]
LAYOUT_KEYS = {
    "tensor_model_parallel_size", "sequence_parallel", "pipeline_model_parallel_size",
    "virtual_pipeline_model_parallel_size", "pipeline_model_parallel_layout", "decoder_first_pipeline_num_layers",
    "decoder_last_pipeline_num_layers", "account_for_embedding_in_pipeline_split",
    "account_for_loss_in_pipeline_split", "context_parallel_size", "expert_model_parallel_size",
    "expert_tensor_parallel_size", "recompute_granularity", "recompute_method", "recompute_num_layers",
    "recompute_modules", "optimizer_cpu_offload", "optimizer_offload_fraction", "use_precision_aware_optimizer",
}
VPP_CHOICES = (1, 2, 4)
OFFLOAD_STEP = 0.05


@dataclass(frozen=True)
class Spec:
    nodes: int
    gpus_per_node: int
    gpu_memory_gb: float
    seq: int
    lora: bool = False
    mtp: bool = False
    host_memory_gb: float | None = None
    tflops: float | None = None
    top: int = 10
    base: dict = field(default_factory=dict)   # `megatron sft` arguments to keep (a recipe's, or the template)

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass
class Result:
    spec: Spec
    layouts: list            # Plan, best first
    considered: Counter      # outcome -> count
    reason: str | None       # why nothing fits
    leanest: Plan | None     # the valid layout with the least GPU memory (the proof's witness)


def template_args(seq: int, lora: bool, mtp: bool) -> dict:
    """The non-layout `megatron sft` arguments of a searched recipe (those of the shipped recipes)."""
    args = {"tuner_type": "lora" if lora else "full", "torch_dtype": "bfloat16",
            "custom_register_path": RECIPE_PLUGIN, "mtp_num_layers": 1 if mtp else 0}
    args.update({k: v for k, v in swift_moe_settings(load_config(DEFAULT_CONFIG)).items() if k != "mtp_num_layers"})
    args["moe_permute_fusion"] = True
    args.update({"max_length": seq, "packing": True, "micro_batch_size": 1, "global_batch_size": 128})
    if lora:
        args.update({"lora_rank": 16, "lora_alpha": 32, "target_modules": lora_modules("layer"),  # attention
                     "lr": 1.0e-4, "min_lr": 1.0e-5})
    else:
        args.update({"lr": 1.0e-5, "min_lr": 1.0e-6})
    args.update({"lr_warmup_fraction": 0.05, "num_train_epochs": 1, "save_steps": 500})
    if lora:
        args["merge_lora"] = False
    else:
        args["no_save_optim"] = True
        if not mtp:
            args["save_missing_weights"] = True
    args.update({"dataset_num_proc": 8, "dataloader_num_workers": 4})
    return args


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def chunk_counts(layers: int, chunks: int, mtp: int) -> list[int] | None:
    """Decoder layers per pipeline chunk, as even as possible with the MTP layer counted on the last
    chunk; the spare layers go to the middle chunks first (the first holds the embedding, the last the loss)."""
    units = layers + mtp
    base, extra = divmod(units, chunks)
    counts = [base] * chunks
    order = list(range(1, chunks - 1)) + [chunks - 1, 0] if chunks > 2 else list(range(chunks))[::-1]
    for k in order[:extra]:
        counts[k] += 1
    counts[-1] -= mtp
    return counts if min(counts) >= 1 else None


def _structures(cfg: Hy3Config, spec: Spec):
    """(TP, CP, PP, VPP, EP, ETP) of the search space, in a fixed order."""
    world, G = spec.world, spec.gpus_per_node
    for tp in (1, 2, 4, 8):
        if tp > G or world % tp or cfg.num_heads % tp or cfg.num_kv_heads % tp:
            continue
        for cp in (2 ** i for i in range(0, 12)):
            if world % (tp * cp):
                break
            if cp > 1 and (spec.seq // cp < 4096 or spec.seq % math.lcm(2 * cp, cp * tp)):
                continue
            for pp in _divisors(world // (tp * cp)):
                if pp > cfg.num_layers:
                    continue
                dp = world // (tp * cp * pp)
                for vpp in VPP_CHOICES if pp > 1 else (1,):
                    if pp * vpp > cfg.num_layers:
                        continue
                    for etp in sorted({1, tp} if not spec.lora else {1}):
                        if cfg.moe_ffn % etp:
                            continue
                        for ep in _divisors(cfg.num_experts):
                            if (tp * cp * dp) % (ep * etp) == 0:
                                yield tp, cp, pp, vpp, ep, etp


def layout_args(cfg: Hy3Config, tp: int, cp: int, pp: int, vpp: int, ep: int, etp: int, mtp: int) -> dict | None:
    args = {"tensor_model_parallel_size": tp, "sequence_parallel": tp > 1, "pipeline_model_parallel_size": pp}
    chunks = pp * vpp
    if pp > 1 and (mtp or cfg.num_layers % chunks):
        counts = chunk_counts(cfg.num_layers, chunks, mtp)
        if counts is None:
            return None
        args["pipeline_model_parallel_layout"] = layout_string(counts, mtp)
    elif vpp > 1:
        args["virtual_pipeline_model_parallel_size"] = vpp
    args.update({"context_parallel_size": cp, "expert_model_parallel_size": ep, "expert_tensor_parallel_size": etp})
    return args


def _offload_needed(plan: Plan, target_gib: float) -> float | None:
    """Smallest offload fraction (on the OFFLOAD_STEP grid) that brings every GPU under target_gib,
    with the precision-aware optimizer (12 bytes per element on the GPU, none once offloaded)."""
    need = 0.0
    for rm in plan.ranks:
        per_all = rm.optimizer_elements * 12 / memory.GIB
        over = rm.total_gib - rm.optimizer / memory.GIB + per_all - target_gib
        if over > 0:
            if per_all <= 0:
                return None
            need = max(need, over / per_all)
    if need > 1:
        return None
    return min(1.0, math.ceil(need / OFFLOAD_STEP - 1e-9) * OFFLOAD_STEP) if need else 0.0


def _recipe(spec: Spec, args: dict) -> Recipe:
    return Recipe("search", Cluster(spec.nodes, spec.gpus_per_node, spec.gpu_memory_gb, "", spec.host_memory_gb),
                  args)


def _with_offload(spec: Spec, cfg: Hy3Config, args: dict, plan: Plan) -> Plan | None:
    """The plan again with the least optimizer offload that fits (non-tight when offload can reach it)."""
    for target in (plan.capacity_gib * memory.TIGHT, plan.capacity_gib):
        f = _offload_needed(plan, target)
        if f:
            off = dict(args, optimizer_cpu_offload=True, optimizer_offload_fraction=round(f, 2),
                       use_precision_aware_optimizer=True)
            again = plan_recipe(_recipe(spec, off), cfg, spec.tflops, check_flags=False, timed=False)
            if again.ok and not again.warnings:
                return again
    return None


def _fitting(spec: Spec, cfg: Hy3Config, args: dict, plan: Plan, offload_ok: bool) -> Plan | None:
    """The plan itself when it fits, or the same layout with the least optimizer offload that fits."""
    if plan.ok:
        return plan
    if offload_ok and plan.fits_host:
        return _with_offload(spec, cfg, args, plan)
    return None


def _evaluate(spec: Spec, cfg: Hy3Config, layout: dict, tally: Counter, lean: list) -> list[Plan]:
    """The fitting plans of one layout over the recompute settings. The leanest setting (full recompute)
    goes first: when even it does not fit, nothing else is tried."""
    offload_ok = spec.host_memory_gb is not None and not spec.lora
    plans = {}

    def judge(name: str) -> Plan | None:
        args = {**spec.base, **layout, **dict(RECOMPUTE)[name]}
        plan = plan_recipe(_recipe(spec, args), cfg, spec.tflops, check_flags=False, timed=False)
        if not plan.valid or plan.warnings:
            tally["invalid for Megatron (batch or pipeline-schedule rules)" if not plan.valid
                  else "warned about (e.g. fewer micro-batches than stages)"] += 1
            return None
        fit = _fitting(spec, cfg, args, plan, offload_ok)
        tally["fit" if fit is plan else "fit with optimizer offload" if fit else
              "too big for the GPU" if not plan.fits_gpu else "too big for the host"] += 1
        if fit is None and name == RECOMPUTE[-1][0]:
            _keep_leanest(spec, cfg, args, plan, lean, offload_ok)
        plans[name] = fit
        return fit

    if judge(RECOMPUTE[-1][0]) is None:
        return []
    found = []
    for name, _ in RECOMPUTE:
        fit = plans[name] if name in plans else judge(name)
        if fit is not None:
            found.append(fit)
            if fit.verdict == "fits" and not fit.precision.offload:
                break           # heavier recompute would only cost time
    return found


def _keep_leanest(spec: Spec, cfg: Hy3Config, args: dict, plan: Plan, lean: list, offload_ok: bool) -> None:
    """Remember the layout with the least GPU memory (all optimizer states offloaded when allowed)."""
    if offload_ok:
        full = dict(args, optimizer_cpu_offload=True, optimizer_offload_fraction=1.0,
                    use_precision_aware_optimizer=True)
        plan = plan_recipe(_recipe(spec, full), cfg, spec.tflops, check_flags=False, timed=False)
    if not lean or plan.worst.total_gib < lean[0].worst.total_gib:
        lean[:] = [plan]


def search(spec: Spec, cfg: Hy3Config) -> Result:
    tally: Counter = Counter()
    lean: list = []
    found: list[Plan] = []
    mtp = 1 if spec.mtp else 0
    for tp, cp, pp, vpp, ep, etp in _structures(cfg, spec):
        layout = layout_args(cfg, tp, cp, pp, vpp, ep, etp, mtp)
        if layout is None:
            continue
        found += _evaluate(spec, cfg, layout, tally, lean)
    for plan in found:
        add_step_time(plan, spec.tflops)
    found.sort(key=_rank_key)
    best = []
    for plan in found:
        full = plan_recipe(plan.recipe, cfg, spec.tflops)        # the whole `hy3 plan`, flags included
        if full.ok and not full.warnings:
            best.append(full)
        if len(best) == spec.top:
            break
    reason = None if best else _why_none(spec, tally, lean[0] if lean else None)
    return Result(spec, best, tally, reason, lean[0] if lean else None)


def _rank_key(plan: Plan):
    """Layouts with headroom first (the memory model has its error bars), then by modelled step time."""
    lay = plan.layout
    return (plan.verdict != "fits", round(plan.step.seconds, 6), lay.tp, lay.pp, lay.vpp, lay.cp, lay.ep, lay.etp,
            plan.precision.offload, plan.worst.total_gib)


def _why_none(spec: Spec, tally: Counter, lean: Plan | None) -> str:
    what = f"{spec.nodes} x {spec.gpus_per_node} x {spec.gpu_memory_gb:g} GB, " \
           f"{'LoRA' if spec.lora else 'full fine-tuning'} at {spec.seq} tokens{' with MTP' if spec.mtp else ''}"
    n = sum(tally.values())
    if lean is None:
        return f"no layout fits {what}: none of the {n} layouts of the search space is valid for Megatron " \
               f"({', '.join(f'{k}: {v}' for k, v in sorted(tally.items()))})"
    text = f"no layout fits {what}: of {n} layout/recompute combinations none fits; the leanest, " \
           f"{lean.layout.describe()} with full recompute"
    if lean.precision.offload:
        text += " and every optimizer state offloaded"
    text += f", needs {lean.worst.total_gib:.1f} GiB on its fullest GPU ({lean.capacity_gib:.1f} usable)"
    if lean.fits_gpu and not lean.fits_host:
        text = text.replace("needs", "fits on the GPUs") + \
            f" but {lean.worst_node.total_gib:.0f} GiB of host memory per node ({lean.host_capacity_gib:.0f} usable)"
    if spec.host_memory_gb is None and not spec.lora:
        text += "; optimizer CPU offload was not tried: pass --host-mem GB (host RAM per node) to allow it"
    return text


# --- writing the best layout as a recipe ---------------------------------------------------------

def recipe_text(plan: Plan, spec: Spec) -> str:
    lay, t = plan.layout, plan.step
    tuner = "LoRA" if spec.lora else "full fine-tuning"
    host = f", {spec.host_memory_gb:g} GiB host memory per node" if spec.host_memory_gb else ""
    lines = [f"Hy3 {tuner} on {spec.nodes} node(s) of {spec.gpus_per_node} x {spec.gpu_memory_gb:g} GB GPUs{host}, "
             f"{spec.seq} tokens, MTP {'on' if spec.mtp else 'off'}.",
             f"Found by `hy3 plan --search`: {lay.describe()}, {recompute_name(plan.recipe.args)}"
             + (f", {offload_text(plan.precision.offload)} of the optimizer states offloaded to the host"
                if plan.precision.offload else "") + ".",
             f"Planned {plan.worst.total_gib:.1f} of {plan.capacity_gib:.1f} GiB on the fullest GPU; "
             f"step-time model ~{t.seconds:.1f} s/step (a model, not a measurement)."]
    cluster = {"nodes": spec.nodes, "gpus_per_node": spec.gpus_per_node,
               "gpu_memory_gb": int(spec.gpu_memory_gb) if spec.gpu_memory_gb == int(spec.gpu_memory_gb)
               else spec.gpu_memory_gb}
    if spec.host_memory_gb:
        cluster["host_memory_gb"] = int(spec.host_memory_gb) if spec.host_memory_gb == int(spec.host_memory_gb) \
            else spec.host_memory_gb
    body = yaml.safe_dump({"cluster": cluster, "args": plan.recipe.args}, sort_keys=False, default_flow_style=None,
                          width=120)
    return "".join(f"# {ln}\n" for ln in lines) + body


def offload_text(f: float) -> str:
    return "all" if f >= 1 else f"{f:.0%}"


def recompute_name(args: dict) -> str:
    for name, rc in RECOMPUTE:
        if all(args.get(k) == v for k, v in rc.items()):
            return f"recompute {name}"
    return "recompute as given"


def write_recipe(path: str | Path, text: str) -> None:
    write_new(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def base_from(recipe: Recipe | None, seq: int, lora: bool | None, mtp: bool | None) -> dict:
    """The arguments a search keeps: a recipe's without its layout, or the template."""
    if recipe is None:
        return template_args(seq, bool(lora), bool(mtp))
    args = {k: v for k, v in recipe.args.items() if k not in LAYOUT_KEYS}
    args["max_length"] = seq
    if mtp is not None:
        if mtp:
            args["mtp_num_layers"] = 1
            args.pop("save_missing_weights", None)
        else:
            args["mtp_num_layers"] = 0
    return args


