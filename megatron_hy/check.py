"""`hy3 check`: the report on an HF Hy3 checkpoint (either layout) against its config.

Every problem is collected rather than raised: index and header problems from reading the shards
leniently, key, shape and dtype problems and NaN/Inf in a few shards from the rules in
hf_checkpoint.py. The command line is commands/check.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import load_config
from .errors import Hy3Error
from .hf_checkpoint import compare_to_config, count_nonfinite, mixed_layout_message
from .mapping import detect_layout
from .safetensors_io import FLOAT_DTYPES, open_checkpoint


@dataclass
class Report:
    root: str
    layout: str | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tensors: int = 0
    shards: int = 0
    total_bytes: int = 0
    spot_checked: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict:
        return {"ok": self.ok, "root": self.root, "layout": self.layout, "tensors": self.tensors,
                "shards": self.shards, "total_bytes": self.total_bytes, "spot_checked": self.spot_checked,
                "errors": self.errors, "notes": self.notes, "config": self.config}


def check_checkpoint(root: str | Path, spot_check: int = 3, quiet: bool = True) -> Report:
    root = Path(root)
    rep = Report(str(root))
    try:
        cfg = load_config(root)
        rep.config = cfg.summary()
    except Hy3Error as e:
        rep.errors.append(str(e))
        return rep
    try:
        ck = open_checkpoint(root, strict=False)
    except Hy3Error as e:
        rep.errors.append(str(e))
        return rep
    rep.errors += ck.problems
    rep.tensors, rep.shards, rep.total_bytes = len(ck.tensors), len(ck.shard_files), ck.total_bytes
    layout = detect_layout(ck.tensors)
    if layout == "mixed":
        rep.errors.append(mixed_layout_message(ck.tensors))
        return rep
    if layout is None:
        layout = "inner"  # no MoE tensors at all: the key check below reports them as missing
    rep.layout = layout
    rep.errors += compare_to_config(ck, cfg, layout)
    declared = ck.index_metadata.get("total_size")
    if declared is not None and not _same_number(declared, ck.total_bytes):
        rep.errors.append(f"model.safetensors.index.json: total_size is {declared}, "
                          f"expected {ck.total_bytes} (the bytes of tensor data in the shards)")
    for name in _pick(sorted(set(t.file.name for t in ck.tensors.values())), spot_check):
        rep.spot_checked.append(name)
        for key, info in sorted(ck.tensors.items()):
            if info.file.name == name and info.dtype in FLOAT_DTYPES:
                bad = count_nonfinite(info)
                if bad:
                    rep.errors.append(f"{name}: {key}: {bad} NaN/Inf values")
    return rep


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
    from .progress import human_bytes

    lines = [f"checkpoint: {rep.root}"]
    if rep.layout:
        lines.append(f"layout:     {rep.layout}")
    if rep.config:
        c = rep.config
        lines.append(f"model:      {c['num_layers']} layers ({c['layer_types']}), {c['num_experts']} experts top-{c['top_k']}, "
                     f"{c['num_mtp_layers']} MTP layer(s), hidden {c['hidden_size']}")
    if rep.tensors:
        lines.append(f"tensors:    {rep.tensors} in {rep.shards} shard(s), {human_bytes(rep.total_bytes)}")
    if rep.spot_checked:
        lines.append(f"spot check: {', '.join(rep.spot_checked)} (NaN/Inf)")
    for n in rep.notes:
        lines.append(f"note: {n}")
    if rep.ok:
        lines.append("result:     OK")
    else:
        lines.append(f"result:     {len(rep.errors)} problem(s)")
        lines += [f"  - {e}" for e in rep.errors]
    return "\n".join(lines)


def report_json(rep: Report) -> str:
    return json.dumps(rep.to_json(), indent=2)
