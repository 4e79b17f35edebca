"""The reversible tensor transforms named by the mapping table's `op` column.

`to_mcore(op, parts, cfg, ...)` builds the global Megatron tensor (or one expert's slice of it)
from the logical HF tensors; `from_mcore` splits it back. Both are exact: no arithmetic, only
reshapes, concatenation and zero padding, so round trips are byte-identical.
"""

from __future__ import annotations

from .config import Hy3Config


def to_mcore(op: str, parts: list, cfg: Hy3Config, rows: int | None = None):
    import torch

    if op == "copy":
        return parts[0]
    if op == "vocab":
        t = parts[0]
        if rows is None or rows == t.shape[0]:
            return t
        pad = t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))
        return torch.cat([t, pad], 0)
    if op == "glu":
        return torch.cat(parts, 0)
    if op == "qkv":
        q, k, v = parts
        g, d = cfg.num_kv_heads, cfg.head_dim
        h = q.shape[-1]
        q = q.reshape(g, cfg.heads_per_group * d, h)
        k = k.reshape(g, d, h)
        v = v.reshape(g, d, h)
        return torch.cat([q, k, v], 1).reshape(-1, h)
    raise ValueError(op)


def from_mcore(op: str, t, shapes: list[tuple], cfg: Hy3Config) -> list:
    """Inverse of to_mcore: the logical HF tensors, given their shapes."""
    if op == "copy":
        return [t]
    if op == "vocab":
        return [t[: shapes[0][0]]]
    if op == "glu":
        return list(t.split([s[0] for s in shapes], 0))
    if op == "qkv":
        g, d = cfg.num_kv_heads, cfg.head_dim
        h = t.shape[-1]
        grouped = t.reshape(g, (cfg.heads_per_group + 2) * d, h)
        q, k, v = grouped.split([cfg.heads_per_group * d, d, d], 1)
        return [q.reshape(shapes[0]), k.reshape(shapes[1]), v.reshape(shapes[2])]
    raise ValueError(op)
