"""`hy3 demo`: run the whole pipeline on a tiny generated Hy3."""

from __future__ import annotations

import json
import sys

from ..demo import run_demo


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on a tiny generated Hy3 (CPU, no network)",
                       description="Make a tiny Hy3, convert it between layouts and formats, check it, verify "
                                   "it numerically against transformers, and print what ran, how long each step "
                                   "took and what was verified. Needs no GPU and no network.")
    p.add_argument("--workdir", help="keep all outputs in this (new or empty) directory")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument("--json", action="store_true",
                   help="print the steps (name, seconds, status, what was verified) as one JSON object on stdout; "
                        "the running report goes to stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    if not args.json:
        return run_demo(args.workdir, keep=args.keep)
    rows: list = []
    rc = run_demo(args.workdir, keep=args.keep, out=lambda line: print(line, file=sys.stderr, flush=True), rows=rows)
    print(json.dumps({"ok": rc == 0, "steps": [{"name": n, "seconds": round(s, 2), "status": st, "what": w}
                                               for n, s, st, w in rows]}, indent=2))
    return rc
