"""Outputs that appear only when complete, and resume after a kill.

Work is written under `OUT.partial/` with a plan id recorded in it. Each piece (a shard file)
is itself written under a temporary name and renamed, so any piece with its final name is
complete. A rerun with the same plan keeps those pieces and writes the rest; a different plan
starts over. At the end the directory is renamed to OUT in one step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .errors import Hy3Error

PLAN_FILE = ".hy3-plan"


def plan_id(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


class StagedDir:
    def __init__(self, out: str | Path, plan: str, overwrite: bool = False):
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.plan = plan
        self.overwrite = overwrite
        self.resumed: list[str] = []

    def open(self) -> "StagedDir":
        if self.out.exists() and not self.overwrite:
            raise Hy3Error(f"{self.out}: already exists; choose another output directory or pass --overwrite")
        marker = self.partial / PLAN_FILE
        try:
            if self.partial.exists():
                if marker.exists() and marker.read_text().strip() == self.plan:
                    self.resumed = sorted(p.name for p in self.partial.iterdir()
                                          if p.name != PLAN_FILE and not p.name.endswith(".tmp"))
                else:
                    _remove(self.partial)
            self.partial.mkdir(parents=True, exist_ok=True)
            marker.write_text(self.plan + "\n")
        except OSError as e:
            raise Hy3Error(f"{self.out}: cannot write output here ({e.strerror})") from None
        return self

    def path(self, name: str) -> Path:
        return self.partial / name

    def has(self, name: str) -> bool:
        return (self.partial / name).exists()

    def finish(self) -> Path:
        """Move the finished work into place; an old OUT (--overwrite) is removed only after that."""
        (self.partial / PLAN_FILE).unlink(missing_ok=True)
        for p in self.partial.glob("*.tmp"):
            _remove(p)
        old = None
        if self.out.exists() or self.out.is_symlink():
            old = self.out.with_name(f"{self.out.name}.old-{os.getpid()}")
            os.rename(self.out, old)
        os.rename(self.partial, self.out)
        if old is not None:
            _remove(old)
        return self.out


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
