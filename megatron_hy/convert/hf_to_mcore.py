"""`hy3 convert hf-to-mcore`: an HF Hy3 checkpoint as a Megatron `torch_dist` checkpoint, written offline
with bounded memory (reading one back is mcore_to_hf.py).

The pieces each Megatron tensor is stored in come from megatron-core itself (mcore_pieces.py); the
mapping table says which HF tensors fill each piece; every piece is split by rows into chunks of at
most 64 MB, read from the HF files and written into DCP data files (dcp.py) in the directory layout
ms-swift's `megatron sft --mcore_model` loads (torch_dist.py), with a manifest of what was written.
DCP reshards on load, so the checkpoint loads under any TP/PP/EP/ETP.
"""

from __future__ import annotations

import json
import math
import os
import threading
from argparse import Namespace
from pathlib import Path

from .. import __version__
from ..config import Hy3Config
from ..dtypes import CAST, torch_dtype
from ..errors import Hy3Error
from ..formats import dcp
from ..formats.hf_checkpoint import HFCheckpoint
from ..formats.hf_writer import run_jobs
from ..formats.manifest import dtype_record, write_manifest
from ..formats.safetensors_io import CHUNK_BYTES, parse_size, read_array
from ..formats.staging import plan_id, StagedDir
from ..formats.torch_dist import iter_dir_name, TRACKER, write_iteration_files
from ..mapping import keeps_dtype, mcore_tensors, MCoreTensor
from ..megatron.config import check_supported
from ..megatron.weights import check_covered
from ..outputs import TORCH_DIST
from ..progress import human_bytes, log, Progress
from ..transforms import to_mcore
from .mcore_pieces import empty_extra_state, megatron_layout


# --- HF -> Megatron regions ---------------------------------------------------------------------

class HFSource:
    """Rows of global Megatron tensors (or of one expert's slice), read from an HF checkpoint."""

    def __init__(self, hf: HFCheckpoint, tensors: dict[str, MCoreTensor], dtype=None):
        self.hf, self.tensors, self.dtype = hf, tensors, dtype
        self._local = threading.local()  # writer threads share this source; each keeps its own qkv

    def rows(self, t: MCoreTensor, expert: int | None, r0: int, r1: int):
        import torch

        names = t.sources(expert)
        if t.row.op == "qkv":
            cached = getattr(self._local, "qkv", None)
            if cached is None or cached[0] != t.key:
                cached = self._local.qkv = (t.key, to_mcore("qkv", [self.hf.read(n) for n in names], self.hf.config))
            out = cached[1][r0:r1]
        else:
            spans, start = [], 0
            for n in names:
                rows = self.hf.logical[n].shape[0]
                lo, hi = max(r0, start), min(r1, start + rows)
                if hi > lo:
                    spans.append((n, lo - start, hi - start))
                start += rows
            # One source tensor (the usual case): read into this thread's reused buffer; the chunk is
            # written out before the thread reads again.
            parts = [self._read_rows(n, a, b, reuse=len(spans) == 1 and r1 <= start) for n, a, b in spans]
            if t.row.op == "vocab" and r1 > start:
                cols = t.shape[1:]
                parts.append(torch.zeros((r1 - max(r0, start),) + tuple(cols), dtype=parts[0].dtype if parts else
                                         torch_dtype(self.hf.dtype(names[0]))))
            out = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
        if self.dtype is None or keeps_dtype(t.key):
            return out  # megatron-core keeps the router's expert bias in fp32
        return out.to(self.dtype)

    def _read_rows(self, name: str, r0: int, r1: int, reuse: bool = False):
        import torch

        shape = self.hf.logical[name].shape
        file, off, _ = self.hf.source(name)
        row = 1
        for s in shape[1:]:
            row *= s
        item = self.hf.info(name).itemsize
        buf = read_array(file, off + r0 * row * item, (r1 - r0) * row * item, reuse=reuse, drop_cache=True)
        return torch.from_numpy(buf).view(torch_dtype(self.hf.dtype(name))).reshape((r1 - r0,) + tuple(shape[1:]))


def plan_chunks(layout: dict, tensors: dict[str, MCoreTensor], source: HFSource, limit: int = CHUNK_BYTES) -> list:
    """Every DCP chunk to write: each Megatron piece, split by rows to at most `limit` bytes."""
    chunks = []
    for p in layout["pieces"]:
        t = tensors.get(p.key)
        if t is None:
            raise Hy3Error(f"Megatron model tensor {p.key} is not covered by the Hy3 mapping table")
        item = torch_itemsize(source, t)
        expert = p.offsets[0] if t.experts is not None else None
        row_axis = p.prepend
        row_elems = 1
        for s in p.sizes[row_axis + 1:]:
            row_elems *= s
        if any(o for o in p.offsets[row_axis + 1:]):
            raise Hy3Error(f"{p.key}: Megatron piece split along columns at TP 1, unexpected")
        step = max(1, limit // max(1, row_elems * item))
        r_start, r_count = p.offsets[row_axis], p.sizes[row_axis]
        for r0 in range(r_start, r_start + r_count, step):
            r1 = min(r_start + r_count, r0 + step)
            offsets = p.offsets[:row_axis] + (r0,) + p.offsets[row_axis + 1:]
            sizes = p.sizes[:row_axis] + (r1 - r0,) + p.sizes[row_axis + 1:]
            chunks.append(dcp.Chunk(p.key, offsets, sizes, _maker(source, t, expert, r0, r1, p.prepend)))
    return chunks


def chunk_dtype(source: HFSource, t: MCoreTensor):
    if source.dtype is None or keeps_dtype(t.key):
        return torch_dtype(source.hf.dtype(t.sources(0 if t.experts is not None else None)[0]))
    return source.dtype


def torch_itemsize(source: HFSource, t: MCoreTensor) -> int:
    import torch

    return torch.empty((), dtype=chunk_dtype(source, t)).element_size()


def _maker(source: HFSource, t: MCoreTensor, expert, r0: int, r1: int, prepend: int):
    def make():
        x = source.rows(t, expert, r0, r1)
        for _ in range(prepend):
            x = x.unsqueeze(0)
        return x
    return make


def _balance(chunks: list, files: int) -> list[list]:
    """Deterministic split of chunks into files of similar byte size, keeping each tensor's chunks in order."""
    sizes = [math.prod(c.sizes) for c in chunks]
    total = sum(sizes) or 1
    out: list[list] = [[] for _ in range(files)]
    acc = 0
    for c, s in zip(chunks, sizes):
        idx = min(files - 1, int(acc * files / total))
        out[idx].append(c)
        acc += s
    return [b for b in out if b]


def hf_to_mcore(hf_dir: str | Path, out: str | Path, workers: int = 4, dtype: str | None = None,
                padded_vocab: int | None = None, iteration: int = 1, overwrite: bool = False,
                quiet: bool = False, max_file_size: str = "2GB", in_process: bool = False,
                chunk_bytes: int = CHUNK_BYTES) -> dict:
    """chunk_bytes: the largest chunk a Megatron piece is split into by rows (tests set it small)."""
    hf = HFCheckpoint(hf_dir)
    cfg = hf.config
    padded, target = _check_args(cfg, padded_vocab, dtype, workers)
    stage = StagedDir(out, TORCH_DIST, [hf.root, *hf.files()], overwrite)
    log(f"reading Megatron's layout for this model (meta-device GPTModel, {cfg.num_layers} layers)", quiet)
    layout = megatron_layout(cfg, padded, in_process)
    tensors = {t.key: t for t in mcore_tensors(cfg, padded)}

    check_covered(cfg, {p.key for p in layout["pieces"]}, padded)
    source = HFSource(hf, tensors, target)
    chunks = plan_chunks(layout, tensors, source, chunk_bytes)
    elem_bytes = {id(c): _chunk_bytes(c, source, tensors) for c in chunks}
    # Data files are the unit of resume: at least one per worker, and none much above max_file_size.
    by_size = -(-sum(elem_bytes.values()) // parse_size(max_file_size))
    n_files = max(1, min(len(chunks), max(workers, by_size)))
    groups = _balance(chunks, n_files)
    objects = [dcp.ObjectItem(k, [empty_extra_state()]) for k in layout["objects"]]
    names = [f"__{i}_0.distcp" for i in range(len(groups))]
    inputs = sorted({hf.source(n)[0] for n in hf.names()})
    stamp = [(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in inputs]
    plan = plan_id({"v": 1, "inputs": stamp, "dtype": dtype, "padded": padded, "iteration": iteration,
                    "files": [[(c.key, c.offsets, c.sizes) for c in g] for g in groups], "objects": layout["objects"]})
    stage.open(plan)
    it = stage.path(iter_dir_name(iteration))
    it.mkdir(exist_ok=True)
    done, seconds = _write_data_files(stage, it, names, groups, objects, elem_bytes, workers, quiet)
    specs = [dcp.TensorSpec(k, tensors[k].shape, chunk_dtype(source, tensors[k])) for k in sorted({c.key for c in chunks})]
    dcp.write_metadata(it, specs, [done[n] for n in names])
    _write_small_files(stage.partial, it, iteration, hf, padded, [done[n] for n in names])
    stage.finish()
    total = sum(d.nbytes for d in done.values())
    log(f"wrote {out}: {len(tensors)} Megatron tensors in {len(chunks)} chunks, {len(names)} files, "
        f"{human_bytes(total)} in {seconds:.1f}s", quiet)
    return {"output": str(out), "tensors": len(tensors), "chunks": len(chunks), "files": len(names),
            "bytes": total, "seconds": seconds}


def _check_args(cfg: Hy3Config, padded_vocab: int | None, dtype: str | None, workers: int) -> tuple:
    """(padded vocabulary, torch dtype of the weights or None to keep the HF dtypes), or a clear error."""
    check_supported(cfg)
    padded = padded_vocab or cfg.vocab_size
    if padded < cfg.vocab_size:
        raise Hy3Error(f"--padded-vocab {padded} is smaller than the vocabulary ({cfg.vocab_size})")
    if dtype is not None and dtype not in CAST:
        raise Hy3Error(f"--dtype {dtype!r}: expected bf16, fp16 or fp32")
    target = torch_dtype(dtype) if dtype is not None else None
    if workers < 1:
        raise Hy3Error(f"--workers {workers}: expected at least 1")
    return padded, target


def _write_data_files(stage: StagedDir, it: Path, names: list[str], groups: list[list], objects: list,
                      elem_bytes: dict, workers: int, quiet: bool) -> tuple[dict, float]:
    """Write the data files a previous run did not finish (the byte objects go into the first one).
    Returns every file's dcp.FileResult by name, and the seconds taken."""
    done = {n: dcp.read_file_result(it / n) for n in names}
    todo = [(i, n) for i, n in enumerate(names) if done[n] is None]
    if stage.resumed and len(todo) < len(names):
        log(f"resuming {stage.partial}: {len(names) - len(todo)} of {len(names)} data files already written", quiet)
    prog = Progress("hf->mcore", sum(elem_bytes[id(c)] for i, _ in todo for c in groups[i]), quiet)
    results = run_jobs(stage.partial, [lambda i=i, n=n: dcp.write_file(it / n, groups[i], objects if i == 0 else [], prog.add)
                                       for i, n in todo], workers)
    for (_, n), r in zip(todo, results):
        done[n] = r
    return done, prog.finish()


def _write_small_files(root: Path, it: Path, iteration: int, hf: HFCheckpoint, padded: int, files: list) -> None:
    """common.pt, metadata.json, the tracker, args.json and the manifest; the data files' sidecars go."""
    hf_dir = hf.root
    _write_common(it, iteration, hf.config, padded, hf_dir)
    (root / TRACKER).write_text(str(iteration))
    (root / "args.json").write_text(json.dumps(
        {"model": str(Path(hf_dir).resolve()), "tuner_type": "full", "mcore_model": None,
         "padded_vocab_size": padded, "converted_by": f"megatron-hy {__version__}"}, indent=2) + "\n")
    for f in files:
        (it / (f.name + ".items.json")).unlink(missing_ok=True)
    write_manifest(root, "torch_dist", {"hf_dir": str(Path(hf_dir).resolve()), "layout": hf.layout,
                                        "dtypes": dtype_record({n: hf.dtype(n) for n in hf.names()})},
                   {f"{iter_dir_name(iteration)}/{f.name}": (f.nbytes, f.xxh3) for f in files})


def _chunk_bytes(c, source, tensors) -> int:
    return math.prod(c.sizes) * torch_itemsize(source, tensors[c.key])


def _write_common(it: Path, iteration: int, cfg: Hy3Config, padded: int, hf_dir) -> None:
    args = Namespace(tensor_model_parallel_size=1, pipeline_model_parallel_size=1, expert_model_parallel_size=1,
                     no_save_optim=True, no_save_rng=True, consumed_train_samples=0, padded_vocab_size=padded,
                     hy3_converted_from=str(Path(hf_dir).resolve()), hy3_version=__version__)
    write_iteration_files(it, args, iteration)
