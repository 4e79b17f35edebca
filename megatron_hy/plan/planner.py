"""`hy3 plan`: check a recipe's layout against Hy3 and its cluster, count parameters, estimate GPU and host
memory and the step time. The report and JSON are in report.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import mcore_versions, settings
from ..config import Hy3Config, load_config
from ..swift.args import check_args
from ..swift.recipe import check as check_swift_model
from . import host, memory
from .cost import step_time, StepTime
from .layout import build_layout, Layout
from .params import count_params, lora_targets, ModelParams, rank_params
from .recipe import Recipe

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "assets" / "hy3_config.json"


@dataclass
class Plan:
    recipe: Recipe
    cfg: Hy3Config
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)     # what the user should know that does not affect this run
    layout: Layout | None = None
    model: ModelParams | None = None
    ranks: list = field(default_factory=list)     # RankMemory per pipeline rank
    stage_params: list = field(default_factory=list)   # RankParams per pipeline rank
    capacity_gib: float = 0.0
    nodes: list = field(default_factory=list)     # host.NodeHost, one per distinct node
    host_capacity_gib: float | None = None        # None: the recipe does not say how much the nodes have
    precision: memory.Precision | None = None
    step: StepTime | None = None

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def worst(self):
        return max(self.ranks, key=lambda r: r.total_gib) if self.ranks else None

    @property
    def worst_node(self):
        return max(self.nodes, key=lambda n: n.total_gib) if self.nodes else None

    @property
    def fits_gpu(self) -> bool:
        return bool(self.ranks) and self.worst.total_gib <= self.capacity_gib

    @property
    def fits_host(self) -> bool:
        """True when the nodes' host memory holds the run, or when the recipe does not say how much they have."""
        return self.host_capacity_gib is None or (bool(self.nodes)
                                                  and self.worst_node.total_gib <= self.host_capacity_gib)

    @property
    def fits(self) -> bool:
        return self.fits_gpu and self.fits_host

    @property
    def ok(self) -> bool:
        return self.valid and self.fits

    @property
    def verdict(self) -> str:
        if not self.valid:
            return "invalid layout"
        if not self.fits:
            where = " and ".join(w for w, ok in (("GPU", self.fits_gpu), ("host", self.fits_host)) if not ok)
            return f"does not fit ({where} memory)"
        share = self.worst.total_gib / self.capacity_gib
        return "fits (tight)" if share > memory.TIGHT else "fits"


def _hy3_moe_settings(args: dict, warnings: list[str]) -> None:
    """Hy3 routes with a sigmoid over expert-biased scores and was trained without an auxiliary loss;
    for SFT the bias stays frozen. Say so when a recipe drifts from that (names and values: the field table)."""
    lb, aux, rate, score, gemm, dispatch = map(settings.row, ("load_balancing", "aux_loss", "bias_update_rate",
                                                             "score_function", "grouped_gemm", "token_dispatcher"))
    v = args.get(lb.key("swift"))
    if (v if isinstance(v, list) else [v]) != [lb.value]:
        warnings.append(f"{lb.key('swift')} is not {lb.value!r}: mcore-bridge defaults to 'aux_loss', "
                        "but Hy3 is aux-loss-free")
    coeff = args.get(aux.key("swift"), aux.value)
    if any(c for c in (coeff if isinstance(coeff, list) else [coeff])):
        warnings.append(f"{aux.key('swift')} is not {aux.value:g}: Hy3 was trained without an auxiliary loss")
    extra_key, rate_key = rate.key("swift").split(".")
    extra = args.get(extra_key) or {}
    if isinstance(extra, str):          # ms-swift also takes the JSON text
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            extra = {}
    if extra.get(rate_key) != rate.value:
        warnings.append(f"{rate.key('swift')} is not {rate.value:g}: mcore-bridge's default 1e-3 "
                        "moves the expert bias during SFT")
    score_key = score.key("swift").split(".")[1]
    if extra.get(score_key, score.value) != score.value:
        warnings.append(f"{score.key('swift')} is not {score.value!r} (Hy3's router)")
    if args.get(gemm.key("swift")) is False:
        warnings.append(f"{gemm.key('swift')} is false: 192 experts run one GEMM each")
    name = dispatch.key("swift")
    if args.get(name, dispatch.value) != dispatch.value:
        warnings.append(f"{name} is {args[name]!r}; the recipes use {dispatch.value}")


def _known_megatron_bugs(args: dict, notes: list[str], version: str | None = None) -> None:
    """Bugs of the installed megatron-core (mcore_versions.BUGS) that these settings would meet in plain
    megatron-core; a note, since `megatron sft` runs through mcore-bridge, which replaces the code concerned."""
    version = version or mcore_versions.installed()
    for bug in mcore_versions.bugs_for(mcore_versions.recipe_triggers(args), version):
        notes.append(f"megatron-core {version} (installed; fixed in {bug.fixed}): {bug.what}; "
                        f"{mcore_versions.SWIFT_NOT_AFFECTED}")


def plan_recipe(recipe: Recipe, cfg: Hy3Config | None = None, tflops: float | None = None,
                check_flags: bool = True, timed: bool = True) -> Plan:
    """Check a recipe and estimate its memory (GPU and host) and step time. The search passes
    check_flags=False (it checks its winners in full) and timed=False (it times only what fits)."""
    cfg = cfg or load_config(DEFAULT_CONFIG)
    plan = Plan(recipe, cfg)
    args = recipe.args
    if check_flags:
        plan.errors += check_args(args, "sft", where=f"{recipe.path}: args", lines=recipe.lines)
    plan.errors += check_swift_model(args, cfg)
    plan.capacity_gib = memory.capacity_gib(recipe.cluster.gpu_memory_gb)
    plan.host_capacity_gib = host.host_capacity_gib(recipe.cluster.host_memory_gb)
    _hy3_moe_settings(args, plan.warnings)
    _known_megatron_bugs(args, plan.notes)
    lay = build_layout(cfg, args, recipe.cluster.world_size, plan.errors, plan.warnings)
    plan.layout = lay
    plan.model = count_params(cfg)
    lora = args.get("tuner_type", "full") != "full"
    if lora and lay and lay.etp > 1:
        plan.errors.append("LoRA does not support expert_tensor_parallel_size > 1 (mcore-bridge raises); use 1")
    if lay is None or not lay.chunks or lay.edp < 1 or cfg.num_experts % lay.ep or lay.mtp > cfg.num_mtp_layers:
        return plan      # sizes that do not even tile the GPUs: no per-GPU memory to speak of
    try:
        plan.precision = memory.precision_from_args(args)
    except KeyError as e:
        plan.errors.append(f"unknown dtype {e} in main_grads_dtype/main_params_dtype/exp_avg_dtype/exp_avg_sq_dtype")
        return plan
    _offload_rules(args, plan)
    _estimate(plan, lora)
    if timed:
        add_step_time(plan, tflops)
    return plan


def _offload_rules(args: dict, plan: Plan) -> None:
    f = args.get("optimizer_offload_fraction", 1.0)
    if args.get("optimizer_cpu_offload") and not (isinstance(f, (int, float)) and 0 <= f <= 1):
        plan.errors.append(f"optimizer_offload_fraction must be between 0 and 1, got {f!r}")
    if args.get("optimizer_cpu_offload") and args.get("tuner_type", "full") != "full":
        plan.warnings.append("optimizer_cpu_offload with LoRA: the adapters' optimizer states are tiny; "
                             "offloading them only slows the step")
    if plan.precision.offload and not plan.precision.distributed:
        plan.errors.append("optimizer_cpu_offload is modelled with the distributed optimizer only "
                           "(use_distributed_optimizer: true)")


def _estimate(plan: Plan, lora: bool) -> None:
    """Per-stage parameters and memory, and per-node host memory."""
    cfg, lay, args, cluster = plan.cfg, plan.layout, plan.recipe.args, plan.recipe.cluster
    rank = int(args.get("lora_rank", 8)) if lora else 0
    if lora and args.get("target_regex"):
        plan.warnings.append("target_regex: adapter memory is estimated as if every linear were targeted")
    targets = lora_targets(args)
    for p in range(lay.pp):
        rp = rank_params(plan.model, lay, p, rank, targets, vocab=cfg.vocab_size)
        plan.stage_params.append(rp)
        plan.ranks.append(memory.rank_memory(cfg, plan.model, lay, rp, args, plan.precision, lora))
    if lay.world % cluster.gpus_per_node == 0:
        plan.nodes = host.node_hosts(lay, plan.ranks, cluster.gpus_per_node, args)
    if plan.precision.offload and plan.host_capacity_gib is None and plan.nodes:
        plan.warnings.append(f"optimizer_cpu_offload keeps {plan.worst_node.total_gib:.0f} GiB on the host of the "
                             f"fullest node: set cluster.host_memory_gb (or --host-mem) to check that it fits")


def add_step_time(plan: Plan, tflops: float | None = None) -> None:
    """The step-time model (cost.py) for a plan whose memory has been estimated."""
    if not plan.ranks:
        return
    cluster, args = plan.recipe.cluster, plan.recipe.args
    lora = args.get("tuner_type", "full") != "full"
    plan.step = step_time(plan.cfg, plan.model, plan.layout, plan.stage_params, plan.ranks, args,
                          cluster.gpu_memory_gb, cluster.gpus_per_node, plan.precision.offload, plan.precision.grad,
                          lora, tflops=tflops)
