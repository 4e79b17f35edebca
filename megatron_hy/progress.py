"""Progress lines for long work, on stderr: done of the total (bytes, or a count such as rows), rate, ETA.
Thread-safe; quiet when asked."""

from __future__ import annotations

import sys
import threading
import time


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def human_count(n: float, unit: str) -> str:
    return f"{int(n):,} {unit}"


class Progress:
    """`unit` None: bytes; else the name of what is counted ("rows")."""

    def __init__(self, label: str, total: int, quiet: bool = False, stream=None, every: float = 1.0,
                 unit: str | None = None):
        self.label, self.total, self.quiet, self.unit = label, max(total, 1), quiet, unit
        self.stream = stream or sys.stderr
        self.every = every
        self.done = 0
        self.start = time.monotonic()
        self._last = self.start
        self._lock = threading.Lock()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if not self.quiet and now - self._last >= self.every:
                self._last = now
                self._print(end="\r" if self._tty else "\n")

    def update_to(self, done: int) -> None:
        """Set how much is done (a position in a file, say) rather than add to it."""
        with self._lock:
            delta = done - self.done
        if delta > 0:
            self.add(delta)

    def _print(self, end: str) -> None:
        el = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / el
        eta = (self.total - self.done) / rate if rate > 0 else 0
        pct = 100 * self.done / self.total
        fmt = human_bytes if self.unit is None else (lambda n: human_count(n, self.unit))
        per = f"{human_bytes(rate)}/s" if self.unit is None else f"{rate:,.0f} {self.unit}/s"
        self.stream.write(f"[{self.label}] {fmt(self.done)} / {fmt(self.total)} ({pct:.0f}%), "
                          f"{per}, ETA {eta:.0f}s{' ' * 8}{end}")
        self.stream.flush()

    def finish(self) -> float:
        el = time.monotonic() - self.start
        if not self.quiet:
            self._print(end="\n")
        return el


def log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)
