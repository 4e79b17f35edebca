"""A Megatron `torch_dist` checkpoint directory, as megatron-core and ms-swift lay it out on disk.

    OUT/latest_checkpointed_iteration.txt      the tracker: "1"
    OUT/args.json                              model path and tuner type, read by ms-swift
    OUT/iter_0000001/metadata.json             dist_checkpointing backend: torch_dist
    OUT/iter_0000001/common.pt                 args (TP/PP, no optimizer, no RNG), content metadata
    OUT/iter_0000001/.metadata, __*_0.distcp   the PyTorch DCP with every tensor (dcp.py)

This module names those files, finds the iteration directory of a checkpoint, and writes the small
files of one; the tensors themselves are dcp.py's.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import Hy3Error
from . import dcp

TRACKER = "latest_checkpointed_iteration.txt"
# What ms-swift passes to sharded_state_dict() and records as content metadata (megatron_lm_utils).
CONTENT_METADATA = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True,
                    "distrib_optim_sharding_type": "dp_reshardable"}
BACKEND = {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
           "common_backend": "torch", "common_backend_version": 1}


def iter_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def write_iteration_files(it: Path, args, iteration: int) -> None:
    """common.pt (the args Megatron's loader reads, iteration, content metadata) and metadata.json."""
    import torch

    common = {"args": args, "checkpoint_version": 3.0, "iteration": iteration, "content_metadata": CONTENT_METADATA}
    torch.save(common, it / "common.pt")
    (it / "metadata.json").write_text(json.dumps(BACKEND))


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
