#!/usr/bin/env python3
"""Drop-in for Tencent's `convert_ckpt_to_outer.py`: the same flags, running `hy3 convert inner-to-outer`.

    python converters/convert_ckpt_to_outer.py --input_dir IN --output_dir OUT [--workers 8]

Scripts written for the reference tool keep working; the conversion is this package's streaming one
(byte-range copies, bounded memory, output renamed into place when complete, resumable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # also runs from a checkout that is not installed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert_ckpt_to_outer.py",
        description="Convert a Hy3 checkpoint from the published per-expert (inner) layout to fused 3D experts "
                    "(outer). Same as `hy3 convert inner-to-outer IN OUT`.")
    p.add_argument("--input_dir", required=True, help="original checkpoint directory (inner layout)")
    p.add_argument("--output_dir", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--workers", type=int, default=8, help="shards written in parallel (default 8)")
    p.add_argument("--max_shard_size", default="5GB", help="largest output shard, e.g. 5GB (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR once the new one is complete")
    return p


def main(argv: list[str] | None = None) -> int:
    from megatron_hy.cli import main as hy3

    a = build_parser().parse_args(argv)
    args = ["convert", "inner-to-outer", a.input_dir, a.output_dir, "--workers", str(a.workers),
            "--max-shard-size", a.max_shard_size]
    return hy3(args + (["--overwrite"] if a.overwrite else []))


if __name__ == "__main__":
    sys.exit(main())
