"""Check Hy3 row files: every problem as file:line with a reason, streamed with bounded memory."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import Hy3Error
from ..progress import Progress
from .reader import read_records
from .rows import Conversation, parse_row

SHOW = 50  # lines of each level printed in the text report; the rest are counted
KEEP = 100_000  # findings of each level kept in memory (and in --json); all are counted


@dataclass
class Finding:
    file: str
    line: int
    level: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.level}: {self.message}"


@dataclass
class Report:
    """Every finding is counted; the first KEEP of each level are kept with their file:line."""

    files: list[str] = field(default_factory=list)
    rows: int = 0
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # (level, code) -> findings

    def add(self, f: Finding) -> None:
        self.counts[f.level, f.code] += 1
        kept = self.errors if f.level == "error" else self.warnings
        if len(kept) < KEEP:
            kept.append(f)

    def count(self, level: str) -> int:
        return sum(n for (lv, _), n in self.counts.items() if lv == level)

    @property
    def ok(self) -> bool:
        return self.count("error") == 0

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "files": self.files, "rows": self.rows,
                           "error_count": self.count("error"), "warning_count": self.count("warning"),
                           "by_code": {f"{lv}:{code}": n for (lv, code), n in sorted(self.counts.items())},
                           "errors": [f.__dict__ for f in self.errors],
                           "warnings": [f.__dict__ for f in self.warnings]}, ensure_ascii=False, indent=2)

    def to_text(self, show: int = SHOW) -> str:
        out = []
        for level, kept in (("error", self.errors), ("warning", self.warnings)):
            out += [str(f) for f in kept[:show]]
            total = self.count(level)
            if total > show:
                shown = Counter(f.code for f in kept[:show])
                rest = Counter({code: n - shown[code] for (lv, code), n in self.counts.items() if lv == level})
                out.append(f"... and {total - show} more {level}s ("
                           + ", ".join(f"{n} {k}" for k, n in rest.most_common() if n) + "); --json lists them")
        verdict = "OK" if self.ok else "FAILED"
        out.append(f"{verdict}: {self.rows} rows in {len(self.files)} file(s), {self.count('error')} errors, "
                   f"{self.count('warning')} warnings")
        return "\n".join(out)


EMPTY = "no rows: the file is empty or holds only blank lines (expected one Hy3 row per line, or a JSON array of rows)"


def rows(path: str | Path, report: Report, on_pos=None) -> Iterator[tuple[int, Conversation]]:
    """Parse a file's rows, adding every problem to `report` (a file without rows is one) and yielding the
    good ones."""
    name = str(path)
    report.files.append(name)
    before = report.rows
    for rec in read_records(path, on_pos):
        report.rows += 1
        if rec.error:
            report.add(Finding(name, rec.line, "error", "json", rec.error))
            continue
        conv, problems = parse_row(rec.value)
        for p in problems:
            report.add(Finding(name, rec.line, p.level, p.code, p.message))
        if conv is not None:
            yield rec.line, conv
    if report.rows == before:
        report.add(Finding(name, 1, "error", "empty", EMPTY))


def validate_files(paths: list[str | Path], quiet: bool = True) -> Report:
    """Every row of every file, with progress in bytes read (stderr) unless quiet."""
    for p in paths:
        if not Path(p).is_file():
            raise Hy3Error(f"{p}: no such file")
    report = Report()
    prog = Progress("validate", sum(Path(p).stat().st_size for p in paths), quiet=quiet)
    base = 0
    for p in paths:
        for _ in rows(p, report, lambda pos: prog.update_to(base + pos)):
            pass
        base += Path(p).stat().st_size
        prog.update_to(base)
    prog.finish()
    return report


def require_valid(path: str | Path, quiet: bool = True) -> Report:
    """Validate a file (streamed); Hy3Error listing the errors if there are any (no rows is one)."""
    report = validate_files([path], quiet)
    if report.counts["error", "empty"]:
        raise Hy3Error(f"{path}: {EMPTY}")
    if not report.ok:
        lines = [str(f) for f in report.errors[:20]]
        more = report.count("error") - len(lines)
        raise Hy3Error(f"{path}: {report.count('error')} error(s), nothing written (details: hy3 data validate {path}):\n  "
                       + "\n  ".join(lines) + (f"\n  ... and {more} more" if more > 0 else ""))
    return report
