"""`hy3`: one command line over the whole toolkit. Each subcommand lives in `megatron_hy/commands/`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from . import __version__
from .errors import Hy3Error, Interrupted
from .megatron.harness import quiet_logs

COMMANDS = ["make_tiny", "convert", "check", "config", "verify", "lora", "plan", "launch", "data", "demo"]


def quiet_libraries() -> None:
    """Keep third-party chatter (missing TE/apex on CPU, load reports) out of the user's terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
    warnings.filterwarnings("ignore", message=".*Apex.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # megatron-core 0.19: an invalid escape in a docstring it imports, and TransformerConfig's default CUDA-graph scope
    warnings.filterwarnings("ignore", category=SyntaxWarning)
    warnings.filterwarnings("ignore", message="full scope is deprecated")
    quiet_logs()


class Parser(argparse.ArgumentParser):
    """argparse with hy3's one error line: usage, then `hy3: error: ...`, exit 2 (subcommands inherit it)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"hy3: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hy3",
        description="Hy3 on Megatron-Core: convert checkpoints, check them, verify parity, plan and launch "
                    "training, export LoRA, and prepare data. Run `hy3 COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"megatron-hy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"megatron_hy.commands.{name}").register(sub)
    return parser


def subcommand_parser(command: tuple[str, ...], prog: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (e.g. ("convert", "hf-to-mcore")), named `prog` in its usage and errors."""
    parser = build_parser()
    for name in command:
        parser = next(a.choices[name] for a in parser._actions
                      if isinstance(a, argparse._SubParsersAction) and name in a.choices)
    parser.prog = prog
    return parser


def main(argv: list[str] | None = None, command: tuple[str, ...] = (), prog: str | None = None) -> int:
    """`hy3 ARGV`; with `command`, that subcommand alone under the name `prog` (the scripts in converters/)."""
    quiet_libraries()
    parser = subcommand_parser(command, prog) if command else build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except Interrupted as e:  # SIGINT is exit 130 in every command, with what was kept
        print(f"hy3: interrupted: {e}", file=sys.stderr)
        return 130
    except Hy3Error as e:
        print(f"hy3: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hy3: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permissions, a vanished file: the environment, not a bug
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"hy3: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
