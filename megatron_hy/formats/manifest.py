"""`hy3-manifest.json`: what a converter wrote, with each file's size and xxh3-128 checksum.

hf-to-mcore also records the dtype every HF tensor had, so that mcore-to-hf gives each one back in it
(a router bias stored in bf16 comes back bf16, not in the fp32 transformers would choose)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import xxhash

from .. import __version__

MANIFEST = "hy3-manifest.json"
CHECKSUM = "xxh3_128"


def file_xxh3(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(root: Path, kind: str, source: dict, files: dict[str, tuple[int, str]]) -> None:
    """files: path relative to root -> (size in bytes, xxh3-128 hex digest)."""
    data = {"format": kind, "created_by": f"megatron-hy {__version__}", "source": source, "checksum": CHECKSUM,
            "files": {k: {"bytes": n, CHECKSUM: h} for k, (n, h) in sorted(files.items())}}
    (root / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")


def dtype_record(dtypes: dict[str, str]) -> dict:
    """Tensor name -> safetensors dtype, kept short: the most common dtype, and the tensors that differ."""
    default = Counter(dtypes.values()).most_common(1)[0][0]
    return {"default": default, "tensors": {k: v for k, v in sorted(dtypes.items()) if v != default}}


def recorded_dtypes(it: Path) -> tuple[dict | None, str]:
    """The dtype record hf-to-mcore left beside iteration directory `it`, or None and why not: no manifest
    (megatron-core saved this checkpoint), one from before dtypes were recorded, or one listing other data
    files than `it` holds (megatron-core saved this iteration into a directory we wrote)."""
    path = it.parent / MANIFEST
    if not path.exists():
        return None, f"no {MANIFEST}"
    try:
        data = json.loads(path.read_text())
        record = data["source"].get("dtypes") if data.get("format") == "torch_dist" else None
        listed = {rel: int(e["bytes"]) for rel, e in data["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, f"{path} is not a manifest this version can read"
    if not isinstance(record, dict) or not isinstance(record.get("tensors"), dict) or "default" not in record:
        return None, f"{path} records no dtypes"
    on_disk = {f"{it.name}/{p.name}": p.stat().st_size for p in it.glob("*.distcp")}
    if listed != on_disk:
        return None, f"{path} describes other data files than {it} holds"
    return record, ""
