"""`hy3 convert inner-to-outer | outer-to-inner`: a byte shuffle, streamed.

Outer `gate_up_proj[e]` is exactly the bytes of inner `gate_e` then `up_e`; outer `down_proj[e]`
is the bytes of `down_e`. So every output tensor is a list of byte ranges of input files, copied
by the kernel into a file whose header is written first. No shard and no fused tensor is ever
held in memory, and experts that straddle shards cost nothing extra.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import Hy3Error
from ..formats.hf_checkpoint import HFCheckpoint
from ..formats.hf_writer import layout_tensors, run_jobs
from ..formats.safetensors_io import (CopyLimits, OutTensor, parse_size, plan_shards, shard_name, write_index,
                                      write_shard)
from ..formats.staging import StagedDir, copy_other_files, plan_id
from ..outputs import HF_CHECKPOINT
from ..progress import Progress, human_bytes, log


def plan_layout(src: HFCheckpoint, to: str) -> list[OutTensor]:
    """Output tensors of the target layout, each as byte ranges of the source files."""
    return layout_tensors(src.config, to, lambda n: [src.source(n)], src.dtype, str(src.root))


def convert_layout(src_dir: str | Path, out_dir: str | Path, to: str, workers: int = 8,
                   max_shard_size: str = "5GB", overwrite: bool = False, quiet: bool = False,
                   limits: CopyLimits = CopyLimits(), other_files: list[Path] | None = None) -> dict:
    """other_files: the config, tokenizer and other files to carry (default: the input's own)."""
    if to not in ("inner", "outer"):
        raise Hy3Error(f"unknown layout {to!r}; expected inner or outer")
    if workers < 1:
        raise Hy3Error(f"--workers {workers}: expected at least 1")
    src = HFCheckpoint(src_dir)
    out_dir = Path(out_dir)
    stage = StagedDir(out_dir, HF_CHECKPOINT, [src.root, *src.files()], overwrite)
    if src.layout == to:
        log(f"note: {src.root} is already in the {to} layout; re-sharding it", quiet)
    tensors = plan_layout(src, to)
    groups = plan_shards(tensors, parse_size(max_shard_size))
    names = [shard_name(i, len(groups)) for i in range(len(groups))]
    inputs = sorted({s[0] for t in tensors for s in t.sources})
    stamp = [(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in inputs]
    layout = [(n, [(t.key, t.dtype, t.shape, t.sources) for t in g]) for n, g in zip(names, groups)]
    stage.open(plan_id({"to": to, "inputs": stamp, "layout": layout}))

    todo = [(n, g) for n, g in zip(names, groups) if not stage.has(n)]
    total = sum(t.nbytes for t in tensors)
    if stage.resumed:
        log(f"resuming {stage.partial}: {len(groups) - len(todo)} of {len(groups)} shards already written", quiet)
    prog = Progress(f"{src.layout}->{to}", sum(t.nbytes for _, g in todo for t in g), quiet)
    run_jobs(stage.partial, [lambda n=n, g=g: write_shard(stage.path(n), g, prog.add, limits=limits)
                             for n, g in todo], workers)
    seconds = prog.finish()
    weight_map = {t.key: n for n, g in zip(names, groups) for t in g}
    write_index(stage.partial, weight_map, total)
    copy_other_files(src.other_files() if other_files is None else other_files, stage.partial)
    stage.finish()
    log(f"wrote {out_dir}: {len(tensors)} tensors in {len(groups)} shards, {human_bytes(total)} in {seconds:.1f}s", quiet)
    return {"output": str(out_dir), "tensors": len(tensors), "shards": len(groups), "bytes": total,
            "seconds": seconds, "from": src.layout, "to": to}
