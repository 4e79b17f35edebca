"""What every subcommand does the same way (README, "One convention"):

- the model directory is `--model DIR` in every command (older names stay as aliases; a command whose
  operand is the model also takes it positionally);
- a result goes to stdout, as text or, with `--json`, as one JSON object;
- progress and the final `wrote PATH ...` line go to stderr (progress.log).
"""

from __future__ import annotations

import argparse
import json

from ..errors import Hy3Error
from ..fields import COUNT
from ..progress import log
from ..swift.runs import pick_checkpoint

MODEL_METAVAR = "MODEL_DIR"
JSON_HELP = "print the result as one JSON object on stdout (progress and `wrote` lines stay on stderr)"


class _Once(argparse.Action):
    """The model directory, given once: `--model A --hf-config B` is an error, not a silent choice of B."""

    def __call__(self, parser, namespace, value, option=None):
        before = getattr(namespace, self.dest, None)
        if before is not None and before != value:
            parser.error(f"{option}: the model directory is already given ({before}); give it once")
        setattr(namespace, self.dest, value)


def add_model_flag(p, help: str, required: bool = False, aliases: tuple[str, ...] = ()) -> None:
    """`--model MODEL_DIR`, with the names older releases used (`--tokenizer`, `--base`, `--hf-config`)."""
    also = f" (older name{'s' if len(aliases) > 1 else ''}: {', '.join(aliases)})" if aliases else ""
    p.add_argument("--model", *aliases, dest="model", metavar=MODEL_METAVAR, required=required, action=_Once,
                   help=help + also)


def add_model_operand(p, dest: str, metavar: str, help: str) -> None:
    """A command whose operand is the model directory: `CMD DIR` or `CMD --model DIR`."""
    p.add_argument(dest, nargs="?", metavar=metavar, help=f"{help} (or --model {metavar})")
    p.add_argument("--model", dest="model", metavar=metavar, help=f"the same as the {metavar} operand")


def model_operand(args, dest: str, metavar: str) -> str:
    given, flag = getattr(args, dest), getattr(args, "model", None)
    if given and flag and given != flag:
        raise Hy3Error(f"{metavar} given twice ({given} and --model {flag}); give it once")
    if not (given or flag):
        raise Hy3Error(f"no model directory: give {metavar} (or --model {metavar})")
    return given or flag


RUN_HELP = ("; or an ms-swift output directory (`megatron sft --output_dir`), one of its runs (vX-YYYYMMDD-HHMMSS) "
            "or one of their checkpoint-N: the newest checkpoint-N is read (see --checkpoint)")


def add_checkpoint_flag(p) -> None:
    p.add_argument("--checkpoint", type=COUNT, metavar="N",
                   help="in an ms-swift run: read checkpoint-N instead of the newest (in an output directory: the "
                        "newest run that holds checkpoint-N)")


def picked_checkpoint(path: str, number: int | None, quiet: bool = False):
    """The checkpoint directory `path` means (swift/runs.py), said on stderr when one was picked."""
    picked = pick_checkpoint(path, number)
    if picked.note:
        log(picked.note, quiet)
    return picked.path


def add_json(p, help: str = JSON_HELP) -> None:
    p.add_argument("--json", action="store_true", help=help)


def emit(args, result: dict, text: str | None = None) -> None:
    """The command's result on stdout: `result` as JSON with --json, else `text` (nothing when None)."""
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, default=str))
    elif text is not None:
        print(text)
