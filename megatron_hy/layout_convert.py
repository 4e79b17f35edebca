"""`hy3 convert inner-to-outer | outer-to-inner`: a byte shuffle, streamed.

Outer `gate_up_proj[e]` is exactly the bytes of inner `gate_e` then `up_e`; outer `down_proj[e]`
is the bytes of `down_e`. So every output tensor is a list of byte ranges of input files, copied
by the kernel into a file whose header is written first. No shard and no fused tensor is ever
held in memory, and experts that straddle shards cost nothing extra.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import Hy3Error
from .hf_checkpoint import HFCheckpoint
from .mapping import fused_parts, logical_tensors
from .progress import Progress, human_bytes, log
from .safetensors_io import OutTensor, parse_size, plan_shards, shard_name, write_index, write_shard
from .staging import StagedDir, copy_other_files, plan_id


def plan_layout(src: HFCheckpoint, to: str) -> list[OutTensor]:
    """Output tensors of the target layout, each as byte ranges of the source files."""
    cfg = src.config
    out: list[OutTensor] = []
    fused = fused_parts(cfg)
    seen = set()
    for t in logical_tensors(cfg):
        if to == "inner" or t.expert is None:
            key = t.name if to == "inner" else t.outer_key
            out.append(OutTensor(key, src.dtype(t.name), t.shape, [src.source(t.name)]))
        elif t.outer_key not in seen:
            seen.add(t.outer_key)
            parts = fused[t.outer_key]
            dtypes = {src.dtype(p.name) for p in parts}
            if len(dtypes) > 1:
                raise Hy3Error(f"{src.root}: experts fused into {t.outer_key} have mixed dtypes {sorted(dtypes)}")
            shape = (cfg.num_experts,) + _per_expert_shape(parts, cfg)
            out.append(OutTensor(t.outer_key, dtypes.pop(), shape, [src.source(p.name) for p in parts]))
    return out


def _per_expert_shape(parts, cfg) -> tuple:
    rows = sum(p.shape[0] for p in parts if p.expert == 0)
    return (rows, parts[0].shape[1])


def convert_layout(src_dir: str | Path, out_dir: str | Path, to: str, workers: int = 8,
                   max_shard_size: str = "5GB", overwrite: bool = False, quiet: bool = False) -> dict:
    if to not in ("inner", "outer"):
        raise Hy3Error(f"unknown layout {to!r}; expected inner or outer")
    if workers < 1:
        raise Hy3Error(f"--workers {workers}: expected at least 1")
    src = HFCheckpoint(src_dir)
    out_dir = Path(out_dir)
    if out_dir.resolve() == src.root.resolve() or out_dir.resolve() in src.root.resolve().parents:
        raise Hy3Error(f"{out_dir}: output directory must differ from the input and not contain it")
    if src.layout == to:
        log(f"note: {src.root} is already in the {to} layout; re-sharding it", quiet)
    tensors = plan_layout(src, to)
    groups = plan_shards(tensors, parse_size(max_shard_size))
    names = [shard_name(i, len(groups)) for i in range(len(groups))]
    inputs = sorted({s[0] for t in tensors for s in t.sources})
    stamp = [(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in inputs]
    layout = [(n, [(t.key, t.dtype, t.shape, t.sources) for t in g]) for n, g in zip(names, groups)]
    stage = StagedDir(out_dir, plan_id({"to": to, "inputs": stamp, "layout": layout}), overwrite).open()

    todo = [(n, g) for n, g in zip(names, groups) if not stage.has(n)]
    total = sum(t.nbytes for t in tensors)
    if stage.resumed:
        log(f"resuming {stage.partial}: {len(groups) - len(todo)} of {len(groups)} shards already written", quiet)
    prog = Progress(f"{src.layout}->{to}", sum(t.nbytes for _, g in todo for t in g), quiet)
    on_bytes = _kill_hook(prog.add)
    try:
        with ThreadPoolExecutor(max(1, min(workers, len(todo) or 1))) as pool:
            futures = [pool.submit(write_shard, stage.path(n), g, on_bytes) for n, g in todo]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        seconds = prog.finish()
        weight_map = {t.key: n for n, g in zip(names, groups) for t in g}
        write_index(stage.partial, weight_map, total)
        skip = {out_dir.resolve(), stage.partial.resolve()}
        copy_other_files([p for p in src.other_files() if p.resolve() not in skip], stage.partial)
        stage.finish()
    except KeyboardInterrupt:
        raise Hy3Error(f"interrupted; {stage.partial} holds the finished shards, rerun the same command to resume") from None
    except OSError as e:
        raise Hy3Error(f"{stage.partial}: {e.strerror or e} ({getattr(e, 'filename', None) or 'while writing'}); "
                       "rerun the same command to resume") from None
    log(f"wrote {out_dir}: {len(tensors)} tensors in {len(groups)} shards, {human_bytes(total)} in {seconds:.1f}s", quiet)
    return {"output": str(out_dir), "tensors": len(tensors), "shards": len(groups), "bytes": total,
            "seconds": seconds, "from": src.layout, "to": to}


def _kill_hook(on_bytes):
    """Test hook: with HY3_TEST_KILL_AFTER_BYTES=N set, the process SIGKILLs itself once N bytes are
    written, so tests can check resume after a real kill at a known point. Unset, it does nothing."""
    limit = os.environ.get("HY3_TEST_KILL_AFTER_BYTES")
    if not limit:
        return on_bytes
    done = [0]

    def add(n: int) -> None:
        on_bytes(n)
        done[0] += n
        if done[0] >= int(limit):
            os.kill(os.getpid(), signal.SIGKILL)
    return add
