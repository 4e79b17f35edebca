"""`hy3-manifest.json`: what a converter wrote, with each file's size and xxh3-128 checksum."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__

MANIFEST = "hy3-manifest.json"
CHECKSUM = "xxh3_128"


def file_xxh3(path: Path) -> str:
    import xxhash

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
