"""`hy3 launch RECIPE`: run `megatron sft` (or `megatron export`) for a recipe on one node or many."""

from __future__ import annotations

from ..fields import PORT, POSITIVE_FLOAT, integer
from .common import add_json, add_model_flag, emit
from .plan import RECIPE_HELP, add_cluster_args


def register(sub) -> None:
    p = sub.add_parser(
        "launch", help="run megatron sft for a recipe on one node or many (checked by the planner first)",
        description="Build the exact `megatron sft` command and environment for every node of a recipe, check the "
                    "recipe with `hy3 plan` first, and run this node's share (or print every node's command with "
                    "--dry-run). Nodes come from IP_LIST (rank = position of this machine's address; no SSH: run the "
                    "same command on every node), from NNODES/NODE_RANK/MASTER_ADDR, or from Slurm (srun, one task "
                    "per node). NCCL settings: see megatron_hy/launch.py, NCCL_ENV; the recipe's `env:` adds to them. "
                    "A dry run checks what a run checks (the model directory: config, tokenizer, inner layout; the "
                    "datasets exist and are not empty; the output directory; IP_LIST; the plan, for --model's own "
                    "config); a real run also checks that this node sees cluster.gpus_per_node GPUs.")
    p.add_argument("recipe", metavar="RECIPE", help=RECIPE_HELP)
    add_model_flag(p, "Hy3 checkpoint in the published (inner) layout: config (the plan uses it), tokenizer and, "
                      "without --mcore-model, the weights (read through mcore-bridge) -> --model",
                   aliases=("--hf-config",))
    p.add_argument("--mcore-model", metavar="DIR",
                   help="Megatron-Core checkpoint to start from (from `hy3 convert hf-to-mcore`) -> --mcore_model")
    p.add_argument("--mcore-adapter", metavar="DIR", help="LoRA adapter checkpoint (resume, or export) -> --mcore_adapter")
    p.add_argument("--dataset", nargs="+", metavar="DATA",
                   help="training data. Hy3 rows (.jsonl/.json) are encoded into OUTPUT_DIR/hy3-data/ by node 0 "
                        "(`hy3 data encode --swift-dataset`, so reasoning_effort and reasoning_content reach the "
                        "loss) and passed as --cached_dataset with --template hy3; a directory from `hy3 data encode "
                        "--swift-dataset` -> --cached_dataset; anything else (dataset ids) -> --dataset")
    p.add_argument("--data-timeout", type=POSITIVE_FLOAT, default=7200, metavar="S",
                   help="how long nodes other than node 0 wait for the encoded dataset (default 7200 s)")
    p.add_argument("--output-dir", metavar="DIR",
                   help="where checkpoints go; must be the same shared path on every node -> --output_dir")
    p.add_argument("--export", choices=("to-hf", "to-mcore"),
                   help="run `megatron export --to_hf/--to_mcore` with the recipe's parallel sizes instead of training")
    p.add_argument("--launcher", choices=("auto", "single", "ip-list", "env", "slurm"), default="auto",
                   help="where the node list comes from (default auto: IP_LIST, then Slurm, then one node, then "
                        "NNODES/MASTER_ADDR)")
    p.add_argument("--ip-list", metavar="IP1,IP2,...", help="node addresses, master first (default: $IP_LIST)")
    p.add_argument("--master-port", type=PORT, metavar="PORT",
                   help="rendezvous port on the master (default: $MASTER_PORT or 29500)")
    p.add_argument("--dry-run", action="store_true", help="print every node's command and environment; run nothing")
    add_json(p, "with --dry-run: print the nodes' commands and environments (and the data encoding) as one JSON "
                "object")
    p.add_argument("--skip-plan", action="store_true",
                   help="launch even when `hy3 plan` says the layout is invalid or does not fit")
    add_cluster_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    import shutil
    import sys

    from ..errors import Hy3Error
    from ..launch import (check_dataset, check_gpus, check_model_dir, check_output_dir, format_dry_run, megatron_argv,
                          node_commands, resolve_cluster)
    from ..launch_data import encode_all, plan_data, template_for, wait_for
    from ..plan import format_plan, load_recipe, plan_recipe, with_overrides
    from ..plan.swift_args import check_args

    if args.json and not args.dry_run:
        raise Hy3Error("--json goes with --dry-run (a real run execs megatron)")
    recipe = with_overrides(load_recipe(args.recipe), args.set, args.nodes, args.gpus_per_node, args.gpu_mem,
                            args.host_mem)
    if recipe.args.get("max_length") is not None:  # 0 would mean "no limit" to the encoder, not what was asked
        integer(recipe.args["max_length"], f"{recipe.path}: args", "max_length", lo=1)
    data = plan_data(args.dataset, args.output_dir, recipe.args) if not args.export else plan_data([], None, {})
    paths = {"model": args.model, "mcore_model": args.mcore_model, "mcore_adapter": args.mcore_adapter,
             **(data.flags() if not args.export else {"dataset": args.dataset}), "output_dir": args.output_dir}
    command = "export" if args.export else "sft"
    flags = dict(recipe.args, **{k: v for k, v in paths.items() if v})
    if args.export:
        problems = check_args({k: v for k, v in paths.items() if v}, "export", where="hy3 launch")
        if not args.mcore_model and not args.model:
            problems.append("--export needs --mcore-model (to-hf) or --model (to-mcore)")
    else:
        problems = check_args(flags, "sft", where=f"{recipe.path}: args", lines=recipe.lines)
        if not flags.get("model"):
            problems.append("no model: pass --model HF_DIR (config and tokenizer are read from it)")
        if not (flags.get("dataset") or flags.get("cached_dataset")):
            problems.append("no training data: pass --dataset FILE.jsonl (or set dataset in the recipe)")
        if data.problem:
            problems.append(data.problem)
    if problems:
        raise Hy3Error(f"`megatron {command}` would reject this: " + "; ".join(problems))

    # pre-flight: what a real run checks, a dry run checks too (GPUs aside)
    cfg = check_model_dir(args.model, need_weights=not args.mcore_model) if args.model else None
    for flag, d in (("--mcore-model", args.mcore_model), ("--mcore-adapter", args.mcore_adapter)):
        if d and not os.path.isdir(d):
            raise Hy3Error(f"{flag} {d}: no such directory (expected a Megatron torch_dist checkpoint)")
    for d in args.dataset or []:
        check_dataset(d)
    if args.output_dir:  # ms-swift writes there: never into an input (outputs.py); ids of the hub are no paths
        check_output_dir(args.output_dir, [args.model, args.mcore_model, args.mcore_adapter, *(args.dataset or [])])
    if not args.export and "template" not in recipe.args:
        # the plugin's template: it trains a row's reasoning_effort and reasoning_content (ms-swift's hy_v3 drops them)
        paths["template"] = template_for(args.model)
    argv = megatron_argv(recipe, paths, args.export)
    if not args.export and not args.skip_plan:
        plan = plan_recipe(recipe, cfg)
        if not plan.ok:
            print(format_plan(plan), file=sys.stderr)
            what = f"{args.model}'s config.json" if cfg else "the bundled Hy3 config"
            raise Hy3Error(f"{recipe.path}: {plan.verdict} (planned for {what}); fix the recipe (see the plan above) "
                           f"or pass --skip-plan")
        for kind, lines in (("warning", plan.warnings), ("note", plan.notes)):
            for line in lines:
                print(f"hy3 launch: {kind}: {line}", file=sys.stderr)

    cluster = resolve_cluster(args.launcher, recipe.cluster.nodes, dict(os.environ), args.ip_list, args.master_port)
    cmds = node_commands(recipe, cluster, argv)
    if args.dry_run:
        encode = data.describe(args.model) if data.encodings else []
        if args.json:
            emit(args, {"recipe": recipe.path, "encode_first": encode,
                        "nodes": [{"rank": c.rank, "host": c.host, "env": c.env, "argv": c.argv} for c in cmds]})
            return 0
        if encode:
            print("# node 0 first encodes the Hy3 rows into the run's directory (the other nodes wait for them):\n"
                  + "\n".join("# " + line for line in encode) + "\n")
        print(format_dry_run(cmds))
        return 0
    if cluster.this_rank is None:
        raise Hy3Error(f"cannot tell which node this is among {', '.join(h for h in cluster.hosts if h)}: "
                       f"set LOCAL_IP or NODE_RANK")
    if not shutil.which(argv[0]):
        raise Hy3Error(f"`{argv[0]}` is not on PATH; install ms-swift (see Dockerfile) on every node")
    check_gpus(recipe.cluster.gpus_per_node, dict(os.environ))
    if data.encodings:
        if cluster.this_rank == 0:
            encode_all(data, args.model)
        else:
            wait_for(data, args.data_timeout)
    mine = cmds[cluster.this_rank]
    print(f"hy3 launch: node {mine.rank} of {len(cmds)}\n{mine.shell()}", file=sys.stderr, flush=True)
    env = dict(os.environ, **mine.env)
    os.execvpe(mine.argv[0], mine.argv, env)
    return 0  # not reached
