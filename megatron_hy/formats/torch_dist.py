"""A Megatron `torch_dist` checkpoint directory, as megatron-core and ms-swift lay it out on disk.

    OUT/latest_checkpointed_iteration.txt      the tracker: "1"
    OUT/args.json                              model path and tuner type, read by ms-swift
    OUT/iter_0000001/metadata.json             dist_checkpointing backend: torch_dist
    OUT/iter_0000001/common.pt                 args (TP/PP, no optimizer, no RNG), content metadata
    OUT/iter_0000001/.metadata, __*_0.distcp   the PyTorch DCP with every tensor (dcp.py)

megatron-core 0.19 writes no common.pt: it keeps the same common state as one object, `common_state`, inside the
DCP (mcore_versions.NO_COMMON_PT); `load_common` reads either.

This module names those files, finds the iteration directory of a checkpoint, and writes the small
files of one; the tensors themselves are dcp.py's.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import warnings
from argparse import Namespace
from pathlib import Path

from .. import fields
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
    torch.save(common, it / COMMON)
    (it / "metadata.json").write_text(json.dumps(BACKEND))


COMMON = "common.pt"
# The unique key of the ShardedObject megatron-core 0.19 saves the common state as (a one-element list of it).
COMMON_STATE = "common_state/shard_0_1"


def load_common(it: Path) -> tuple[dict | None, str]:
    """(the common state of an iteration directory, where it was read) from common.pt or, where megatron-core
    0.19 saved it, the `common_state` object in the DCP; (None, "") when it has neither."""
    if (it / COMMON).exists():
        return _restricted_load(it / COMMON, it / COMMON), str(it / COMMON)
    if not (it / dcp.METADATA).exists():
        return None, ""
    blob = dcp.DcpReader(it).object_bytes(COMMON_STATE)
    if blob is None:
        return None, ""
    where = f"{it} ({COMMON_STATE})"
    state = _restricted_load(io.BytesIO(blob), where, wrapped=True)
    return state, where


def _restricted_load(source, where, wrapped: bool = False) -> dict:
    """torch's weights_only unpickler (tensors and plain data) admitting one class more, argparse.Namespace, which
    megatron-core and ms-swift store the training args as. Anything else is refused, naming it: a checkpoint file
    must not run code."""
    import torch

    try:
        with torch.serialization.safe_globals([Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says it all
            common = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named, detail = re.search(r"GLOBAL (\S+)", str(e)), re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        what = f"it names {named[1]}" if named else detail[1].strip() if detail else "unsupported content"
        raise Hy3Error(f"{where}: refused to unpickle: {what}, which is not plain data (expected the training "
                       f"args, iteration and metadata only); a checkpoint file must not run code") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one message for the user
        raise Hy3Error(f"{where}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if wrapped:  # megatron-core saves the common state object as [state]
        if not (isinstance(common, list) and len(common) == 1):
            raise Hy3Error(f"{where}: expected the common state as a one-element list, found {type(common).__name__}")
        common = common[0]
    return fields.mapping(common, str(where), "contents")


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
