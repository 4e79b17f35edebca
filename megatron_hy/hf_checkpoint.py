"""An HF Hy3 checkpoint in either layout, read by logical (inner) tensor name.

`HFCheckpoint.source(name)` says which bytes of which file hold a logical tensor, whether it is a
tensor of its own (inner) or a slice of a fused expert tensor (outer); `read(name)` loads just
those bytes. Nothing else is read.
"""

from __future__ import annotations

from pathlib import Path

from .check import compare_to_config, mixed_layout_message
from .config import Hy3Config, load_config
from .errors import Hy3Error
from .mapping import Logical, detect_layout, logical_tensors
from .safetensors_io import TensorInfo, open_checkpoint, read_bytes, torch_dtype

MAX_REPORTED = 5


class HFCheckpoint:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config: Hy3Config = load_config(self.root)
        self.ck = open_checkpoint(self.root, strict=True)
        layout = detect_layout(self.ck.tensors)
        if layout == "mixed":
            raise Hy3Error(f"{self.root}: {mixed_layout_message(self.ck.tensors)}")
        self.layout = layout or "inner"
        problems = compare_to_config(self.ck, self.config, self.layout)
        if problems:
            more = f" (and more; run `hy3 check {self.root}` for the full list)" if len(problems) > MAX_REPORTED else ""
            raise Hy3Error(f"{self.root}: does not match its config.json: " + "; ".join(problems[:MAX_REPORTED]) + more)
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

    def other_files(self) -> list[Path]:
        """Files to carry along when converting: config, tokenizer, generation config, and so on."""
        skip = {"model.safetensors.index.json"}
        return sorted(p for p in self.root.iterdir()
                      if p.name not in skip and not p.name.endswith(".safetensors") and not p.name.startswith("."))
