"""`hy3 lora merge`: W + scaling * B @ A into an HF checkpoint, tensor by tensor, in the base's layout.

Tensors the adapter does not touch are copied by byte range (or converted, with --dtype); touched
ones are computed one logical tensor (one expert's projection) at a time, so memory stays bounded
by the largest single HF tensor. Where the delta is exactly zero the base value is kept bit for bit,
so merging an all-zero adapter reproduces the base checkpoint byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..dtypes import CAST, safetensors_name, torch_dtype, torch_name
from ..errors import Hy3Error
from ..formats.adapters import open_adapter
from ..formats.hf_checkpoint import HFCheckpoint
from ..formats.hf_writer import layout_tensors, run_jobs
from ..formats.safetensors_io import parse_size, plan_shards, shard_name, write_index, write_shard
from ..formats.staging import copy_other_files, plan_id, StagedDir
from ..mapping import keeps_dtype
from ..outputs import HF_CHECKPOINT
from ..progress import human_bytes, log, Progress

def merge_lora(base_dir: str | Path, adapter_dir: str | Path, out: str | Path, dtype: str | None = None,
               workers: int = 4, max_shard_size: str = "5GB", rslora: str = "auto", overwrite: bool = False,
               quiet: bool = False) -> dict:
    if dtype is not None and dtype not in CAST:
        raise Hy3Error(f"--dtype {dtype!r}: expected bf16, fp16 or fp32")
    base = HFCheckpoint(base_dir)
    cfg = base.config
    adapter = open_adapter(adapter_dir, cfg, rslora)
    for note in adapter.notes:
        log(f"note: {note}", quiet)
    targets = set(adapter.targets())
    lacking = sorted(targets - set(base.names()))
    if lacking:
        raise Hy3Error(f"{adapter_dir}: LoRA for {lacking[0]}, which {base_dir} does not have")
    stage = StagedDir(out, HF_CHECKPOINT, [base.root, *base.files(), adapter_dir], overwrite)

    def out_dtype(name: str) -> str:
        if dtype is None or keeps_dtype(name):
            return base.dtype(name)
        return safetensors_name(dtype)

    def source(name: str):
        if name in targets:
            return lambda: _merged(base, adapter, name, out_dtype(name))
        if out_dtype(name) != base.dtype(name):
            return lambda: _converted(base, name, out_dtype(name))
        return base.source(name)

    tensors = layout_tensors(cfg, base.layout, lambda n: [source(n)], out_dtype, str(base.root))
    groups = plan_shards(tensors, parse_size(max_shard_size))
    names = [shard_name(i, len(groups)) for i in range(len(groups))]
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns)
             for p in sorted(set(Path(base.source(n)[0]) for n in base.names())) + sorted(Path(adapter_dir).rglob("*"))
             if p.is_file()]
    stage.open(plan_id({"v": 1, "stamp": stamp, "dtype": dtype, "rslora": rslora, "shard": max_shard_size}))
    todo = [(n, g) for n, g in zip(names, groups) if not stage.has(n)]
    if stage.resumed and len(todo) < len(groups):
        log(f"resuming {stage.partial}: {len(groups) - len(todo)} of {len(groups)} shards already written", quiet)
    prog = Progress("lora merge", sum(t.nbytes for _, g in todo for t in g), quiet)
    run_jobs(stage.partial, [lambda n=n, g=g: write_shard(stage.path(n), g, prog.add) for n, g in todo], workers)
    seconds = prog.finish()
    total = sum(t.nbytes for t in tensors)
    write_index(stage.partial, {t.key: n for n, g in zip(names, groups) for t in g}, total)
    copy_other_files(base.other_files(), stage.partial)
    if dtype is not None:
        _set_config_dtype(stage.partial / "config.json", dtype)
    stage.finish()
    log(f"wrote {out}: {len(targets)} tensors merged (rank {adapter.rank}, scaling {adapter.scaling:g}), "
        f"{len(tensors)} tensors in {len(groups)} shards ({base.layout} layout), {human_bytes(total)} in {seconds:.1f}s",
        quiet)
    return {"output": str(out), "merged": len(targets), "tensors": len(tensors), "shards": len(groups),
            "bytes": total, "layout": base.layout, "scaling": adapter.scaling, "notes": adapter.notes}


def _merged(base: HFCheckpoint, adapter, name: str, dtype: str):
    import torch

    w = base.read(name)
    delta = adapter.delta(name).reshape(w.shape)
    out = (w.float() + delta).to(torch_dtype(dtype))
    out = torch.where(delta == 0, w.to(torch_dtype(dtype)), out)  # bit-exact where nothing changes (-0.0 too)
    return _view_bytes(out)


def _converted(base: HFCheckpoint, name: str, dtype: str):
    return _view_bytes(base.read(name).to(torch_dtype(dtype)))


def _view_bytes(t) -> memoryview:
    import torch

    return memoryview(t.contiguous().view(-1).view(torch.uint8).numpy())


def _set_config_dtype(path: Path, dtype: str) -> None:
    name = torch_name(dtype)
    conf = json.loads(path.read_text())
    for key in ("torch_dtype", "dtype"):
        if key in conf or key == "torch_dtype":
            conf[key] = name
    path.write_text(json.dumps(conf, indent=2) + "\n")

