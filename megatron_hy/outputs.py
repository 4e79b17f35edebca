"""The one output policy of every `hy3` command that writes (README, "Output rules").

* An output may not be, contain, or lie inside any input (paths resolved, symlinks followed).
* A directory hy3 finishes carries MARKER, naming what it holds. An existing directory that is not
  empty is replaced only with --overwrite, only when it carries MARKER, and only by the same kind of
  output (a dataset never replaces a checkpoint). An empty directory is used as if it were new.
* An existing file is replaced only with --overwrite.
* The new output is complete before anything is replaced; nothing the command did not create is deleted.

Commands check their output once their inputs are open and before any heavy work; the writers
(staging.StagedDir, the file writers) check again right before they publish.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import Hy3Error

MARKER = ".hy3-output"
# what a directory holds (its MARKER says which); only the same kind replaces it
HF_CHECKPOINT = "Hy3 HF checkpoint"
TORCH_DIST = "torch_dist checkpoint"
ADAPTER = "LoRA adapter"
SWIFT_DATASET = "ms-swift cached dataset"
TOKENIZER = "stand-in tokenizer"
DEMO = "demo work directory"


def marker_text(kind: str) -> str:
    return json.dumps({"written_by": "megatron-hy", "kind": kind}) + "\n"


def write_marker(root: Path, kind: str) -> None:
    (Path(root) / MARKER).write_text(marker_text(kind))


def written_kind(root: Path) -> str | None:
    """What hy3 wrote into `root` (its MARKER), or None when hy3 did not write it."""
    try:
        d = json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return d.get("kind") if isinstance(d, dict) and d.get("written_by") == "megatron-hy" else None


def check_not_an_input(out: str | Path, inputs) -> None:
    real = Path(out).resolve()
    for inp in inputs:
        if inp is None:
            continue
        src = Path(inp).resolve()
        if real == src:
            how = "is"
        elif real in src.parents:
            how = "contains"
        elif src in real.parents:
            how = "lies inside"
        else:
            continue
        raise Hy3Error(f"{out}: refused: the output {how} the input {inp}; the output must differ from the input, "
                       "and neither contain it nor lie inside it")


def _check_not_a_link(out: Path) -> None:
    if out.is_symlink():
        raise Hy3Error(f"{out}: refused: the output is a symbolic link; give the path it points to")


def check_dir(out: str | Path, kind: str, inputs=(), overwrite: bool | None = False) -> Path:
    """Refuse a directory output the policy forbids. `overwrite` None: the command has no --overwrite."""
    out = Path(out)
    check_not_an_input(out, inputs)
    _check_not_a_link(out)
    if not out.exists():
        return out
    if not out.is_dir():
        raise Hy3Error(f"{out}: refused: exists and is not a directory; choose another output directory")
    if not any(out.iterdir()):
        return out
    found = written_kind(out)
    even = "" if overwrite is None else ", even with --overwrite"
    if found is None:
        raise Hy3Error(f"{out}: already exists and is not an empty directory, and hy3 did not write it (no {MARKER} "
                       f"in it); hy3 replaces only what it wrote{even}: choose another output directory")
    if found != kind:
        raise Hy3Error(f"{out}: refused: it holds a {found} that hy3 wrote, which a {kind} does not replace{even}: "
                       "choose another output directory")
    if not overwrite:
        raise Hy3Error(f"{out}: already exists and is not an empty directory (a {found} hy3 wrote); choose another "
                       "output directory" + (" or pass --overwrite to replace it" if overwrite is False else ""))
    return out


def check_file(out: str | Path, inputs=(), overwrite: bool | None = False) -> Path:
    """Refuse a file output the policy forbids. `overwrite` None: the command has no --overwrite."""
    out = Path(out)
    check_not_an_input(out, inputs)
    _check_not_a_link(out)
    if out.is_dir():
        raise Hy3Error(f"{out}: refused: is a directory; give a file name")
    if out.exists() and not overwrite:
        raise Hy3Error(f"{out}: already exists; choose a new file name"
                       + (" or pass --overwrite to replace it" if overwrite is False else
                          " (hy3 never overwrites a file it did not make)"))
    return out


def umask() -> int:
    """The process's umask (read without changing it where Linux says it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file(out: Path, suffix: str = ".partial") -> Path:
    """A new, empty file beside `out` to write it under; created exclusively, so it is never a user's file.
    Its mode follows the umask as any new file's does (mkstemp alone would make it 0600)."""
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~umask())
    finally:
        os.close(fd)
    return Path(name)


# the command-line help of every writing command
OUT_DIR_HELP = "output directory (new or empty; see --overwrite)"
OVERWRITE_DIR_HELP = ("replace an existing output directory that hy3 wrote as the same kind of output (never an "
                      "input, never a directory hy3 did not write), once the new one is complete")
OVERWRITE_FILE_HELP = "replace an existing output file (never an input), once the new one is complete"
