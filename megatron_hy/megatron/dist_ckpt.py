"""Megatron `torch_dist` checkpoints of Hy3, written offline with bounded memory (`hy3 convert hf-to-mcore`;
reading them back is mcore_to_hf.py).

Directory layout (what ms-swift's `megatron sft --mcore_model` loads and `swift export --to_mcore`
writes):

    OUT/latest_checkpointed_iteration.txt      "1"
    OUT/args.json                              model path and tuner type, read by ms-swift
    OUT/iter_0000001/metadata.json             dist_checkpointing backend: torch_dist
    OUT/iter_0000001/common.pt                 args (TP/PP, no optimizer, no RNG), content metadata
    OUT/iter_0000001/.metadata, __*_0.distcp   the PyTorch DCP with every model tensor
    OUT/hy3-manifest.json                      what was written, with sha256 per file

Keys, global shapes and the pieces each tensor is stored in come from megatron-core itself: the Hy3
GPTModel is built on the meta device (TP=PP=EP=1) in a CPU process and its `sharded_state_dict()`
is read. The mapping table says which HF tensors fill each piece. DCP reshards on load, so the
checkpoint loads under any TP/PP/EP/ETP.
"""

from __future__ import annotations

import json
import os
import threading
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..config import Hy3Config
from ..errors import Hy3Error
from ..hf_checkpoint import HFCheckpoint
from ..hf_writer import kill_hook, run_jobs
from ..mapping import MCoreTensor, mcore_tensors
from ..progress import Progress, human_bytes, log
from ..safetensors_io import parse_size, torch_dtype
from ..staging import StagedDir, plan_id
from ..transforms import to_mcore
from . import dcp

TRACKER = "latest_checkpointed_iteration.txt"
MANIFEST = "hy3-manifest.json"
CHUNK_BYTES = 64 * 1024 * 1024
# What ms-swift passes to sharded_state_dict() and records as content metadata (megatron_lm_utils).
CONTENT_METADATA = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True,
                    "distrib_optim_sharding_type": "dp_reshardable"}


def iter_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


# --- the layout, from megatron-core ------------------------------------------------------------

@dataclass(frozen=True)
class Piece:
    """One ShardedTensor of the TP=PP=EP=1 model: a region of a global tensor."""
    key: str
    global_shape: tuple
    offsets: tuple   # global offsets, prepended (expert) axes included
    sizes: tuple     # region sizes, prepended axes are 1
    prepend: int


def _layout_rank(rank: int, world: int, cfg_dict: dict, padded_vocab: int) -> dict:
    import torch
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, ShardedTensorFactory

    from ..config import config_from_dict
    from .harness import CPU_CONFIG, init_parallel
    from .model import build_gpt_model, make_transformer_config
    from .weights import model_sharded_state_dict

    init_parallel()
    cfg = config_from_dict(cfg_dict)
    tconfig = make_transformer_config(cfg, **CPU_CONFIG, params_dtype=torch.bfloat16, perform_initialization=False)
    with torch.device("meta"):
        model = build_gpt_model(cfg, tconfig, padded_vocab=padded_vocab, use_te=False)
    pieces, objects = [], []
    stack = [model_sharded_state_dict(model)]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, ShardedTensorFactory):
            stack.append(node.build())
        elif isinstance(node, ShardedTensor):
            n = node.prepend_axis_num
            pieces.append(Piece(node.key, tuple(node.global_shape), tuple(node.global_offset),
                                (1,) * n + tuple(node.local_shape), n))
            if node.key.endswith("norm.weight"):
                # Standalone norms are transformer-engine RMSNorm ops in the TE spec (GPU training), and
                # TE ops carry an `_extra_state` that the TE model asks the checkpoint for.
                objects.append(ShardedObject(node.key[: -len("weight")] + "_extra_state", None,
                                             (1,), (0,), replica_id=0).unique_key)
        elif isinstance(node, ShardedObject):
            objects.append(node.unique_key)
    for name, _ in model.named_modules():
        if name.startswith("mtp.layers.") and name.endswith(".self_attention.core_attention"):
            # In the TE spec the attention core is TE's DotProductAttention, a TE module with an
            # `_extra_state`. megatron-core's TEDotProductAttention.sharded_state_dict leaves it out,
            # but MultiTokenPredictionBlock.sharded_state_dict also adds its layers' plain
            # state_dict, which has it, so the TE model asks the checkpoint for it in MTP layers.
            objects.append(ShardedObject(name + "._extra_state", None, (1,), (0,), replica_id=0).unique_key)
    return {"pieces": sorted(pieces, key=lambda p: (p.key, p.offsets)), "objects": sorted(set(objects))}


def empty_extra_state():
    """What a transformer-engine module saves as `_extra_state` without FP8: TE 2.x
    TransformerEngineBaseModule.get_extra_state returns `torch.empty(0, dtype=torch.uint8)` (and fusible
    ops such as RMSNorm the same); set_extra_state returns at once for an empty tensor."""
    import torch

    return torch.empty(0, dtype=torch.uint8)


def megatron_layout(cfg: Hy3Config, padded_vocab: int, in_process: bool = False) -> dict:
    """Megatron's pieces for this model. in_process builds the meta-device model in this process (a
    one-shot CLI process: saves starting another); otherwise in a fresh process, keeping the caller clean."""
    args = ({**cfg.to_transformers(), "model_type": "hy_v3"}, padded_vocab)
    if not in_process:
        from .harness import run_distributed

        return run_distributed(_layout_rank, 1, *args)[0]
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from .harness import apply_cpu_shims, free_port

    apply_cpu_shims()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        return _layout_rank(0, 1, *args)
    finally:
        ps.destroy_model_parallel()
        if owned:
            dist.destroy_process_group()


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
        if self.dtype is None or t.key.endswith("router.expert_bias"):
            return out  # megatron-core keeps the router's expert bias in fp32
        return out.to(self.dtype)

    def _read_rows(self, name: str, r0: int, r1: int, reuse: bool = False):
        import torch

        from ..safetensors_io import read_array

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
    if source.dtype is None or t.key.endswith("router.expert_bias"):
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
    import math

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
                quiet: bool = False, max_file_size: str = "2GB", in_process: bool = False) -> dict:
    import torch

    hf = HFCheckpoint(hf_dir)
    cfg = hf.config
    from .config import check_supported

    check_supported(cfg)
    padded = padded_vocab or cfg.vocab_size
    if padded < cfg.vocab_size:
        raise Hy3Error(f"--padded-vocab {padded} is smaller than the vocabulary ({cfg.vocab_size})")
    target = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16, None: None}.get(dtype, "bad")
    if target == "bad":
        raise Hy3Error(f"--dtype {dtype!r}: expected bf16, fp16 or fp32")
    log(f"reading Megatron's layout for this model (meta-device GPTModel, {cfg.num_layers} layers)", quiet)
    layout = megatron_layout(cfg, padded, in_process)
    tensors = {t.key: t for t in mcore_tensors(cfg, padded)}
    from .weights import check_covered

    check_covered(cfg, {p.key for p in layout["pieces"]}, padded)
    source = HFSource(hf, tensors, target)
    chunks = plan_chunks(layout, tensors, source)
    if workers < 1:
        raise Hy3Error(f"--workers {workers}: expected at least 1")
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
    stage = StagedDir(out, plan, overwrite).open()
    it = stage.path(iter_dir_name(iteration))
    it.mkdir(exist_ok=True)
    done = {n: dcp.read_file_result(it / n) for n in names}
    todo = [(i, n) for i, n in enumerate(names) if done[n] is None]
    if stage.resumed and len(todo) < len(names):
        log(f"resuming {stage.partial}: {len(names) - len(todo)} of {len(names)} data files already written", quiet)
    prog = Progress("hf->mcore", sum(elem_bytes[id(c)] for i, _ in todo for c in groups[i]), quiet)
    on_bytes = kill_hook(prog.add)
    results = run_jobs(stage.partial, [lambda i=i, n=n: dcp.write_file(it / n, groups[i], objects if i == 0 else [], on_bytes)
                                       for i, n in todo], workers)
    for (_, n), r in zip(todo, results):
        done[n] = r
    seconds = prog.finish()
    specs = [dcp.TensorSpec(k, tensors[k].shape, chunk_dtype(source, tensors[k])) for k in sorted({c.key for c in chunks})]
    dcp.write_metadata(it, specs, [done[n] for n in names])
    _write_common(it, iteration, cfg, padded, hf_dir)
    (stage.partial / TRACKER).write_text(str(iteration))
    (stage.partial / "args.json").write_text(json.dumps(
        {"model": str(Path(hf_dir).resolve()), "tuner_type": "full", "mcore_model": None,
         "padded_vocab_size": padded, "converted_by": f"megatron-hy {__version__}"}, indent=2) + "\n")
    for n in names:
        (it / (n + ".items.json")).unlink(missing_ok=True)
    write_manifest(stage.partial, "torch_dist", {"hf_dir": str(Path(hf_dir).resolve()), "layout": hf.layout},
                   {f"{iter_dir_name(iteration)}/{n}": (done[n].nbytes, done[n].sha256) for n in names})
    stage.finish()
    total = sum(d.nbytes for d in done.values())
    log(f"wrote {out}: {len(tensors)} Megatron tensors in {len(chunks)} chunks, {len(names)} files, "
        f"{human_bytes(total)} in {seconds:.1f}s", quiet)
    return {"output": str(out), "tensors": len(tensors), "chunks": len(chunks), "files": len(names),
            "bytes": total, "seconds": seconds}


def _chunk_bytes(c, source, tensors) -> int:
    import math

    return math.prod(c.sizes) * torch_itemsize(source, tensors[c.key])


def _write_common(it: Path, iteration: int, cfg: Hy3Config, padded: int, hf_dir) -> None:
    import torch

    args = Namespace(tensor_model_parallel_size=1, pipeline_model_parallel_size=1, expert_model_parallel_size=1,
                     no_save_optim=True, no_save_rng=True, consumed_train_samples=0, padded_vocab_size=padded,
                     hy3_converted_from=str(Path(hf_dir).resolve()), hy3_version=__version__)
    common = {"args": args, "checkpoint_version": 3.0, "iteration": iteration, "content_metadata": CONTENT_METADATA}
    torch.save(common, it / "common.pt")
    (it / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                                                  "common_backend": "torch", "common_backend_version": 1}))


def file_xxh3(path: Path) -> str:
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(root: Path, kind: str, source: dict, files: dict) -> None:
    data = {"format": kind, "created_by": f"megatron-hy {__version__}", "source": source, "checksum": "xxh3_128",
            "files": {k: {"bytes": n, "xxh3_128": h} for k, (n, h) in sorted(files.items())}}
    (root / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")


# --- reading ------------------------------------------------------------------------------------

def find_iteration_dir(root: str | Path, iteration: int | None = None) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise Hy3Error(f"{root}: not a directory")
    if (root / "metadata.json").exists() and (root / dcp.METADATA).exists():
        return root  # an iteration directory itself
    if iteration is None:
        tracker = root / TRACKER
        if not tracker.exists():
            raise Hy3Error(f"{root}: no {TRACKER} and no iter_* directory given; not a Megatron torch_dist checkpoint")
        text = tracker.read_text().strip()
        if not text.isdigit():
            raise Hy3Error(f"{tracker}: expected an iteration number, found {text[:40]!r}")
        iteration = int(text)
    it = root / iter_dir_name(iteration)
    if not it.is_dir():
        raise Hy3Error(f"{root}: no {iter_dir_name(iteration)} directory for iteration {iteration}")
    meta = it / "metadata.json"
    if not meta.exists():
        raise Hy3Error(f"{it}: no metadata.json; not a dist_checkpointing directory")
    try:
        backend = json.loads(meta.read_text()).get("sharded_backend")
    except json.JSONDecodeError:
        raise Hy3Error(f"{meta}: not valid JSON") from None
    if backend != "torch_dist":
        raise Hy3Error(f"{it}: sharded backend is {backend!r}; only torch_dist checkpoints are supported")
    return it


# --- a live model through megatron-core's own checkpointing ----------------------------------------

def save_with_megatron(model, out: str | Path, iteration: int = 1) -> Path:
    """megatron-core's dist_checkpointing.save of a live model, laid out as ms-swift saves one.
    Every rank calls it."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    from .weights import model_sharded_state_dict

    it = Path(out) / iter_dir_name(iteration)
    if dist.get_rank() == 0:
        it.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    args = Namespace(tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
                     pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
                     expert_model_parallel_size=ps.get_expert_model_parallel_world_size(),
                     no_save_optim=True, no_save_rng=True, consumed_train_samples=0)
    state = {"model": model_sharded_state_dict(model), "args": args, "checkpoint_version": 3.0, "iteration": iteration}
    dist_checkpointing.save(state, str(it), content_metadata=CONTENT_METADATA)
    dist.barrier()
    if dist.get_rank() == 0:
        (Path(out) / TRACKER).write_text(str(iteration))
    return it


# --- loading into a live model through megatron-core ---------------------------------------------

def load_mcore_into_model(model, mcore_dir: str | Path, iteration: int | None = None) -> None:
    """What ms-swift does for --mcore_model: dist_checkpointing.load into the model's sharded state dict."""
    from megatron.core import dist_checkpointing

    from .weights import model_sharded_state_dict

    it = find_iteration_dir(mcore_dir, iteration)
    state = dist_checkpointing.load({"model": model_sharded_state_dict(model)}, str(it))
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    bad = [k for k in missing if not k.endswith("_extra_state")]
    if bad:
        raise Hy3Error(f"{it}: the checkpoint did not provide {bad[0]}")
