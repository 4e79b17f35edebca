"""What the benchmark scripts share: timing a child process, the machine, and writing docs/benchmarks.md.

Each benchmark times its commands as child processes followed by `sync`, with the page cache dropped
before each run when this user may, and compares medians with a baseline timed in the same run.
Run the scripts with the Python that has megatron-hy installed (`make setup`: .venv/bin/python).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
GB = 1e9


def hy3(*args) -> list[str]:
    """The command line of `hy3 ARGS` in this interpreter."""
    return [sys.executable, "-m", "megatron_hy.cli", *map(str, args)]


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(cmd: list[str], cold: bool) -> dict:
    """Wall time of cmd + sync, the command's own time, and its peak RSS (VmHWM, polled every 20 ms).

    VmHWM is read from /proc rather than taken from wait4's ru_maxrss: a forked child starts with a
    copy of this process's page tables, so ru_maxrss would report at least this process's size."""
    dropped = drop_caches() if cold else False
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, vm_hwm(proc.pid))
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        t1 = time.perf_counter()
        os.sync()
        t2 = time.perf_counter()
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.read().decode()[-2000:]}")
    return {"seconds": t2 - t0, "command_seconds": t1 - t0, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_bytes": peak, "cache_dropped": dropped, "load_average": os.getloadavg()[0]}


def vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0  # exited between wait4 and the read


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def log_run(repeat: int, name: str, res: dict) -> None:
    print(f"  run {repeat + 1} {name}: {res['seconds']:.1f}s, peak RSS {res['peak_rss_bytes'] / 2**20:.0f} MiB",
          file=sys.stderr)


def median_seconds(runs: list[dict]) -> float:
    return statistics.median(r["seconds"] for r in runs)


def against(runs: dict, name: str, base: str) -> dict:
    """The median of `name` against the median of its baseline `base`, and the ratio within each repeat."""
    return {"seconds": median_seconds(runs[name]), "cp_seconds": median_seconds(runs[base]),
            "ratio_to_cp": median_seconds(runs[name]) / median_seconds(runs[base]),
            "ratio_to_cp_same_repeat": [round(a["seconds"] / b["seconds"], 3) for a, b in zip(runs[name], runs[base])],
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs[name])}


def machine() -> dict:
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}


def method(args, runs: dict, script: str, not_dropped: str) -> dict:
    """How the timed runs were made, for the results."""
    dropped = all(r["cache_dropped"] for v in runs.values() for r in v)
    return {"repeats": args.repeats, "workers": args.workers, "timed": "child process + sync",
            "page_cache": "dropped before each run" if dropped else not_dropped,
            "statistic": "median", "command": " ".join([f"benchmarks/{script}"] + sys.argv[1:])}


def write_doc(path: Path, section: str, start: str, end: str) -> None:
    """Replace the text between the markers `start` and `end` of a markdown file (or append it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nNumbers measured by the scripts in `benchmarks/`.\n"
    block = f"{start}\n{section}\n{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def publish(res: dict, shown: dict, doc: str, section: str, start: str, end: str) -> None:
    """Print the results as JSON and write their section into the markdown file `doc` ('' = none)."""
    print(json.dumps(shown, indent=1))
    if doc:
        write_doc(Path(doc), section, start, end)
        print(f"updated {doc}", file=sys.stderr)
