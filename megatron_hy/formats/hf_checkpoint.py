"""An HF Hy3 checkpoint in either layout: validated against its config.json, read by logical (inner) name.

`inspect(root)` reads config.json, the index and the shard headers, detects the layout and applies the
rules below; `hy3 check` reports every problem it finds, the ms-swift bridge reads the layout and dtypes
from it, and `HFCheckpoint(root)` (strict) refuses a checkpoint that does not match its config. Then
`source(name)` says which bytes of which file hold a logical tensor, whether it is a tensor of its
own (inner) or a slice of a fused expert tensor (outer); `read(name)` loads just those bytes.
Nothing else is read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Hy3Config, load_config
from ..dtypes import FLOAT_DTYPES, NAMES, torch_dtype
from ..errors import Hy3Error
from ..mapping import detect_layout, expected_keys, keeps_dtype, Logical, logical_tensors
from .safetensors_io import Checkpoint, CHUNK_BYTES, open_checkpoint, read_bytes, TensorInfo

MAX_REPORTED = 5
MAX_LISTED = 20


@dataclass
class Inspection:
    """What `inspect` found: the config, the index and shard headers (None when unreadable), the layout
    ("inner", "outer", or "mixed" when the checkpoint mixes both) and every problem, in report order."""
    root: Path
    config: Hy3Config | None = None
    ck: Checkpoint | None = None
    layout: str | None = None
    problems: list[str] = field(default_factory=list)


def inspect(root: str | Path, strict: bool = False) -> Inspection:
    """Read config.json and the shard headers, detect the layout and compare keys, shapes and dtypes with the
    config. strict: raise on the first problem (a mismatch with the config: up to MAX_REPORTED in one line);
    else collect every problem, up to the first that stops the reading."""
    root = Path(root)
    found = Inspection(root)
    try:
        found.config = load_config(root)
        found.ck = open_checkpoint(root, strict=strict)
    except Hy3Error as e:
        if strict:
            raise
        found.problems.append(str(e))
        return found
    found.problems += found.ck.problems
    layout = detect_layout(found.ck.tensors)
    if layout == "mixed":
        if strict:
            raise Hy3Error(f"{root}: {mixed_layout_message(found.ck.tensors)}")
        found.layout = layout
        found.problems.append(mixed_layout_message(found.ck.tensors))
        return found
    found.layout = layout or "inner"  # no MoE tensors at all: the key check reports them as missing
    mismatches = compare_to_config(found.ck, found.config, found.layout)
    if strict and mismatches:
        more = f" (and more; run `hy3 check {root}` for the full list)" if len(mismatches) > MAX_REPORTED else ""
        raise Hy3Error(f"{root}: does not match its config.json: " + "; ".join(mismatches[:MAX_REPORTED]) + more)
    found.problems += mismatches
    return found


class HFCheckpoint:
    def __init__(self, root: str | Path):
        found = inspect(root, strict=True)
        self.root = found.root
        self.config: Hy3Config = found.config
        self.ck: Checkpoint = found.ck
        self.layout: str = found.layout
        self.logical: dict[str, Logical] = {t.name: t for t in logical_tensors(self.config)}

    def info(self, name: str) -> TensorInfo:
        t = self._logical(name)
        return self.ck.tensors[t.key(self.layout)]

    def _logical(self, name: str) -> Logical:
        try:
            return self.logical[name]
        except KeyError:
            raise Hy3Error(f"{self.root}: no tensor {name} in a Hy3 model of this config") from None

    def source(self, name: str) -> tuple[Path, int, int]:
        """(file, byte offset, byte count) of a logical tensor."""
        t = self._logical(name)
        info = self.ck.tensors[t.key(self.layout)]
        span = t.outer_slice(self.config) if self.layout == "outer" else None
        if span is None:
            return info.file, info.start, info.nbytes
        s, e = span
        return info.file, info.start + s * info.itemsize, (e - s) * info.itemsize

    def dtype(self, name: str) -> str:
        return self.info(name).dtype

    def read(self, name: str):
        """The logical tensor as a torch tensor (its own dtype and shape)."""
        import torch

        file, off, n = self.source(name)
        buf = read_bytes(file, off, n)
        t = torch.frombuffer(buf, dtype=torch_dtype(self.dtype(name))) if n else torch.empty(0)
        return t.reshape(self.logical[name].shape)

    def names(self) -> list[str]:
        return list(self.logical)

    def files(self) -> list[Path]:
        """The shard files (links, in a Hugging Face cache, into a directory of their own)."""
        return [self.root / n for n in self.ck.shard_files]

    def other_files(self) -> list[Path]:
        """Files to carry along when converting: config, tokenizer, generation config, and so on."""
        skip = {"model.safetensors.index.json"}
        return sorted(p for p in self.root.iterdir()
                      if p.name not in skip and not p.name.endswith(".safetensors") and not p.name.startswith("."))


# --- the rules a checkpoint must satisfy --------------------------------------------------------

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
    main = Counter(t.dtype for k, t in present.items() if not keeps_dtype(k)).most_common(1)
    main_dtype = main[0][0] if main else None
    for key, info in present.items():
        if info.dtype not in FLOAT_DTYPES:
            problems.append(f"{info.file.name}: {key}: dtype {info.dtype}, expected a floating-point dtype")
        elif not keeps_dtype(key) and info.dtype != main_dtype:
            problems.append(f"{info.file.name}: {key}: dtype {info.dtype}, the checkpoint's other weights are {main_dtype}")
    return problems


def mixed_layout_message(keys) -> str:
    inner = next(k for k in sorted(keys) if detect_layout([k]) == "inner")
    outer = next(k for k in sorted(keys) if detect_layout([k]) == "outer")
    return (f"mixes inner (per-expert) and outer (fused) expert keys, e.g. {inner} and {outer}; "
            "expected one layout throughout")


def _listed(keys: list[str], fmt: str) -> list[str]:
    out = [fmt.format(k) for k in keys[:MAX_LISTED]]
    if len(keys) > MAX_LISTED:
        out.append(f"... and {len(keys) - MAX_LISTED} more like that")
    return out


def count_nonfinite(info: TensorInfo, on_bytes=None) -> int:
    """Count NaN/Inf by their bit patterns, reading the tensor in bounded chunks (on_bytes(n) after each)."""
    import numpy as np

    mask = NAMES[info.dtype].nonfinite
    view = f"<u{info.itemsize}"
    per = max(CHUNK_BYTES // info.itemsize, 1) * info.itemsize
    bad = 0
    for off in range(info.start, info.end, per):
        n = min(per, info.end - off)
        x = np.frombuffer(read_bytes(info.file, off, n), dtype=view)
        bad += int(np.count_nonzero((x & x.dtype.type(mask)) == mask))
        if on_bytes:
            on_bytes(n)
    return bad
