"""Outputs that appear only when complete, and resume after a kill.

Work is written under `OUT.partial/` with a plan id recorded in it. Each piece (a shard file)
is itself written under a temporary name and renamed, so any piece with its final name is
complete. A rerun with the same plan keeps those pieces and writes the rest; a different plan
starts over. At the end the directory gets the output marker (outputs.MARKER) and is renamed to
OUT in one step. Which OUT may be written, or replaced, is outputs.check_dir's to say.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import Hy3Error
from ..outputs import check_dir, check_not_an_input, MARKER, write_marker

PLAN_FILE = ".hy3-plan"


def plan_id(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


class StagedDir:
    """OUT, a directory of the given kind, written from `inputs`. Constructing it checks OUT against the
    output policy, so build it as soon as the inputs are open, before the heavy work."""

    def __init__(self, out: str | Path, kind: str, inputs=(), overwrite: bool = False):
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.kind, self.inputs, self.overwrite = kind, [p for p in inputs if p is not None], overwrite
        self.resumed: list[str] = []
        self.check()

    def check(self) -> None:
        check_dir(self.out, self.kind, self.inputs, self.overwrite)
        check_not_an_input(self.partial, self.inputs)  # a different plan removes the staging directory

    def open(self, plan: str) -> "StagedDir":
        self.check()
        marker = self.partial / PLAN_FILE
        try:
            if self.partial.is_symlink() or self.partial.exists():
                if self.partial.is_symlink() or not (marker.exists() or (self.partial / MARKER).exists()):
                    raise Hy3Error(f"{self.partial}: exists and hy3 did not write it; move it away (hy3 stages "
                                   f"{self.out} there)")
                if marker.exists() and marker.read_text().strip() == plan:
                    self.resumed = sorted(p.name for p in self.partial.iterdir()
                                          if p.name != PLAN_FILE and not p.name.endswith(".tmp"))
                else:
                    _remove(self.partial)
            self.partial.mkdir(parents=True, exist_ok=True)
            marker.write_text(plan + "\n")
        except OSError as e:
            raise Hy3Error(f"{self.out}: cannot write output here ({e.strerror})") from None
        return self

    def path(self, name: str) -> Path:
        return self.partial / name

    def has(self, name: str) -> bool:
        return (self.partial / name).exists()

    def finish(self) -> Path:
        """Move the finished work into place; an old OUT (--overwrite) is removed only after that."""
        self.check()
        write_marker(self.partial, self.kind)
        (self.partial / PLAN_FILE).unlink(missing_ok=True)
        for p in self.partial.glob("*.tmp"):
            _remove(p)
        old = None
        if self.out.exists():
            old = self.out.with_name(f"{self.out.name}.old-{os.getpid()}")
            os.rename(self.out, old)
        os.rename(self.partial, self.out)
        if old is not None:
            _remove(old)
        return self.out

    def discard(self) -> None:
        if self.partial.exists():
            _remove(self.partial)


@contextmanager
def new_dir(out: str | Path, kind: str, inputs=(), overwrite: bool = False):
    """A directory written in one go (no resume): yields the staging directory to fill, publishes it as OUT
    when the block ends, and removes it if the block fails."""
    stage = StagedDir(out, kind, inputs, overwrite).open(f"one go {os.getpid()} {time.time_ns()}")
    try:
        yield stage.partial
    except BaseException:
        stage.discard()
        raise
    stage.finish()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def copy_other_files(files, dest: Path) -> None:
    """Copy config, tokenizer and other small files; each appears under its name only when complete."""
    for p in files:
        target = dest / p.name
        tmp = target.with_name(target.name + ".tmp")
        if p.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(p, tmp)
            if target.exists():
                shutil.rmtree(target)
        else:
            shutil.copy2(p, tmp)
        os.replace(tmp, target)
