"""`hy3 convert DIRECTION ...`: checkpoint conversions."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert checkpoints between layouts and formats",
                       description="Convert Hy3 checkpoints. Every direction streams with bounded memory, writes "
                                   "to OUT.partial and renames at the end, and resumes when rerun after a kill.")
    d = p.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    for name, to, what in (("inner-to-outer", "outer", "per-expert (published) layout to fused 3D experts"),
                           ("outer-to-inner", "inner", "fused 3D experts to the per-expert (published) layout")):
        q = d.add_parser(name, help=what, description=f"Convert an HF Hy3 checkpoint from the {what}. "
                                                       "Tensors are copied byte for byte; config, tokenizer and "
                                                       "other files are carried over.")
        q.add_argument("input", metavar="IN", help="input checkpoint directory")
        q.add_argument("output", metavar="OUT", help="output directory (must not exist unless --overwrite)")
        q.add_argument("--workers", type=int, default=8, help="shards written in parallel (default 8)")
        q.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB or 500MB (default 5GB)")
        q.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (only once the new one is complete)")
        q.add_argument("--quiet", action="store_true", help="no progress output")
        q.set_defaults(func=run_layout, to=to)


def run_layout(args) -> int:
    from ..layout_convert import convert_layout

    convert_layout(args.input, args.output, args.to, workers=args.workers, max_shard_size=args.max_shard_size,
                   overwrite=args.overwrite, quiet=args.quiet)
    return 0
