"""Move weights between HF Hy3 tensors and a live Megatron model, through Megatron's own sharding.

The mapping table says what each *global* Megatron tensor is made of. Which piece of it this
rank holds (TP/EP/ETP/PP, vocab padding, gate/up halves) comes from the model's
`sharded_state_dict()`: each ShardedTensor carries its key, global shape and offset, and its data
is a view of the live parameter. So loading writes straight into the parameters, and exporting
reads straight out of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..config import Hy3Config
from ..errors import Hy3Error
from ..formats.torch_dist import find_iteration_dir
from ..mapping import logical_tensors, mcore_tensors
from ..transforms import to_mcore


def sharded_tensors(sharded_state_dict) -> Iterator:
    """Every ShardedTensor in a (nested) sharded state dict, building factories (GLU halves)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, ShardedTensorFactory

    stack = [sharded_state_dict]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, (list, tuple)):
            stack.extend(reversed(list(node)))
        elif isinstance(node, ShardedTensorFactory):
            stack.append(node.build())
        elif isinstance(node, ShardedTensor):
            yield node
        elif isinstance(node, ShardedObject) or node is None:
            continue


def sharded_entries(sharded_state_dict) -> Iterator:
    """Every ShardedTensor, ShardedObject and ShardedTensorFactory (unbuilt) of a nested sharded state dict."""
    from megatron.core.dist_checkpointing.mapping import ShardedBase

    stack = [sharded_state_dict]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, ShardedBase):
            yield node


def model_sharded_state_dict(model) -> dict:
    """model.sharded_state_dict() with the metadata ms-swift's checkpointing passes."""
    from megatron.core import parallel_state as ps

    meta = {"singleton_local_shards": False, "dp_cp_group": ps.get_data_parallel_group(with_context_parallel=True)}
    return model.sharded_state_dict(metadata=meta)


def local_region(st) -> tuple[tuple[int, ...], tuple]:
    """(indices of the prepended axes, slices of the remaining axes) of a ShardedTensor's data."""
    n = st.prepend_axis_num
    pre = tuple(st.global_offset[:n])
    slices = tuple(slice(o, o + s) for o, s in zip(st.global_offset[n:], st.local_shape))
    return pre, slices


def load_mcore_into_model(models: list, mcore_dir: str | Path, iteration: int | None = None,
                          rename: Callable[[str], str] | None = None) -> None:
    """What ms-swift does for --mcore_model: dist_checkpointing.load into the model chunks' sharded state dicts
    (one chunk: key `model`; with virtual pipeline stages: `model0`, `model1`, ... as Megatron names them).

    rename(key) gives the checkpoint's key of each of the model's tensors and objects (a model of some of the
    checkpoint's layers, mapping.LayerSubset.mcore_key): dist_checkpointing reads just those."""
    from megatron.core import dist_checkpointing

    it = find_iteration_dir(mcore_dir, iteration)
    names = ["model"] if len(models) == 1 else [f"model{i}" for i in range(len(models))]
    request = {n: model_sharded_state_dict(m) for n, m in zip(names, models)}
    if rename is not None:
        for sh in sharded_entries(request):
            sh.key = rename(sh.key)
    state = dist_checkpointing.load(request, str(it))
    for n, m in zip(names, models):
        missing, unexpected = m.load_state_dict(state[n], strict=False)
        bad = [k for k in missing if not k.endswith("_extra_state")]
        if bad:
            raise Hy3Error(f"{it}: the checkpoint did not provide {bad[0]}")


def load_into_model(model, cfg: Hy3Config, read: Callable[[str], "object"], padded_vocab: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> int:
    """Fill every parameter and buffer of a Megatron Hy3 model from HF logical tensors.

    read(name) returns a logical HF tensor. Returns the number of ShardedTensors filled.
    A Megatron tensor the mapping does not cover fails loudly, naming its key.
    progress(done, total) is called as each decoder or MTP layer of this model is filled.
    """
    import torch

    table = {t.key: t for t in mcore_tensors(cfg, padded_vocab)}
    cache: dict = {}
    filled = 0
    pieces = list(sharded_tensors(model_sharded_state_dict(model)))
    layers = sorted({table[st.key].layer for st in pieces if st.key in table and table[st.key].layer is not None})
    done: set = set()
    with torch.no_grad():
        for st in pieces:
            t = table.get(st.key)
            if t is None:
                raise Hy3Error(f"Megatron model tensor {st.key} is not covered by the Hy3 mapping table")
            if progress and t.layer is not None and t.layer not in done:
                if done:
                    progress(len(done), len(layers))
                done.add(t.layer)
            if st.flattened_range is not None:
                raise Hy3Error(f"{st.key}: flattened (optimizer) shards are not model weights")
            pre, slices = local_region(st)
            if t.experts is not None:
                if len(pre) != 1:
                    raise Hy3Error(f"{st.key}: expected one expert axis, got offsets {st.global_offset}")
                piece = to_mcore(t.row.op, [read(n) for n in t.sources(pre[0])], cfg)
            else:
                if pre:
                    raise Hy3Error(f"{st.key}: unexpected stacked axes {pre}")
                if st.key not in cache:
                    cache = {st.key: to_mcore(t.row.op, [read(n) for n in t.hf], cfg, rows=t.shape[0])}
                piece = cache[st.key]
            if tuple(piece.shape) != tuple(t.shape[1:] if t.experts is not None else t.shape):
                raise Hy3Error(f"{st.key}: built shape {list(piece.shape)}, Megatron expects {list(t.shape)}")
            st.data.copy_(piece[slices].to(st.data.dtype))
            filled += 1
    if progress and done:
        progress(len(done), len(layers))
    return filled


def add_lora_delta(model, cfg: Hy3Config, adapter, padded_vocab: int | None = None) -> int:
    """Add an adapter's delta to a live Megatron model, computed in Megatron's layout (global tensor by
    global tensor, through `adapter.mcore_delta`) and sliced per rank by Megatron's own sharding."""
    import torch

    table = {t.key: t for t in mcore_tensors(cfg, padded_vocab)}
    shapes = {t.name: t.shape for t in logical_tensors(cfg)}
    cache: dict = {}
    added = 0
    with torch.no_grad():
        for st in sharded_tensors(model_sharded_state_dict(model)):
            t = table[st.key]
            pre, slices = local_region(st)
            expert = pre[0] if t.experts is not None else None
            ck = (st.key, expert)
            if ck not in cache:
                cache = {ck: adapter.mcore_delta(t, expert, shapes)}
            delta = cache[ck]
            if delta is None:
                continue
            st.data.add_(delta[slices].to(st.data.dtype))
            added += 1
    return added


@dataclass
class Piece:
    key: str
    global_shape: tuple
    prepend: tuple
    slices: tuple
    data: object  # a CPU tensor


def export_pieces(model, owner_only: bool = True) -> list[Piece]:
    """The pieces of global tensors this rank holds (for gathering on one process).

    owner_only keeps only replica 0 of each piece, so every byte is exported once across ranks.
    """
    out = []
    for st in sharded_tensors(model_sharded_state_dict(model)):
        replica = st.replica_id if isinstance(st.replica_id, tuple) else (st.replica_id,)
        if owner_only and any(r != 0 for r in replica):
            continue
        pre, slices = local_region(st)
        out.append(Piece(st.key, tuple(st.global_shape), pre,
                         tuple((s.start, s.stop) for s in slices), st.data.detach().clone().cpu()))
    return out


def check_tp_axes(model, cfg: Hy3Config, padded_vocab: int | None = None) -> int:
    """The table's `tp` column must name the axis Megatron's own sharding splits. Returns tensors checked."""
    from megatron.core import parallel_state as ps

    table = {t.key: t for t in mcore_tensors(cfg, padded_vocab)}
    tp, etp = ps.get_tensor_model_parallel_world_size(), ps.get_expert_tensor_parallel_world_size()
    checked = 0
    for st in sharded_tensors(model_sharded_state_dict(model)):
        t = table[st.key]
        size = etp if t.experts is not None else tp
        split = [i for i, f in enumerate(st.axis_fragmentations[st.prepend_axis_num:]) if f > 1]
        # GLU weights are saved as two halves (gate, up), so their axis 0 is fragmented even at TP 1.
        want = [t.row.tp] if t.row.tp is not None and (size > 1 or t.row.op == "glu") else []
        if split != want:
            raise Hy3Error(f"{st.key}: the mapping table says tensor parallelism splits axis {t.row.tp}, "
                           f"Megatron splits axes {split}")
        checked += 1
    return checked


def check_covered(cfg: Hy3Config, keys: set[str], padded_vocab: int | None = None) -> None:
    """Every table entry must exist in the model and vice versa (on a model holding all stages)."""
    table = {t.key for t in mcore_tensors(cfg, padded_vocab)}
    extra, missing = sorted(keys - table), sorted(table - keys)
    if extra:
        raise Hy3Error(f"Megatron model tensor {extra[0]} is not covered by the Hy3 mapping table")
    if missing:
        raise Hy3Error(f"mapping table entry {missing[0]} does not exist in the Megatron model")

