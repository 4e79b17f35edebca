"""`hy3 launch RECIPE`: run `megatron sft` (or `megatron export`) for a recipe on one node or many."""

from __future__ import annotations

import os

from ..errors import Hy3Error
from ..fields import PORT, POSITIVE_FLOAT
from ..launch import format_dry_run, prepare_launch, start_node
from ..plan.recipe import load_recipe, with_overrides
from .common import add_json, add_model_flag, emit
from .plan import add_cluster_args, RECIPE_HELP


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
    if args.json and not args.dry_run:
        raise Hy3Error("--json goes with --dry-run (a real run execs megatron)")
    recipe = with_overrides(load_recipe(args.recipe), args.set, args.nodes, args.gpus_per_node, args.gpu_mem,
                            args.host_mem)
    launch = prepare_launch(recipe, dict(os.environ), model=args.model, mcore_model=args.mcore_model,
                            mcore_adapter=args.mcore_adapter, datasets=args.dataset, output_dir=args.output_dir,
                            export=args.export, launcher=args.launcher, ip_list=args.ip_list,
                            master_port=args.master_port, skip_plan=args.skip_plan)
    if not args.dry_run:
        start_node(launch, dict(os.environ), args.data_timeout)   # execs megatron: does not return
        return 0
    encode = launch.data.describe(args.model) if launch.data.encodings else []
    if args.json:
        emit(args, {"recipe": recipe.path, "encode_first": encode,
                    "nodes": [{"rank": c.rank, "host": c.host, "env": c.env, "argv": c.argv} for c in launch.cmds]})
        return 0
    if encode:
        print("# node 0 first encodes the Hy3 rows into the run's directory (the other nodes wait for them):\n"
              + "\n".join("# " + line for line in encode) + "\n")
    print(format_dry_run(launch.cmds))
    return 0
