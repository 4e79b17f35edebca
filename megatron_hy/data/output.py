"""`hy3 data encode`: rows -> JSONL of input_ids/labels, optionally packed, optionally also an
ms-swift `--cached_dataset` directory. Outputs are written under a temporary name and renamed
when complete; every row that is not written is reported with its file:line."""

from __future__ import annotations

import bisect
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from ..errors import Hy3Error
from ..formats.staging import new_dir
from ..outputs import check_dir, check_file, SWIFT_DATASET, temp_file, written_kind
from ..progress import log, Progress
from .encode import Encoder, Example
from .validate import Report, require_valid, rows

OVERFLOW = ("skip", "truncate", "error")
CHUNK_ROWS = 512
ENCODED = ".hy3-encoded.json"  # in a dataset: the JSONL it was made from (path, bytes, checksum)
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

    def to_json(self, out: Path, dataset: Path | None = None) -> dict:
        return {"output": str(out), "swift_dataset": str(dataset) if dataset else None, "rows": self.rows,
                "examples": self.examples, "written": self.written, "tokens": self.tokens,
                "loss_tokens": self.loss_tokens, "warnings": self.warnings, "skipped": self.skipped,
                "truncated": self.truncated, "dropped": self.dropped, "seconds": round(self.seconds, 3)}

    def text(self) -> str:
        lines = [f"{self.written} rows from {self.rows} input rows ({self.examples} examples), "
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
    """`tokenizer`: its directory, an input the outputs must keep clear of (outputs.py).

    With `swift_dataset`, both outputs are made complete first: the JSONL under a temporary name, the
    dataset in its staging directory. The dataset is published first, recording the JSONL's size and
    checksum (ENCODED), then the JSONL. A kill between the two leaves the dataset alone; the rerun encodes
    the same bytes again, sees the dataset was made from them, and publishes the JSONL beside it."""
    src, out = Path(src), Path(out)
    if overflow not in OVERFLOW:
        raise Hy3Error(f"--overflow must be one of {', '.join(OVERFLOW)}, not {overflow!r}")
    if pack and not max_length:
        raise Hy3Error("--pack needs --max-length (the length of a packed row)")
    inputs = [src, tokenizer]
    check_file(out, inputs, overwrite)
    complete = None   # the record of a published dataset whose JSONL a killed run did not publish
    if swift_dataset:
        complete = _unfinished(Path(swift_dataset), out, overwrite)
        if complete is None:
            check_dir(swift_dataset, SWIFT_DATASET, inputs + [out], overwrite)
    report = require_valid(src, quiet)
    summary = Summary(warnings=report.count("warning"))
    t0 = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(out)
    packer = _Packer(max_length) if pack else None
    prog = Progress("encode", report.rows, quiet=quiet, unit="rows")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for batch in _chunks(rows(src, Report()), CHUNK_ROWS):
                for (line, _), examples in zip(batch, enc.encode_many([c for _, c in batch])):
                    summary.rows += 1
                    _add(f, f"{src}:{line}", examples, summary, packer, max_length, overflow)
                prog.add(len(batch))
            if packer:
                summary.written += _write_rows(f, packer.flush())
        prog.finish()
        summary.seconds = time.monotonic() - t0
        if not summary.written:
            raise Hy3Error(f"{src}: no example left to write, nothing written:\n" + summary.text())
        check_file(out, inputs, overwrite)
        if swift_dataset:
            record = {"jsonl": str(out.resolve()), **_digest(tmp)}
            if complete is None:
                write_swift_dataset(tmp, Path(swift_dataset), packed=pack, inputs=[*inputs, out], overwrite=overwrite,
                                    quiet=quiet, rows=summary.written, record=record)
            elif complete != record:
                raise Hy3Error(f"{swift_dataset}: holds a dataset encoded from other rows or settings than {out} "
                               f"would hold now; choose another --swift-dataset or pass --overwrite")
            else:
                log(f"{swift_dataset}: already holds the dataset of these rows (an interrupted run published it); "
                    f"writing {out} beside it", quiet)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return summary


def _digest(path: Path) -> dict:
    h, n = xxhash.xxh3_128(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return {"bytes": n, "xxh3_128": h.hexdigest()}


def _unfinished(dataset: Path, out: Path, overwrite: bool) -> dict | None:
    """The record of `dataset` (without its file list) when an earlier run published it and was killed before
    publishing `out`: hy3 wrote it as a dataset, its record names `out`, which does not exist, and its files are
    the ones it was published with. Else None."""
    if overwrite or out.exists() or written_kind(dataset) != SWIFT_DATASET:
        return None
    try:
        record = json.loads((dataset / ENCODED).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("jsonl") != str(out.resolve()):
        return None
    files = record.pop("files", None)
    return record if files == _listing(dataset) else None


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


_ROW_HOOKS: list = []   # progress of the dataset being built (datasets pickles the generator: it cannot hold one)


def _dataset_rows(jsonl: str, keys: str):
    """The rows of `jsonl` with the comma-separated `keys` (a list in gen_kwargs would be split into shards)."""
    keys = keys.split(",")
    with open(jsonl, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            for hook in _ROW_HOOKS:
                hook(1)
            yield {k: r[k] for k in keys}


def write_swift_dataset(jsonl: Path, out: Path, packed: bool, inputs=(), overwrite: bool = False, quiet: bool = True,
                        rows: int | None = None, record: dict | None = None) -> Path:
    """The encoded rows as an Arrow dataset that `megatron sft --cached_dataset` loads (save_to_disk), with
    progress in rows (of `rows`); `record` (the JSONL it was made from) is kept in it as ENCODED."""
    import datasets

    feats = {"input_ids": datasets.Sequence(datasets.Value("int32")),
             "labels": datasets.Sequence(datasets.Value("int32")),
             "lengths": datasets.Value("int64"), "source": datasets.Sequence(datasets.Value("string"))}
    if packed:
        feats["position_ids"] = datasets.Sequence(datasets.Value("int32"))
    prog = Progress("swift-dataset", rows or 0, quiet=quiet or not rows, unit="rows")
    datasets.disable_progress_bars()
    with new_dir(out, SWIFT_DATASET, [*inputs, jsonl], overwrite) as tmp:
        cache = tempfile.mkdtemp(prefix=f".{out.name}.cache-", dir=tmp.parent)
        _ROW_HOOKS.append(prog.add)
        try:
            # the fingerprint (state.json) from the rows' checksum, not the temporary file's name: the same rows
            # give the same dataset, byte for byte
            ds = datasets.Dataset.from_generator(_dataset_rows, features=datasets.Features(feats), cache_dir=cache,
                                                 gen_kwargs={"jsonl": str(jsonl), "keys": ",".join(feats)},
                                                 fingerprint=(record or _digest(jsonl))["xxh3_128"][:16])
            prog.finish()
            log(f"[swift-dataset] saving {len(ds)} rows in Arrow files", quiet)
            ds.save_to_disk(str(tmp))
        finally:
            _ROW_HOOKS.remove(prog.add)
            shutil.rmtree(cache, ignore_errors=True)
        if record is not None:
            record = dict(record, files=_listing(tmp))
            (tmp / ENCODED).write_text(json.dumps(record, indent=2) + "\n")
    return out


def _listing(root: Path) -> dict:
    """The dataset's files and sizes (what ENCODED records, and a rerun compares); hy3's own dot files aside."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}
