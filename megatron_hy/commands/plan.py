"""`hy3 plan RECIPE`: check a training recipe's layout and memory before it reaches a cluster."""

from __future__ import annotations


def add_cluster_args(p) -> None:
    p.add_argument("--nodes", type=int, metavar="N", help="number of nodes (default: the recipe's cluster.nodes)")
    p.add_argument("--gpus-per-node", type=int, metavar="G",
                   help="GPUs per node (default: the recipe's cluster.gpus_per_node)")
    p.add_argument("--gpu-mem", type=float, metavar="GB",
                   help="memory per GPU as sold, e.g. 80 (H100/H800/A100-80G), 96 (H20), 141 (H200) "
                        "(default: the recipe's cluster.gpu_memory_gb)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one `megatron sft` argument of the recipe, value in YAML "
                        "(e.g. --set max_length=8192 --set recompute_modules=[core_attn,moe]); repeatable")
    p.add_argument("--hf-config", metavar="PATH",
                   help="Hy3 config.json (or a checkpoint directory holding one) to plan for "
                        "(default: the bundled config of the published Hy3)")


def register(sub) -> None:
    p = sub.add_parser(
        "plan", help="check a recipe's parallel layout and per-GPU memory",
        description="Check a `megatron sft` recipe for Hy3 against the cluster it names: every argument is one "
                    "ms-swift accepts; world = TP*PP*CP*DP; expert parallelism against the data-parallel ranks; "
                    "layers (and MTP) per pipeline stage; global batch against micro batch*DP; heads per tensor "
                    "rank; context parallelism against the sequence length. Then count parameters per GPU and "
                    "estimate memory (weights, gradients, distributed-optimizer states, activations for the "
                    "recompute setting, with a stated calibration factor; see docs/training.md). "
                    "Exit 0 when the layout is valid and fits, 1 otherwise.")
    p.add_argument("recipe", metavar="RECIPE", help="recipe YAML (see recipes/)")
    add_cluster_args(p)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (valid, errors, params_total, params_per_gpu_max, "
                        "memory_per_gpu_gb, per-rank breakdown, ...) instead of the report")
    p.set_defaults(func=run)


def load_planned(args):
    from ..config import load_config
    from ..plan import load_recipe, plan_recipe, with_overrides

    recipe = with_overrides(load_recipe(args.recipe), args.set, args.nodes, args.gpus_per_node, args.gpu_mem)
    cfg = load_config(args.hf_config) if args.hf_config else None
    return plan_recipe(recipe, cfg)


def run(args) -> int:
    from ..plan import format_plan, plan_json

    plan = load_planned(args)
    print(plan_json(plan) if args.json else format_plan(plan))
    return 0 if plan.ok else 1
