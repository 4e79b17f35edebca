"""`hy3 plan RECIPE`: check a training recipe's layout and memory before it reaches a cluster;
`hy3 plan --search`: find the layouts that fit a cluster, best first."""

from __future__ import annotations

import json

from ..config import load_config
from ..errors import Hy3Error
from ..fields import POSITIVE_FLOAT, POSITIVE_INT
from ..plan import format_plan, load_recipe, plan_json, plan_recipe, with_overrides
from ..plan.files import check_new
from ..plan.planner import DEFAULT_CONFIG
from ..plan.plot import plot_plan, plot_search
from ..plan.recipe import bundled_recipes, parse_override
from ..plan.search import base_from, recipe_text, search, Spec, write_recipe
from ..plan.search_report import format_search, search_dict
from ..progress import log
from .common import add_json, add_model_flag, emit

RECIPE_HELP = ("recipe YAML, or the name of a bundled recipe (`hy3 plan --list`; found from any directory)")


def add_cluster_args(p) -> None:
    p.add_argument("--nodes", type=POSITIVE_INT, metavar="N", help="number of nodes (default: the recipe's cluster.nodes)")
    p.add_argument("--gpus-per-node", type=POSITIVE_INT, metavar="G",
                   help="GPUs per node (default: the recipe's cluster.gpus_per_node)")
    p.add_argument("--gpu-mem", type=POSITIVE_FLOAT, metavar="GB",
                   help="memory per GPU as sold, e.g. 80 (H100/H800/A100-80G), 96 (H20), 141 (H200) "
                        "(default: the recipe's cluster.gpu_memory_gb)")
    p.add_argument("--host-mem", type=POSITIVE_FLOAT, metavar="GB",
                   help="host RAM per node, in GiB as `free -g` reports it, e.g. 2048; the verdict then covers "
                        "host memory too (default: the recipe's cluster.host_memory_gb, else not checked)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one `megatron sft` argument of the recipe, value in YAML "
                        "(e.g. --set max_length=8192 --set recompute_modules=[core_attn,moe]); repeatable")


def register(sub) -> None:
    p = sub.add_parser(
        "plan", help="check a recipe's parallel layout and per-GPU memory, or search the layouts for a cluster",
        description="Check a `megatron sft` recipe for Hy3 against the cluster it names: every argument is one "
                    "ms-swift accepts; world = TP*PP*CP*DP; expert parallelism against the data-parallel ranks; "
                    "layers (and MTP) per pipeline stage; global batch against micro batch*DP; heads per tensor "
                    "rank; context parallelism against the sequence length. Then count parameters per GPU and "
                    "estimate memory on the GPU (weights, gradients, distributed-optimizer states, activations "
                    "for the recompute setting, with a stated calibration factor) and on the host (offloaded "
                    "optimizer states, processes, dataloader), and a modelled step time (see docs/training.md). "
                    "Exit 0 when the layout is valid and fits, 1 otherwise. With --search, enumerate the layouts "
                    "of a cluster instead, keep those that fit and print the best by the step-time model "
                    "(exit 0 when one fits).")
    p.add_argument("recipe", metavar="RECIPE", nargs="?",
                   help=RECIPE_HELP + "; with --search, optional: its cluster and non-layout arguments are the "
                                      "starting point")
    add_cluster_args(p)
    add_model_flag(p, "the Hy3 checkpoint directory (or its config.json) to plan for (default: the bundled "
                      "config of the published Hy3)", aliases=("--hf-config",))
    p.add_argument("--list", action="store_true", help="list the bundled recipes (name, cluster, what they train)")
    add_json(p, "print one JSON object (valid, errors, params_by_stage with exact counts, memory per rank, "
                "host per node, step_time_model, ...; with --search: layouts best first, or reason; with --list: "
                "the recipes) instead of the report")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw per-GPU memory by kind against the GPU's capacity and the fullest node's host "
                        "memory (for --search: the top layouts side by side); a new file")
    p.add_argument("--gpu-tflops", type=POSITIVE_FLOAT, metavar="T",
                   help="peak dense bf16 TFLOP/s per GPU for the step-time model (default by memory size: "
                        "80 -> 989 H100, 96 -> 148 H20, 141 -> 989 H200; an A100-80G is 312)")
    p.add_argument("--measured-step", type=POSITIVE_FLOAT, metavar="SECONDS",
                   help="a real run's median seconds per step for this recipe: also print the MFU that makes the "
                        "step-time model match it (see docs/training.md, re-fitting the step-time model)")
    s = p.add_argument_group("search")
    s.add_argument("--search", action="store_true", help="search the layouts for the cluster given by the flags")
    s.add_argument("--seq", type=POSITIVE_INT, metavar="L", help="sequence length (max_length) to search for")
    s.add_argument("--lora", action="store_true", help="LoRA (attention adapters, rank 16) instead of full fine-tuning")
    s.add_argument("--mtp", action="store_true", help="train the MTP layer too")
    s.add_argument("--top", type=POSITIVE_INT, default=10, metavar="N", help="layouts to print (default 10)")
    s.add_argument("--write-recipe", metavar="FILE",
                   help="write the best layout as a recipe (a new file) that `hy3 plan FILE` passes")
    p.set_defaults(func=run)


def load_planned(args):
    recipe = with_overrides(load_recipe(args.recipe), args.set, args.nodes, args.gpus_per_node, args.gpu_mem,
                            getattr(args, "host_mem", None))
    cfg = load_config(args.model) if args.model else None
    return plan_recipe(recipe, cfg, getattr(args, "gpu_tflops", None))


def _check_new_file(args, path: str | None, suffix: str | None = None) -> None:
    """Refuse an output file name before any work is done (it is checked again when written)."""
    if path is not None:
        check_new(path, suffix, [args.recipe, args.model])


def run_list(args) -> int:
    rows = []
    for path in bundled_recipes():
        r = load_recipe(path)
        c = r.cluster
        rows.append({"name": r.name, "path": str(path), "nodes": c.nodes, "gpus_per_node": c.gpus_per_node,
                     "gpu_memory_gb": c.gpu_memory_gb, "tuner_type": r.args.get("tuner_type", "full"),
                     "max_length": r.args.get("max_length"), "mtp_num_layers": r.args.get("mtp_num_layers"),
                     "description": r.description.splitlines()[0] if r.description else ""})
    text = "\n".join(f"{d['name']:<28} {d['nodes']:>2} x {d['gpus_per_node']} x {d['gpu_memory_gb']:>3g} GB  "
                      f"{d['description']}" for d in rows)
    emit(args, {"recipes": rows}, text + "\n(give a name to `hy3 plan`, `hy3 launch` or `hy3 plan --search`)")
    return 0


def run(args) -> int:
    if args.list:
        if args.recipe or args.search:
            raise Hy3Error("--list takes no RECIPE and no --search")
        return run_list(args)
    _check_new_file(args, args.plot, ".png")
    if args.search:
        return run_search(args)
    if args.recipe is None:
        raise Hy3Error("hy3 plan: give a RECIPE, or --search with --nodes, --gpus-per-node, --gpu-mem and --seq")
    for flag in ("seq", "lora", "mtp", "write_recipe"):
        if getattr(args, flag):
            raise Hy3Error(f"--{flag.replace('_', '-')} belongs to --search")

    plan = load_planned(args)
    if args.measured_step is not None:
        return _refit(plan, args)
    print(plan_json(plan) if args.json else format_plan(plan))
    if args.plot and plan.ranks:
        plot_plan(plan, args.plot)
        log(f"wrote {args.plot}: per-GPU memory of every pipeline rank and the fullest node's host memory")
    return 0 if plan.ok else 1


def _search_spec(args):
    """The search's cluster and base arguments: the flags, over the recipe's when one is given."""
    recipe = load_recipe(args.recipe) if args.recipe else None
    if recipe is not None:
        if args.lora:
            raise Hy3Error("--lora with a RECIPE: the recipe's tuner_type decides; drop one of them")
        recipe = with_overrides(recipe, args.set, args.nodes, args.gpus_per_node, args.gpu_mem, args.host_mem)
        c = recipe.cluster
        nodes, gpus, mem, host = c.nodes, c.gpus_per_node, c.gpu_memory_gb, c.host_memory_gb
        seq = args.seq or recipe.args.get("max_length")
        lora = recipe.args.get("tuner_type", "full") != "full"
    else:
        nodes, gpus, mem, host, seq, lora = args.nodes, args.gpus_per_node, args.gpu_mem, args.host_mem, args.seq, \
            args.lora
    missing = [f for f, v in (("--nodes", nodes), ("--gpus-per-node", gpus), ("--gpu-mem", mem), ("--seq", seq))
               if v is None]
    if missing:
        raise Hy3Error(f"--search needs {', '.join(missing)} (or a RECIPE that states them)")
    for flag, v in (("--nodes", nodes), ("--gpus-per-node", gpus), ("--gpu-mem", mem), ("--seq", seq),
                    ("--top", args.top), ("--host-mem", host if host is not None else 1)):
        if v <= 0:
            raise Hy3Error(f"{flag}: expected a positive number, got {v:g}")
    mtp = True if args.mtp else (None if recipe is not None else False)
    base = base_from(recipe, int(seq), lora, mtp)
    if recipe is None:
        base.update(dict(parse_override(item) for item in args.set))
    return Spec(int(nodes), int(gpus), float(mem), int(seq), lora, bool(base.get("mtp_num_layers")), host,
                args.gpu_tflops, args.top, base)


def _refit(plan, args) -> int:
    if not plan.step:
        raise Hy3Error(f"{plan.recipe.path}: {plan.verdict}; no step-time model to re-fit")
    if args.measured_step <= 0:
        raise Hy3Error(f"--measured-step: expected a positive number of seconds, got {args.measured_step:g}")
    mfu = plan.step.refit_mfu(args.measured_step)
    d = {"recipe": plan.recipe.path, "modelled_seconds": round(plan.step.seconds, 3),
         "measured_seconds": args.measured_step, "mfu": plan.step.mfu, "refit_mfu": mfu and round(mfu, 4)}
    if args.json:
        print(json.dumps(d, indent=2))
    elif mfu is None:
        print(f"modelled {plan.step.seconds:.2f} s/step, measured {args.measured_step:g}: the modelled communication "
              f"and optimizer time alone exceed the measurement; lower the bandwidth constants' error first "
              f"(megatron_hy/plan/cost.py)")
    else:
        print(f"modelled {plan.step.seconds:.2f} s/step at MFU {plan.step.mfu:g}; measured {args.measured_step:g} s/step "
              f"-> MFU {mfu:.3f} reproduces it (set CostModel.mfu in megatron_hy/plan/cost.py)")
    return 0


def run_search(args) -> int:
    _check_new_file(args, args.write_recipe)
    spec = _search_spec(args)
    result = search(spec, load_config(args.model or DEFAULT_CONFIG))
    wrote = None
    if args.write_recipe and result.layouts:
        write_recipe(args.write_recipe, recipe_text(result.layouts[0], spec))
        wrote = args.write_recipe
    if args.plot and result.layouts:
        plot_search(result.layouts, args.plot, f"{spec.nodes} x {spec.gpus_per_node} x {spec.gpu_memory_gb:g} GB")
    d = search_dict(result)
    d["recipe_written"] = wrote
    emit(args, d, format_search(result))
    if wrote:
        log(f"wrote {wrote}: the best layout as a recipe; check it with `hy3 plan {wrote}`")
    if args.plot and result.layouts:
        log(f"wrote {args.plot}: the fullest GPU and node of the top {len(result.layouts)} layouts")
    return 0 if result.layouts else 1
