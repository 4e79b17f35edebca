"""`hy3 demo`: run the whole pipeline on a tiny generated Hy3."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on a tiny generated Hy3 (CPU, no network)",
                       description="Make a tiny Hy3, convert it between layouts and formats, check it, verify "
                                   "it numerically against transformers, and print what ran, how long each step "
                                   "took and what was verified. Needs no GPU and no network.")
    p.add_argument("--workdir", help="keep all outputs in this (new or empty) directory")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    return run_demo(args.workdir, keep=args.keep)
