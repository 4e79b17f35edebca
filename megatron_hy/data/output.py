"""`hy3 data encode`: rows -> JSONL of input_ids/labels, optionally packed, optionally also an
ms-swift `--cached_dataset` directory. Outputs are written under a temporary name and renamed
when complete; every row that is not written is reported with its file:line."""

from __future__ import annotations

import bisect
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Hy3Error
from ..outputs import SWIFT_DATASET, check_dir, check_file, temp_file
from ..staging import new_dir
from .encode import Encoder, Example
from .validate import Report, require_valid, rows

OVERFLOW = ("skip", "truncate", "error")
CHUNK_ROWS = 512
PACK_WINDOW = 20000  # examples packed together; bounds memory on huge files


@dataclass
class Summary:
    rows: int = 0
    examples: int = 0
    written: int = 0  # output rows (packed rows count once)
    tokens: int = 0
    loss_tokens: int = 0
    warnings: int = 0
    skipped: list[str] = field(default_factory=list)  # "file:line: why"
    truncated: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # truncated with no token left in the loss
    seconds: float = 0.0

    def text(self, out: Path) -> str:
        lines = [f"{out}: {self.written} rows from {self.rows} input rows ({self.examples} examples), "
                 f"{self.tokens} tokens, {self.loss_tokens} in the loss ({_pct(self.loss_tokens, self.tokens)}), "
                 f"{self.rows / max(self.seconds, 1e-9):.0f} rows/s"]
        for label, items in (("skipped", self.skipped), ("truncated", self.truncated),
                             ("dropped (truncated, no token left in the loss)", self.dropped)):
            if items:
                lines.append(f"{len(items)} examples {label}:")
                lines += [f"  {s}" for s in items[:20]] + ([f"  ... and {len(items) - 20} more"] if len(items) > 20 else [])
        if self.warnings:
            lines.append(f"{self.warnings} warnings in the input (hy3 data validate lists them)")
        return "\n".join(lines)


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}%" if b else "0%"


def encode_file(src: str | Path, out: str | Path, enc: Encoder, max_length: int | None = None,
                overflow: str = "skip", pack: bool = False, swift_dataset: str | Path | None = None,
                quiet: bool = False, tokenizer: str | Path | None = None, overwrite: bool = False) -> Summary:
    """`tokenizer`: its directory, an input the outputs must keep clear of (outputs.py)."""
    src, out = Path(src), Path(out)
    if overflow not in OVERFLOW:
        raise Hy3Error(f"--overflow must be one of {', '.join(OVERFLOW)}, not {overflow!r}")
    if pack and not max_length:
        raise Hy3Error("--pack needs --max-length (the length of a packed row)")
    inputs = [src, tokenizer]
    check_file(out, inputs, overwrite)
    if swift_dataset:
        check_dir(swift_dataset, SWIFT_DATASET, inputs + [out], overwrite)
    summary = Summary(warnings=require_valid(src).count("warning"))
    t0 = time.monotonic()
    next_report = t0 + 1.0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(out)
    packer = _Packer(max_length) if pack else None
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for batch in _chunks(rows(src, Report()), CHUNK_ROWS):
                for (line, _), examples in zip(batch, enc.encode_many([c for _, c in batch])):
                    summary.rows += 1
                    _add(f, f"{src}:{line}", examples, summary, packer, max_length, overflow)
                if not quiet and time.monotonic() >= next_report:
                    next_report = time.monotonic() + 1.0
                    print(f"[encode] {summary.rows} rows, {summary.tokens} tokens, "
                          f"{summary.rows / (time.monotonic() - t0):.0f} rows/s", file=sys.stderr, flush=True)
            if packer:
                summary.written += _write_rows(f, packer.flush())
        check_file(out, inputs, overwrite)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    summary.seconds = time.monotonic() - t0
    if swift_dataset:
        write_swift_dataset(out, Path(swift_dataset), packed=pack, inputs=inputs, overwrite=overwrite)
    return summary


def _add(f, where: str, examples: list[Example], summary: Summary, packer, max_length: int | None,
         overflow: str) -> None:
    if not examples:
        summary.skipped.append(f"{where}: no assistant turn is in the loss (every turn has loss: false)")
    for ex in examples:
        ex = _fit(ex, where, max_length, overflow, summary)
        if ex is None:
            continue
        summary.examples += 1
        summary.tokens += len(ex)
        summary.loss_tokens += ex.loss_tokens()
        if packer is None:
            summary.written += _write_rows(f, [_row([ex], [where])])
            continue
        packer.add(ex, where)
        if len(packer.items) >= PACK_WINDOW:
            summary.written += _write_rows(f, packer.flush())


def _fit(ex: Example, where: str, max_length: int | None, overflow: str, summary: Summary) -> Example | None:
    if not max_length or len(ex) <= max_length:
        return ex
    msg = f"{where}: {len(ex)} tokens, longer than --max-length {max_length}"
    if overflow == "error":
        raise Hy3Error(msg + " (--overflow skip or truncate to go on)")
    if overflow == "skip":
        summary.skipped.append(msg)
        return None
    cut = Example(ex.input_ids[:max_length], ex.labels[:max_length], ex.turns)
    if not cut.loss_tokens():
        summary.dropped.append(f"{msg}; its first {max_length} tokens have none in the loss")
        return None
    summary.truncated.append(msg)
    return cut


def _chunks(it, n: int):
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _row(examples: list[Example], sources: list[str], packed: bool = False) -> dict:
    """One output row; a packed row restarts position_ids at each example (Megatron reads the
    example boundaries from them, so packed examples do not attend to each other)."""
    ids = [t for e in examples for t in e.input_ids]
    row = {"input_ids": ids, "labels": [t for e in examples for t in e.labels], "lengths": len(ids)}
    if packed:
        row["position_ids"] = [p for e in examples for p in range(len(e))]
    row["source"] = sources
    return row


def _write_rows(f, rows_: list[dict]) -> int:
    for r in rows_:
        f.write(json.dumps(r, separators=(",", ":")) + "\n")
    return len(rows_)


class _Packer:
    """Best-fit decreasing: each example goes to the fullest packed row it still fits in."""

    def __init__(self, capacity: int):
        self.capacity, self.items = capacity, []

    def add(self, ex: Example, where: str) -> None:
        self.items.append((ex, where))

    def flush(self) -> list[dict]:
        bins: list[list] = []
        free: list[tuple[int, int]] = []  # (room left, bin index), sorted
        for ex, where in sorted(self.items, key=lambda x: -len(x[0])):
            k = bisect.bisect_left(free, (len(ex), -1))
            if k == len(free):
                bins.append([(ex, where)])
                bisect.insort(free, (self.capacity - len(ex), len(bins) - 1))
            else:
                room, b = free.pop(k)
                bins[b].append((ex, where))
                bisect.insort(free, (room - len(ex), b))
        self.items = []
        return [_row([e for e, _ in b], [w for _, w in b], packed=True) for b in bins]


def write_swift_dataset(jsonl: Path, out: Path, packed: bool, inputs=(), overwrite: bool = False) -> Path:
    """The encoded rows as an Arrow dataset that `megatron sft --cached_dataset` loads (save_to_disk)."""
    import datasets

    feats = {"input_ids": datasets.Sequence(datasets.Value("int32")),
             "labels": datasets.Sequence(datasets.Value("int32")),
             "lengths": datasets.Value("int64"), "source": datasets.Sequence(datasets.Value("string"))}
    if packed:
        feats["position_ids"] = datasets.Sequence(datasets.Value("int32"))

    def gen():
        with open(jsonl, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                yield {k: r[k] for k in feats}

    datasets.disable_progress_bars()
    with new_dir(out, SWIFT_DATASET, [*inputs, jsonl], overwrite) as tmp:
        cache = tempfile.mkdtemp(prefix=f".{out.name}.cache-", dir=tmp.parent)
        try:
            ds = datasets.Dataset.from_generator(gen, features=datasets.Features(feats), cache_dir=cache)
            ds.save_to_disk(str(tmp))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return out
