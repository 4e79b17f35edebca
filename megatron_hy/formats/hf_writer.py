"""Writing checkpoints: the output tensors of an HF layout, and output files written in parallel.

Every converter (inner<->outer, torch_dist -> HF, LoRA merge, HF -> torch_dist) builds its files the
same way: a list of jobs, each writing one file under its final name in `OUT.partial/`, run in a
thread pool. A failure cancels the rest; Ctrl-C or a disk error leaves the finished files for a rerun.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..config import Hy3Config
from ..errors import Hy3Error, Interrupted
from ..mapping import fused_parts, logical_tensors
from .safetensors_io import OutTensor


def layout_tensors(cfg: Hy3Config, layout: str, sources: Callable[[str], list], dtype: Callable[[str], str],
                   where: str = "checkpoint") -> list[OutTensor]:
    """The tensors of a checkpoint in `layout`, in stable order. sources(name) / dtype(name) describe
    each logical tensor; an outer fused tensor is its experts' sources in byte order."""
    out: list[OutTensor] = []
    fused = fused_parts(cfg)
    seen = set()
    for t in logical_tensors(cfg):
        if layout == "inner" or t.expert is None:
            out.append(OutTensor(t.key(layout), dtype(t.name), t.shape, list(sources(t.name))))
        elif t.outer_key not in seen:
            seen.add(t.outer_key)
            parts = fused[t.outer_key]
            dtypes = {dtype(p.name) for p in parts}
            if len(dtypes) > 1:
                raise Hy3Error(f"{where}: experts fused into {t.outer_key} have mixed dtypes {sorted(dtypes)}")
            rows = sum(p.shape[0] for p in parts if p.expert == 0)
            shape = (cfg.num_experts, rows, parts[0].shape[1])
            out.append(OutTensor(t.outer_key, dtypes.pop(), shape, [s for p in parts for s in sources(p.name)]))
    return out


def run_jobs(partial, jobs: list[Callable[[], object]], workers: int) -> list:
    """Run file-writing jobs in a thread pool, in order of submission; results in the same order."""
    if workers < 1:
        raise Hy3Error(f"--workers {workers}: expected at least 1")
    try:
        with ThreadPoolExecutor(max(1, min(workers, len(jobs) or 1))) as pool:
            futures = [pool.submit(job) for job in jobs]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    except KeyboardInterrupt:
        raise Interrupted(f"{partial} holds the finished files; rerun the same command to resume") from None
    except OSError as e:
        raise Hy3Error(f"{partial}: {e.strerror or e} ({getattr(e, 'filename', None) or 'while writing'}); "
                       "rerun the same command to resume") from None
