"""`hy3 check`: the report on an HF Hy3 checkpoint (either layout) against its config.

Every problem is collected rather than raised: from `hf_checkpoint.inspect`, index and header problems
(the shards read leniently) and key, shape and dtype problems (its rules); then NaN/Inf in every
floating-point tensor of every shard (streamed in bounded chunks), or in N sampled shards when asked.
The command line is commands/check.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .dtypes import FLOAT_DTYPES
from .formats.hf_checkpoint import count_nonfinite, inspect
from .progress import human_bytes, Progress


@dataclass
class Report:
    root: str
    layout: str | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tensors: int = 0
    shards: int = 0
    total_bytes: int = 0
    spot_checked: list[str] = field(default_factory=list)   # the shards read for NaN/Inf
    bytes_read: int = 0                                        # floating-point tensor bytes read for NaN/Inf
    sampled: bool = False                                      # --spot-check N: only some shards were read
    readable: int = 0                                          # shards whose tensors could be read
    config: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict:
        return {"ok": self.ok, "root": self.root, "layout": self.layout, "tensors": self.tensors,
                "shards": self.shards, "total_bytes": self.total_bytes, "spot_checked": self.spot_checked,
                "nonfinite_check": {"shards_read": len(self.spot_checked), "shards_with_tensors": self.readable,
                                    "bytes_read": self.bytes_read, "every_shard": bool(self.readable) and not self.sampled},
                "errors": self.errors, "notes": self.notes, "config": self.config}

    def read_text(self) -> str:
        """How much was read for NaN/Inf, for the result line."""
        if not self.readable:
            return ""
        if not self.sampled:
            return (f"NaN/Inf: every shard read, {self.readable} shard(s), {human_bytes(self.bytes_read)} of "
                    f"floating-point data")
        if not self.spot_checked:
            return f"NaN/Inf: not checked, 0 of {self.readable} shards read (--spot-check 0)"
        return (f"NaN/Inf: only {len(self.spot_checked)} of {self.readable} shards read (--spot-check), "
                f"{human_bytes(self.bytes_read)}; the others were not checked")


def check_checkpoint(root: str | Path, spot_check: int | None = None, quiet: bool = True) -> Report:
    """spot_check None: read every shard for NaN/Inf; N: only N shards spread over the checkpoint."""
    root = Path(root)
    rep = Report(str(root))
    found = inspect(root)
    if found.config is not None:
        rep.config = found.config.summary()
    rep.errors += found.problems
    ck = found.ck
    if ck is None:
        return rep
    rep.tensors, rep.shards, rep.total_bytes = len(ck.tensors), len(ck.shard_files), ck.total_bytes
    if found.layout == "mixed":
        return rep
    rep.layout = found.layout
    declared = ck.index_metadata.get("total_size")
    if declared is not None and not _same_number(declared, ck.total_bytes):
        rep.errors.append(f"model.safetensors.index.json: total_size is {declared}, "
                          f"expected {ck.total_bytes} (the bytes of tensor data in the shards)")
    _scan_nonfinite(ck, rep, spot_check, quiet)
    return rep


def _scan_nonfinite(ck, rep: Report, spot_check: int | None, quiet: bool) -> None:
    """Read the floating-point tensors of every shard (or of `spot_check` shards) for NaN/Inf, shard by
    shard, in bounded chunks, with progress in bytes."""
    by_file: dict[str, list] = {}
    for key, info in sorted(ck.tensors.items()):
        by_file.setdefault(info.file.name, []).append((key, info))
    names = sorted(by_file)
    chosen = names if spot_check is None else _pick(names, spot_check)
    rep.sampled, rep.readable = spot_check is not None and len(chosen) < len(names), len(names)
    floats = {n: [(k, i) for k, i in by_file[n] if i.dtype in FLOAT_DTYPES] for n in chosen}
    prog = Progress("check NaN/Inf", sum(i.nbytes for f in floats.values() for _, i in f), quiet=quiet)
    for name in chosen:
        rep.spot_checked.append(name)
        for key, info in floats[name]:
            bad = count_nonfinite(info, prog.add)
            rep.bytes_read += info.nbytes
            if bad:
                rep.errors.append(f"{name}: {key}: {bad} NaN/Inf values")
    if chosen:
        prog.finish()


def _same_number(declared, actual: int) -> bool:
    try:
        return float(declared) == actual
    except (TypeError, ValueError):
        return False


def _pick(names: list[str], n: int) -> list[str]:
    if n <= 0 or not names:
        return []
    if n >= len(names):
        return names
    step = (len(names) - 1) / max(n - 1, 1)
    return sorted({names[round(i * step)] for i in range(n)})


def format_report(rep: Report) -> str:
    lines = [f"checkpoint: {rep.root}"]
    if rep.layout:
        lines.append(f"layout:     {rep.layout}")
    if rep.config:
        c = rep.config
        lines.append(f"model:      {c['num_layers']} layers ({c['layer_types']}), {c['num_experts']} experts top-{c['top_k']}, "
                     f"{c['num_mtp_layers']} MTP layer(s), hidden {c['hidden_size']}")
    if rep.tensors:
        lines.append(f"tensors:    {rep.tensors} in {rep.shards} shard(s), {human_bytes(rep.total_bytes)}")
    if rep.sampled and rep.spot_checked:
        lines.append(f"spot check: {', '.join(rep.spot_checked)} (NaN/Inf)")
    for n in rep.notes:
        lines.append(f"note: {n}")
    read = f" ({rep.read_text()})" if rep.read_text() else ""
    if rep.ok:
        lines.append(f"result:     OK{read}")
    else:
        lines.append(f"result:     {len(rep.errors)} problem(s){read}")
        lines += [f"  - {e}" for e in rep.errors]
    return "\n".join(lines)


def report_json(rep: Report) -> str:
    return json.dumps(rep.to_json(), indent=2)
