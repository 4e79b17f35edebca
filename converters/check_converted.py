#!/usr/bin/env python3
"""Drop-in for Tencent's `check_converted.py`: the same arguments, running `hy3 check`.

    python converters/check_converted.py DIR [--spot-check 3]

Checks every expected tensor (dense, MoE and MTP layers) against config.json, shapes, dtypes, index
consistency, and NaN/Inf in N spot-checked shards. Works on either layout. Exit 0 only when clean.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # also runs from a checkout that is not installed


def build_parser() -> argparse.ArgumentParser:
    from megatron_hy.commands.check import add_check_args

    p = argparse.ArgumentParser(prog="check_converted.py",
                                description="Validate a converted Hy3 checkpoint. Same as `hy3 check DIR`.")
    add_check_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from megatron_hy.cli import main as hy3

    a = build_parser().parse_args(argv)
    return hy3(["check", a.dir, "--spot-check", str(a.spot_check)] + (["--json"] if a.json else []))


if __name__ == "__main__":
    sys.exit(main())
