"""New output files for `hy3 plan` (a written recipe, a plot): made under a temporary name next to the
target and published under the final name only when complete, never over an existing file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from ..errors import Hy3Error
from ..outputs import check_file, temp_file


def check_new(path: str | Path, suffix: str | None = None, inputs=()) -> Path:
    """A new file (outputs.py, with no --overwrite), clear of the inputs."""
    p = Path(path)
    if suffix and p.suffix.lower() != suffix:
        raise Hy3Error(f"{p}: expected a {suffix} file name")
    check_file(p, inputs, overwrite=None)
    if not p.parent.is_dir():
        raise Hy3Error(f"{p.parent}: no such directory")
    return p


def write_new(path: str | Path, write: Callable[[Path], None]) -> None:
    """write(tmp) fills a temporary file; it then appears as `path`, or the call fails if `path` exists."""
    path = check_new(path)
    tmp = temp_file(path, ".tmp")
    try:
        write(tmp)
        try:
            os.link(tmp, path)              # atomic, and refuses to replace a file that appeared meanwhile
        except FileExistsError:
            raise Hy3Error(f"{path}: already exists; choose a new file name") from None
        except OSError:                     # a filesystem without hard links
            with open(tmp, "rb") as src, open(path, "xb") as dst:
                shutil.copyfileobj(src, dst)
    finally:
        tmp.unlink(missing_ok=True)
