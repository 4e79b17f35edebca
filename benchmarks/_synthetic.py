"""A synthetic Hy3 checkpoint at real widths, streamed to disk (never held in memory).

Real Hy3 widths (hidden 4096, expert FFN 1536, vocab 120832, 64 heads of 128, dense FFN 13312) with
fewer experts and layers, in the published (inner) layout: one tensor per expert, shards split by
size so that experts of a layer straddle shard files, and a Tencent-spelled config.json. The values
are finite bf16 numbers (a 64 MiB block of normal samples, read at a different offset per tensor),
so `hy3 check` passes on it; the router bias is fp32 as in the real checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from megatron_hy.config import Hy3Config, load_config
from megatron_hy.mapping import LAYER, logical_tensors
from megatron_hy.formats.safetensors_io import OutTensor, shard_name, write_index, write_shard

BUNDLED = Path(__file__).resolve().parent.parent / "megatron_hy" / "assets" / "hy3_config.json"
BLOCK_BYTES = 64 * 1024 * 1024


def synthetic_config(experts: int = 64, layers: int = 3, dense_layers: int = 1, mtp: int = 1) -> Hy3Config:
    real = load_config(BUNDLED)
    return dataclasses.replace(real, num_layers=layers, num_experts=experts, top_k=min(real.top_k, experts),
                               layer_types=tuple(["dense"] * dense_layers + ["sparse"] * (layers - dense_layers)),
                               num_mtp_layers=mtp)


def pattern_block(nbytes: int, seed: int = 0) -> memoryview:
    import numpy as np

    normal = np.random.default_rng(seed).standard_normal(nbytes // 2, dtype=np.float32) * 0.02
    return memoryview((normal.view(np.uint32) >> 16).astype("<u2").tobytes())  # bf16: the top 16 bits


def sources(block: memoryview, start: int, nbytes: int) -> list[memoryview]:
    """nbytes taken from the block cyclically, beginning at an even offset."""
    out, pos = [], start % len(block) & ~1
    while nbytes:
        n = min(nbytes, len(block) - pos)
        out.append(block[pos:pos + n])
        nbytes -= n
        pos = 0
    return out


def write_synthetic(root: str | Path, cfg: Hy3Config, shards: int = 7, on_shard=None) -> dict:
    root = Path(root)
    root.mkdir(parents=True)
    biggest = max(math.prod(t.shape) * 2 for t in logical_tensors(cfg))
    block = pattern_block(min(BLOCK_BYTES, biggest))
    tensors = []
    for i, t in enumerate(logical_tensors(cfg)):
        dtype = "F32" if t.name.endswith("mlp.expert_bias") else "BF16"
        nbytes = math.prod(t.shape) * (4 if dtype == "F32" else 2)
        tensors.append(OutTensor(t.name, dtype, t.shape, sources(block, i * 7_340_033, nbytes)))
    total = sum(t.nbytes for t in tensors)
    groups = [[] for _ in range(shards)]
    offset = 0
    for t in tensors:  # by byte position: equal shards, cut wherever a boundary falls (inside experts too)
        groups[min(offset * shards // total, shards - 1)].append(t)
        offset += t.nbytes
    groups = [g for g in groups if g]
    names = [shard_name(n, len(groups)) for n in range(len(groups))]
    for name, group in zip(names, groups):
        write_shard(root / name, group)
        if on_shard:
            on_shard(name, sum(t.nbytes for t in group))
    weight_map = {t.key: name for name, g in zip(names, groups) for t in g}
    write_index(root, weight_map, total)
    (root / "config.json").write_text(json.dumps(cfg.to_tencent(), indent=2) + "\n")
    (root / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    straddling = [i for i in cfg.moe_layers + cfg.mtp_layers
                  if len({f for k, f in weight_map.items() if k.startswith(LAYER.format(i=i) + "mlp.experts.")}) > 1]
    return {"bytes": total, "tensors": len(tensors), "shards": len(groups), "straddling_layers": straddling}


def add_synthetic_args(p, repeats: int, workers: int, doc: str) -> None:
    """The command-line flags every converter benchmark shares."""
    p.add_argument("--workdir", help="where to build and convert (default: a new directory under /tmp, deleted at the end)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--experts", type=int, default=64, help="routed experts per MoE layer (default 64)")
    p.add_argument("--layers", type=int, default=3, help="decoder layers (default 3)")
    p.add_argument("--dense-layers", type=int, default=1, help="leading dense layers (default 1)")
    p.add_argument("--mtp", type=int, default=1, help="MTP layers (default 1)")
    p.add_argument("--shards", type=int, default=7, help="shard files of the synthetic HF checkpoint (default 7)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed runs of each command (default {repeats})")
    p.add_argument("--workers", type=int, default=workers, help=f"converter --workers (default {workers}, its default)")
    p.add_argument("--warm", action="store_true", help="do not drop the page cache before each run")
    p.add_argument("--doc", default=doc, help="markdown file to update ('' = none)")
