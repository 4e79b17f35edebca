"""`hy3 convert mcore-to-hf`: a Megatron torch_dist checkpoint to HF safetensors, chunk by chunk.

Ours or one megatron-core saved during training under any layout (optimizer state ignored): each HF
tensor is assembled in row blocks of at most 64 MB from the DCP chunks that overlap it, through the
mapping table, and streamed into shards in the inner or outer layout.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import xxhash

from ..config import Hy3Config, load_config
from ..dtypes import CAST, dtype_name, torch_dtype, torch_name
from ..errors import Hy3Error
from ..formats import dcp
from ..formats.hf_writer import layout_tensors, run_jobs
from ..formats.manifest import file_xxh3, MANIFEST, recorded_dtypes, write_manifest
from ..formats.safetensors_io import CHUNK_BYTES, parse_size, plan_shards, shard_name, write_index, write_shard
from ..formats.staging import copy_other_files, plan_id, StagedDir
from ..formats.torch_dist import find_iteration_dir
from ..mapping import keeps_dtype, logical_tensors, MCORE_EMBED, mcore_tensors
from ..outputs import HF_CHECKPOINT
from ..progress import human_bytes, log, Progress
from ..transforms import from_mcore


class MCoreSource:
    """Rows of logical HF tensors, read from a torch_dist checkpoint through the mapping table."""

    def __init__(self, reader: dcp.DcpReader, cfg: Hy3Config, padded: int):
        self.reader, self.cfg = reader, cfg
        self.tensors = mcore_tensors(cfg, padded)
        self.shapes = {t.name: t.shape for t in logical_tensors(cfg)}
        self.where: dict[str, tuple] = {}
        for t in self.tensors:
            for e in range(t.experts or 1):
                start = 0
                for j, n in enumerate(t.sources(e if t.experts is not None else None)):
                    self.where[n] = (t, e if t.experts is not None else None, j, start)
                    start += self.shapes[n][0]
        self._local = threading.local()  # writer threads share this source; each keeps its own qkv
        self.skipped = 0  # optimizer-state tensors in the checkpoint, not converted

    def shape(self, name: str) -> tuple:
        return self.shapes[name]

    def dtype(self, name: str):
        return self.reader.dtype(self.where[name][0].key)

    def rows(self, name: str, r0: int, r1: int):
        t, e, j, start = self.where[name]
        if t.row.op == "qkv":
            cached = getattr(self._local, "qkv", None)
            if cached is None or cached[0] != t.key:
                full = self.reader.read(t.key, (0,) * len(t.shape), t.shape)
                parts = from_mcore("qkv", full, [self.shapes[n] for n in t.hf], self.cfg)
                cached = self._local.qkv = (t.key, dict(zip(t.hf, parts)))
            return cached[1][name][r0:r1]
        cols = tuple(t.shape[2:] if e is not None else t.shape[1:])
        if e is not None:
            x = self.reader.read(t.key, (e, start + r0) + (0,) * len(cols), (1, r1 - r0) + cols)
            return x[0]
        return self.reader.read(t.key, (start + r0,) + (0,) * len(cols), (r1 - r0,) + cols)


def mcore_to_hf(mcore_dir: str | Path, out: str | Path, hf_config: str | Path, fmt: str = "inner",
                iteration: int | None = None, workers: int = 4, max_shard_size: str = "5GB",
                dtype: str | None = None, overwrite: bool = False, quiet: bool = False,
                chunk_bytes: int = CHUNK_BYTES) -> dict:
    """chunk_bytes: the largest row block of an HF tensor assembled at once (tests set it small)."""
    if fmt not in ("inner", "outer"):
        raise Hy3Error(f"--format must be inner or outer, not {fmt!r}")
    cfg = load_config(hf_config)
    it = find_iteration_dir(mcore_dir, iteration)
    src = _open_source(it, cfg, hf_config)
    recorded, why = recorded_dtypes(it)
    if recorded is None:
        log(f"note: {why}: weights in {dtype or cfg.dtype or 'their stored dtype'}, "
            "the router's expert bias in fp32", quiet)
    out_dtype = _out_dtype(src, cfg, dtype, recorded)
    stage = StagedDir(out, HF_CHECKPOINT, [mcore_dir, it, hf_config], overwrite)
    tensors = layout_tensors(cfg, fmt, lambda n: _row_blocks(src, n, out_dtype(n), chunk_bytes),
                             lambda n: dtype_name(out_dtype(n)), str(it))
    groups = plan_shards(tensors, parse_size(max_shard_size))
    names = [shard_name(i, len(groups)) for i in range(len(groups))]
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(it.iterdir()) if p.is_file()]
    stage.open(plan_id({"v": 1, "it": str(it.resolve()), "stamp": stamp, "fmt": fmt, "dtype": dtype,
                        "shard": max_shard_size, "config": cfg.summary(), "dtypes": recorded}))
    todo = [(n, g) for n, g in zip(names, groups) if not stage.has(n)]
    if stage.resumed and len(todo) < len(groups):
        log(f"resuming {stage.partial}: {len(groups) - len(todo)} of {len(groups)} shards already written", quiet)
    prog = Progress("mcore->hf", sum(t.nbytes for _, g in todo for t in g), quiet)

    def write(name, group):
        digest = xxhash.xxh3_128()
        write_shard(stage.path(name), group, prog.add, digest)
        stage.path(name + ".xxh3").write_text(digest.hexdigest())  # for the manifest of a resumed run

    run_jobs(stage.partial, [lambda n=n, g=g: write(n, g) for n, g in todo], workers)
    seconds = prog.finish()
    total = sum(t.nbytes for t in tensors)
    write_index(stage.partial, {t.key: n for n, g in zip(names, groups) for t in g}, total)
    copy_other_files(carried_files(hf_config), stage.partial)
    write_manifest(stage.partial, f"hf-{fmt}", {"mcore_dir": str(Path(mcore_dir).resolve()), "iteration_dir": it.name},
                   _shard_checksums(stage, names))
    stage.finish()
    skipped = f"; skipped {src.skipped} optimizer-state tensors (not model weights)" if src.skipped else ""
    log(f"wrote {out}: {len(tensors)} tensors ({fmt} layout) in {len(groups)} shards, {human_bytes(total)} "
        f"in {seconds:.1f}s{skipped}", quiet)
    return {"output": str(out), "tensors": len(tensors), "shards": len(groups), "bytes": total, "seconds": seconds,
            "optimizer_tensors_skipped": src.skipped}


def _open_source(it: Path, cfg: Hy3Config, hf_config) -> MCoreSource:
    """The checkpoint's tensors through the mapping table, once they are known to be what the config implies."""
    reader = dcp.DcpReader(it)
    emb = MCORE_EMBED
    if emb not in reader.tensors:
        raise Hy3Error(f"{it}: no {emb}; not a Megatron GPT checkpoint")
    padded = reader.shape(emb)[0]
    if padded < cfg.vocab_size:
        raise Hy3Error(f"{it}: embedding has {padded} rows, {hf_config}/config.json says vocab_size {cfg.vocab_size}")
    src = MCoreSource(reader, cfg, padded)
    src.skipped = _check_against_config(reader, src, it, hf_config)
    return src


def _out_dtype(src: MCoreSource, cfg: Hy3Config, dtype: str | None, recorded: dict | None):
    """name -> the torch dtype it is written in. Floating-point weights: --dtype, else the dtype the HF
    checkpoint hf-to-mcore read had (`recorded`, from our manifest), else config.json's. The router's expert
    bias: the recorded dtype, else fp32, as HF Hy3 keeps it (transformers: _keep_in_fp32_modules_strict)."""
    import torch

    if dtype is not None and dtype not in {*CAST, *map(torch_name, CAST)}:
        raise Hy3Error(f"--dtype {dtype!r}: expected bf16, fp16 or fp32")
    target = torch_dtype(dtype or cfg.dtype) if (dtype or cfg.dtype) else None

    def out_dtype(name):
        bias = keeps_dtype(name)
        d = src.dtype(name)
        if recorded is not None and d.is_floating_point and (bias or dtype is None):
            return torch_dtype(recorded["tensors"].get(name, recorded["default"]))
        if bias:
            return torch.float32
        return target if (target is not None and d.is_floating_point) else d
    return out_dtype


def _row_blocks(src: MCoreSource, name: str, dtype, limit: int) -> list:
    """The bytes of one HF tensor as makers of row blocks of at most `limit` bytes, read when written."""
    import torch

    shape = src.shape(name)
    row = 1
    for s in shape[1:]:
        row *= s
    item = torch.empty((), dtype=dtype).element_size()
    step = max(1, limit // max(1, row * item))

    def make(a, b):
        return lambda: _tensor_bytes(src.rows(name, a, b).to(dtype))
    return [make(a, min(a + step, shape[0])) for a in range(0, shape[0], step)]


def _shard_checksums(stage: StagedDir, names: list[str]) -> dict:
    """name -> (bytes, xxh3-128) of every shard: from the mark its writer left, or read again (an older run)."""
    files = {}
    for n in names:
        mark = stage.path(n + ".xxh3")
        files[n] = (stage.path(n).stat().st_size, mark.read_text().strip() if mark.exists() else file_xxh3(stage.path(n)))
        mark.unlink(missing_ok=True)
    return files


def carried_files(hf_config) -> list[Path]:
    """What the HF output takes from the model directory: config.json, generation config, tokenizer files."""
    return sorted(p for p in Path(hf_config).iterdir() if _carried(p))


def _carried(p: Path) -> bool:
    return p.is_file() and not p.name.endswith(".safetensors") and p.name != "model.safetensors.index.json" \
        and not p.name.startswith(".") and p.name != MANIFEST


def _tensor_bytes(t) -> memoryview:
    """The tensor's bytes, without copying when it is already contiguous."""
    import torch

    return memoryview(t.contiguous().view(-1).view(torch.uint8).numpy())


# megatron-core names optimizer state `optimizer.…`; a ChainedOptimizer (MoE: one for dense, one for expert
# parameters) prefixes each part's keys with `chained_N.` (optimizer/optimizer.py, ChainedOptimizer.sharded_state_dict).
_OPTIMIZER_KEY = re.compile(r"(chained_\d+\.)?optimizer\.")


def is_optimizer_key(key: str) -> bool:
    return _OPTIMIZER_KEY.match(key) is not None


def _check_against_config(reader: dcp.DcpReader, src: MCoreSource, it: Path, hf_config) -> int:
    """Raises unless the checkpoint's model tensors are exactly the config's; returns the optimizer tensors skipped."""
    model_keys = {k for k in reader.keys() if not is_optimizer_key(k)}
    table = {t.key: t for t in src.tensors}
    missing = sorted(set(table) - model_keys)
    if missing:
        raise Hy3Error(f"{it}: missing tensor {missing[0]} that {hf_config}/config.json requires"
                       + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(model_keys - set(table))
    if extra:
        raise Hy3Error(f"{it}: tensor {extra[0]} is not covered by the Hy3 mapping table for this config"
                       + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for k, t in table.items():
        if reader.shape(k) != tuple(t.shape):
            raise Hy3Error(f"{it}: {k} has shape {list(reader.shape(k))}, {hf_config}/config.json implies {list(t.shape)}")
    return len(reader.keys()) - len(model_keys)
