"""`hy3 data stats`: length histogram, tokens in the loss, rows over a length limit.

Reads Hy3 rows (encoded on the fly with a tokenizer) or the output of `hy3 data encode`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Hy3Error
from ..progress import Progress
from .encode import Encoder, IGNORE
from .reader import read_records
from .validate import EMPTY, Report, require_valid, rows


@dataclass
class Stats:
    rows: int = 0
    lengths: list[int] = field(default_factory=list)
    loss_tokens: int = 0
    over: list[str] = field(default_factory=list)  # "file:line: N tokens"
    max_length: int | None = None

    def add(self, where: str, n: int, loss: int) -> None:
        self.lengths.append(n)
        self.loss_tokens += loss
        if self.max_length and n > self.max_length:
            self.over.append(f"{where}: {n} tokens")

    def summary(self) -> dict:
        ls = sorted(self.lengths)
        total = sum(ls)

        def q(p: float) -> int:
            return ls[min(len(ls) - 1, int(p * len(ls)))] if ls else 0

        hist, lo = [], 0
        hi = 64
        while ls and lo <= ls[-1]:
            n = sum(1 for x in ls if lo <= x < hi)
            hist.append({"from": lo, "to": hi, "count": n})
            lo, hi = hi, hi * 2
        return {"rows": self.rows, "examples": len(ls), "tokens": total, "loss_tokens": self.loss_tokens,
                "loss_fraction": round(self.loss_tokens / total, 4) if total else 0.0,
                "length": {"min": ls[0] if ls else 0, "mean": round(total / len(ls), 1) if ls else 0,
                           "p50": q(0.5), "p95": q(0.95), "max": ls[-1] if ls else 0},
                "histogram": hist, "max_length": self.max_length, "over_max_length": len(self.over),
                "over_max_length_rows": self.over}

    def text(self) -> str:
        s = self.summary()
        ln = s["length"]
        out = [f"{s['rows']} rows, {s['examples']} examples, {s['tokens']} tokens, {s['loss_tokens']} in the loss "
               f"({100 * s['loss_fraction']:.1f}%)",
               f"length: min {ln['min']}, mean {ln['mean']}, median {ln['p50']}, p95 {ln['p95']}, max {ln['max']}",
               "histogram (tokens per example):"]
        width = max((h["count"] for h in s["histogram"]), default=1) or 1
        for h in s["histogram"]:
            out.append(f"  {h['from']:>8} - {h['to'] - 1:<8} {h['count']:>8}  {'#' * round(40 * h['count'] / width)}")
        if self.max_length:
            out.append(f"{len(self.over)} examples longer than {self.max_length} tokens")
            out += [f"  {w}" for w in self.over[:20]] + ([f"  ... and {len(self.over) - 20} more"]
                                                        if len(self.over) > 20 else [])
        return "\n".join(out)


def is_encoded(path: Path) -> bool:
    for rec in read_records(path):
        return isinstance(rec.value, dict) and "input_ids" in rec.value
    raise Hy3Error(f"{path}: {EMPTY}")


def stats_file(path: str | Path, enc: Encoder | None, max_length: int | None = None, quiet: bool = True) -> Stats:
    path = Path(path)
    st = Stats(max_length=max_length)
    if is_encoded(path):
        for rec in read_records(path):
            st.rows += 1
            v = rec.value
            if rec.error or not isinstance(v, dict) or not isinstance(v.get("input_ids"), list) \
                    or not isinstance(v.get("labels"), list) or len(v["labels"]) != len(v["input_ids"]):
                raise Hy3Error(f"{path}:{rec.line}: expected an encoded row with input_ids and labels of equal length")
            st.add(f"{path}:{rec.line}", len(v["input_ids"]), sum(1 for x in v["labels"] if x != IGNORE))
        return st
    if enc is None:
        raise Hy3Error(f"{path} holds Hy3 rows, not encoded ones: pass --model MODEL_DIR (its tokenizer) to count their tokens")
    total = require_valid(path, quiet).rows
    prog = Progress("stats", total, quiet=quiet, unit="rows")
    batch = []

    def flush():
        for (line, _), examples in zip(batch, enc.encode_many([c for _, c in batch])):
            st.rows += 1
            for ex in examples:
                st.add(f"{path}:{line}", len(ex), ex.loss_tokens())
        prog.add(len(batch))
        batch.clear()

    for item in rows(path, Report()):
        batch.append(item)
        if len(batch) == 512:
            flush()
    flush()
    prog.finish()
    return st


def stats_json(st: Stats) -> str:
    return json.dumps(st.summary(), indent=2)
