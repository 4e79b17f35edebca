"""`hy3 check`: validate an HF Hy3 checkpoint against its config."""

from __future__ import annotations

from ..fields import COUNT


def add_check_args(p) -> None:
    p.add_argument("dir", metavar="DIR", help="checkpoint directory (inner or outer layout)")
    p.add_argument("--spot-check", type=COUNT, default=3, metavar="N",
                   help="number of shard files whose tensors are read and checked for NaN/Inf (default 3, 0 = none)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")


def register(sub) -> None:
    p = sub.add_parser("check", help="validate a checkpoint against its config",
                       description="Validate an HF Hy3 checkpoint in either layout against its config.json: every "
                                   "expected tensor (dense, MoE and MTP layers) present, nothing unexpected, shapes "
                                   "and dtypes, index consistency (missing, empty or orphan shards, keys not in "
                                   "their file), and NaN/Inf in spot-checked shards. Exit 0 only when clean.")
    add_check_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..check import check_checkpoint, format_report, report_json

    rep = check_checkpoint(args.dir, spot_check=args.spot_check)
    print(report_json(rep) if args.json else format_report(rep))
    return 0 if rep.ok else 1
