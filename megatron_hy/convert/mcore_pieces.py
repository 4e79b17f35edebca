"""Which pieces Megatron stores for a Hy3 model, read from megatron-core itself.

The Hy3 GPTModel is built on the meta device (TP=PP=EP=1) in a CPU process and its
`sharded_state_dict()` is walked: every ShardedTensor's key, global shape and region (one per expert,
GLU gate and up halves apart) becomes a `Piece`, and every ShardedObject a unique key. That is the
layout `megatron sft` saves and loads; the HF -> torch_dist writer fills it from the mapping table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..config import config_from_dict, Hy3Config
from ..mapping import MCORE_MTP_TE_MODULES, mcore_prefix, mcore_tensors
from ..megatron.harness import apply_cpu_shims, CPU_CONFIG, free_port, init_parallel, run_distributed
from ..megatron.model import build_gpt_model, make_transformer_config
from ..megatron.weights import model_sharded_state_dict


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

    init_parallel()
    cfg = config_from_dict(cfg_dict)
    tconfig = make_transformer_config(cfg, **CPU_CONFIG, params_dtype=torch.bfloat16, perform_initialization=False)
    with torch.device("meta"):
        model = build_gpt_model(cfg, tconfig, padded_vocab=padded_vocab, use_te=False)
    pieces, objects = [], []
    # Tensors of standalone transformer-engine ops in the TE spec (GPU training): TE ops carry an
    # `_extra_state` that the TE model asks the checkpoint for.
    te_ops = {t.key for t in mcore_tensors(cfg, padded_vocab) if t.row.te_op}
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
            if node.key in te_ops:
                objects.append(_extra_state(node.key.rsplit(".", 1)[0]))
        elif isinstance(node, ShardedObject):
            objects.append(node.unique_key)
    # under the MTP layers' decoder layers, whatever megatron-core names them (mcore_versions.MTP_LAYER_RENAMED)
    mtp = tuple(mcore_prefix(cfg, i, "mtp") for i in cfg.mtp_layers)
    ends = tuple("." + m for m in MCORE_MTP_TE_MODULES)
    for name, _ in model.named_modules():
        if name.startswith(mtp) and name.endswith(ends):
            objects.append(_extra_state(name))
    return {"pieces": sorted(pieces, key=lambda p: (p.key, p.offsets)), "objects": sorted(set(objects))}


def _extra_state(module: str) -> str:
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject(module + "._extra_state", None, (1,), (0,), replica_id=0).unique_key


def megatron_layout(cfg: Hy3Config, padded_vocab: int, in_process: bool = False) -> dict:
    """Megatron's pieces for this model. in_process builds the meta-device model in this process (a
    one-shot CLI process: saves starting another); otherwise in a fresh process, keeping the caller clean."""
    args = ({**cfg.to_transformers(), "model_type": "hy_v3"}, padded_vocab)
    if not in_process:
        return run_distributed(_layout_rank, 1, *args)[0]
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

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


def empty_extra_state():
    """What a transformer-engine module saves as `_extra_state` without FP8: TE 2.x
    TransformerEngineBaseModule.get_extra_state returns `torch.empty(0, dtype=torch.uint8)` (and fusible
    ops such as RMSNorm the same); set_extra_state returns at once for an empty tensor."""
    import torch

    return torch.empty(0, dtype=torch.uint8)
