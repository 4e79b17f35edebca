"""The package side of `converters/`: each script there is a few lines over one function here.

Tencent's two tools keep their own flags (`convert_ckpt_to_outer.py --input_dir ...`,
`check_converted.py DIR`) and run `hy3 convert inner-to-outer` and `hy3 check`. The other scripts
are one `hy3` subcommand each, under the script's name: `hf_to_mcore.py` is `hy3 convert hf-to-mcore`,
`mcore_to_hf.py` is `hy3 convert mcore-to-hf`, `merge_lora.py` is `hy3 lora merge`.
"""

from __future__ import annotations

import argparse

from .cli import main as hy3
from .commands.check import add_check_args
from .outputs import OUT_DIR_HELP, OVERWRITE_DIR_HELP


def hy3_command(command: tuple[str, ...], prog: str, argv: list[str] | None = None) -> int:
    """One `hy3` subcommand with its own flags, its usage and errors under the name `prog`."""
    return hy3(argv, command=command, prog=prog)


# --- Tencent's convert_ckpt_to_outer.py ----------------------------------------------------------

def convert_ckpt_to_outer_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert_ckpt_to_outer.py",
        description="Convert a Hy3 checkpoint from the published per-expert (inner) layout to fused 3D experts "
                    "(outer). Same as `hy3 convert inner-to-outer IN OUT`.")
    p.add_argument("--input_dir", required=True, help="original checkpoint directory (inner layout)")
    p.add_argument("--output_dir", required=True, help=OUT_DIR_HELP)
    p.add_argument("--workers", type=int, default=8, help="shards written in parallel (default 8)")
    p.add_argument("--max_shard_size", default="5GB", help="largest output shard, e.g. 5GB (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    return p


def convert_ckpt_to_outer(argv: list[str] | None = None) -> int:
    a = convert_ckpt_to_outer_parser().parse_args(argv)
    args = ["convert", "inner-to-outer", a.input_dir, a.output_dir, "--workers", str(a.workers),
            "--max-shard-size", a.max_shard_size]
    return hy3(args + (["--overwrite"] if a.overwrite else []))


# --- Tencent's check_converted.py ----------------------------------------------------------------

def check_converted_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="check_converted.py",
                                description="Validate a converted Hy3 checkpoint. Same as `hy3 check DIR "
                                            "--spot-check 3` (Tencent's tool reads 3 shards for NaN/Inf; "
                                            "`hy3 check` reads them all).")
    add_check_args(p, spot_check=3)
    return p


def check_converted(argv: list[str] | None = None) -> int:
    a = check_converted_parser().parse_args(argv)
    where = ["--model", a.model] if a.model else [a.dir] if a.dir else []
    return hy3(["check", *where, "--spot-check", str(a.spot_check)] + (["--json"] if a.json else [])
               + (["--quiet"] if a.quiet else []))
