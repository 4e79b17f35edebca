"""What the benchmark scripts share: timing a child process, the machine, and writing docs/benchmarks.md.

Each benchmark times its commands as child processes followed by `sync`, with the page cache dropped
before each run when this user may, and compares medians with baselines timed in the same run: `cp -r`
and the same files copied by N `cp` processes at once (N = the converter's --workers). Every output is
then checked, untimed, against its input tensor by tensor (a hash of each tensor's bytes), and a
difference fails the run. Run the scripts with the Python that has megatron-hy installed
(`make setup`: .venv/bin/python).
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
    return timed_together([cmd], cold)


def timed_together(cmds: list[list[str]], cold: bool, cwd=None) -> dict:
    """Like timed, for commands started at once: wall time until the last one ends + sync, their CPU
    time added up, and the sum of their peak RSS."""
    dropped = drop_caches() if cold else False
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=err, cwd=cwd) for c in cmds]
        peaks = [0] * len(procs)
        cpu, failed = 0.0, []
        running = dict(enumerate(procs))
        while running:
            for i, proc in list(running.items()):
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    del running[i]
                    cpu += usage.ru_utime + usage.ru_stime
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    if proc.returncode:
                        failed.append((cmds[i], proc.returncode))
                else:
                    peaks[i] = max(peaks[i], vm_hwm(proc.pid))
            time.sleep(0.02)
        t1 = time.perf_counter()
        os.sync()
        t2 = time.perf_counter()
        if failed:
            err.seek(0)
            raise SystemExit(f"{' '.join(failed[0][0])} failed ({failed[0][1]}): {err.read().decode()[-2000:]}")
    return {"seconds": t2 - t0, "command_seconds": t1 - t0, "cpu_seconds": cpu, "peak_rss_bytes": sum(peaks),
            "cache_dropped": dropped, "load_average": os.getloadavg()[0], "processes": len(cmds)}


def parallel_cp(src: Path, dst: Path, streams: int) -> list[list[str]]:
    """Commands copying every file under src to the same place under dst, as `streams` `cp` processes
    (files dealt largest first to the process with the fewest bytes so far); run them with cwd=src.
    The directories are made here, before timing; cp -r makes them too, which takes no measurable time."""
    files = sorted((p for p in src.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    for d in sorted({p.parent for p in files}):
        (dst / d.relative_to(src)).mkdir(parents=True, exist_ok=True)
    groups: list[list[str]] = [[] for _ in range(max(1, min(streams, len(files))))]
    load = [0] * len(groups)
    for p in files:
        i = load.index(min(load))
        groups[i].append(str(p.relative_to(src)))
        load[i] += p.stat().st_size
    return [["cp", "--parents", *g, str(dst)] for g in groups]


def filesystem(path: Path) -> dict:
    """The mount that holds path, from /proc/mounts (`stat -f` cannot tell ext4 from ext2)."""
    path = Path(path).resolve()
    best = {"mount": "/", "type": "unknown", "device": "unknown"}
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, kind = line.split()[:3]
            mnt = mnt.replace("\\040", " ")
            if (path == Path(mnt) or Path(mnt) in path.parents) and len(mnt) >= len(best["mount"]):
                best = {"mount": mnt, "type": kind, "device": dev}
    except OSError:
        pass
    return best


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


def against(runs: dict, name: str, bases: list[str]) -> dict:
    """The median of `name` against the median of each baseline, and the ratio within each repeat."""
    out = {"seconds": median_seconds(runs[name]), "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs[name])}
    for base in bases:
        out[f"{base}_seconds"] = median_seconds(runs[base])
        out[f"ratio_to_{base}"] = median_seconds(runs[name]) / median_seconds(runs[base])
        out[f"ratio_to_{base}_same_repeat"] = [round(a["seconds"] / b["seconds"], 3)
                                               for a, b in zip(runs[name], runs[base])]
    return out


# --- checking the outputs (untimed) ----------------------------------------------------------------

HASH_BLOCK = 64 * 1024 * 1024


def tensor_digests(root: Path) -> dict[str, tuple]:
    """Logical tensor name -> (dtype, shape, xxh3-128 of its bytes) for an HF Hy3 checkpoint in either
    layout, read in 64 MiB blocks. Inner and outer checkpoints of one model give the same dict: an outer
    expert's tensor is hashed from the bytes of the fused tensor that hold it."""
    import xxhash

    from megatron_hy.errors import Hy3Error
    from megatron_hy.formats.hf_checkpoint import HFCheckpoint
    from megatron_hy.formats.safetensors_io import read_array

    try:
        ck = HFCheckpoint(root)
    except Hy3Error as e:
        raise SystemExit(f"verify: {e}") from None
    out = {}
    for name in ck.names():
        file, start, nbytes = ck.source(name)
        h = xxhash.xxh3_128()
        for off in range(start, start + nbytes, HASH_BLOCK):
            h.update(read_array(file, off, min(HASH_BLOCK, start + nbytes - off), reuse=True))
        out[name] = (ck.dtype(name), tuple(ck.logical[name].shape), h.hexdigest())
    return out


def verify(expected: dict, out: Path, label: str) -> int:
    """Exit with the first difference unless every tensor of `out` has the dtype, shape and bytes it has in
    `expected` (tensor_digests of the input); the number of tensors compared otherwise."""
    got = tensor_digests(out)
    bad = [f"{k} is missing" for k in expected if k not in got]
    bad += [f"{k} is not in the input" for k in got if k not in expected]
    for k in expected.keys() & got.keys():
        (dt_a, sh_a, h_a), (dt_b, sh_b, h_b) = expected[k], got[k]
        if (dt_a, sh_a) != (dt_b, sh_b):
            bad.append(f"{k} is {dt_b} {list(sh_b)}, the input's is {dt_a} {list(sh_a)}")
        elif h_a != h_b:
            bad.append(f"{k} holds other bytes than the input's")
    if bad:
        raise SystemExit(f"verify {label}: {out} differs from the input in {len(bad)} of {len(expected)} tensors; "
                         f"first: {sorted(bad)[0]}")
    print(f"  verified {label}: {len(got)} tensors equal to the input's, byte for byte", file=sys.stderr)
    return len(got)


def machine(workdir: Path) -> dict:
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "filesystem": filesystem(workdir)}


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
