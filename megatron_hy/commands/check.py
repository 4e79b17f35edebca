"""`hy3 check`: validate an HF Hy3 checkpoint against its config."""

from __future__ import annotations

from ..check import check_checkpoint, format_report, report_json
from ..fields import COUNT
from .common import add_json, add_model_operand, model_operand


def add_check_args(p, spot_check: int | None = None) -> None:
    """`spot_check`: the default of --spot-check (None: every shard; Tencent's check_converted.py keeps 3)."""
    add_model_operand(p, "dir", "DIR", "checkpoint directory (inner or outer layout)")
    every = "every shard" if spot_check is None else f"{spot_check} shards"
    p.add_argument("--spot-check", type=COUNT, default=spot_check, metavar="N",
                   help=f"read only N shard files (spread over the checkpoint) for NaN/Inf instead of all; "
                        f"0 = none (default: {every})")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_json(p, "print one JSON object instead of the report")


def register(sub) -> None:
    p = sub.add_parser("check", help="validate a checkpoint against its config",
                       description="Validate an HF Hy3 checkpoint in either layout against its config.json: every "
                                   "expected tensor (dense, MoE and MTP layers) present, nothing unexpected, shapes "
                                   "and dtypes, index consistency (missing, empty or orphan shards, keys not in "
                                   "their file), and NaN/Inf in every floating-point tensor of every shard, read "
                                   "in bounded chunks with progress (--spot-check N reads N shards only). The "
                                   "result line says how much was read. Exit 0 only when clean.")
    add_check_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    rep = check_checkpoint(model_operand(args, "dir", "DIR"), spot_check=args.spot_check, quiet=args.quiet)
    print(report_json(rep) if args.json else format_report(rep))
    return 0 if rep.ok else 1
