"""`hy3 check`: validate an HF Hy3 checkpoint (either layout) against its config.

Keys and shapes come from the mapping table; index consistency from the shard headers; NaN/Inf
from reading a few shards in bounded chunks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import json

from .config import Hy3Config, load_config
from .errors import Hy3Error
from .mapping import detect_layout, expected_keys
from .safetensors_io import FLOAT_DTYPES, Checkpoint, open_checkpoint, read_bytes

CHUNK_BYTES = 64 * 1024 * 1024
MAX_LISTED = 20


def compare_to_config(ck: Checkpoint, cfg: Hy3Config, layout: str) -> list[str]:
    """Missing, unexpected and wrongly shaped keys, and inconsistent dtypes."""
    problems: list[str] = []
    expected = expected_keys(cfg, layout)
    present = ck.tensors
    missing = [k for k in expected if k not in present]
    unexpected = sorted(k for k in present if k not in expected)
    problems += _listed(missing, "missing tensor {} (expected by config.json)")
    problems += _listed(unexpected, "unexpected tensor {} (config.json does not describe it)")
    for key, shape in expected.items():
        info = present.get(key)
        if info is not None and tuple(info.shape) != tuple(shape):
            problems.append(f"{info.file.name}: {key}: shape {list(info.shape)}, expected {list(shape)} from config.json")
    main = Counter(t.dtype for k, t in present.items() if not _is_bias(k)).most_common(1)
    main_dtype = main[0][0] if main else None
    for key, info in present.items():
        if info.dtype not in FLOAT_DTYPES:
            problems.append(f"{info.file.name}: {key}: dtype {info.dtype}, expected a floating-point dtype")
        elif not _is_bias(key) and info.dtype != main_dtype:
            problems.append(f"{info.file.name}: {key}: dtype {info.dtype}, the checkpoint's other weights are {main_dtype}")
    return problems


def mixed_layout_message(keys) -> str:
    inner = next(k for k in sorted(keys) if detect_layout([k]) == "inner")
    outer = next(k for k in sorted(keys) if detect_layout([k]) == "outer")
    return (f"mixes inner (per-expert) and outer (fused) expert keys, e.g. {inner} and {outer}; "
            "expected one layout throughout")


def _is_bias(key: str) -> bool:
    return key.endswith("mlp.expert_bias") or key.endswith("mlp.e_score_correction_bias")


def _listed(keys: list[str], fmt: str) -> list[str]:
    out = [fmt.format(k) for k in keys[:MAX_LISTED]]
    if len(keys) > MAX_LISTED:
        out.append(f"... and {len(keys) - MAX_LISTED} more like that")
    return out


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
                bad = _nonfinite(info)
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


# (unsigned view, bits that are all set exactly in NaN/Inf). F8_E4M3 (fn) has no Inf; its NaN is S.1111.111.
NONFINITE_BITS = {"F64": ("<u8", 0x7FF0000000000000), "F32": ("<u4", 0x7F800000), "F16": ("<u2", 0x7C00),
                  "BF16": ("<u2", 0x7F80), "F8_E5M2": ("u1", 0x7C), "F8_E4M3": ("u1", 0x7F)}


def _nonfinite(info) -> int:
    """Count NaN/Inf by their bit patterns, reading the tensor in bounded chunks."""
    import numpy as np

    view, mask = NONFINITE_BITS[info.dtype]
    per = max(CHUNK_BYTES // info.itemsize, 1) * info.itemsize
    bad = 0
    for off in range(info.start, info.end, per):
        x = np.frombuffer(read_bytes(info.file, off, min(per, info.end - off)), dtype=view)
        bad += int(np.count_nonzero((x & x.dtype.type(mask)) == mask))
    return bad


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
